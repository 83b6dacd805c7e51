#!/usr/bin/env node
// The policy example of the design, run for real against a local test host: "api.openai.com" is a
// TLS server in a network namespace on this machine (a veth pair away), which the egress gateway
// finds through a test DNS server. Needs root (it creates the namespace) and `npm run build`.
//
//   sudo node examples/egress-demo.mjs [--backend namespace|vm]
import { Sandbox, NetworkPolicy, SecretRef, connectEngine } from "@mvm/sdk";

const TEST_HOSTS = new URL("../packages/engine/dist/egress/_test-hosts.js", import.meta.url);
const backendArg = process.argv.indexOf("--backend");
const backend = backendArg > 0 ? process.argv[backendArg + 1] : undefined;
const { startTestNetwork, testNetworkSupport } = await import(TEST_HOSTS.href);
const support = testNetworkSupport();
if (!support.ok) {
  console.error(`egress-demo: ${support.reason}`);
  process.exit(2);
}

const net = await startTestNetwork({ hosts: 1 });
const engine = await connectEngine({ mode: "embedded", engineOptions: { egress: { dnsServers: [net.dnsServer], upstreamCa: [net.caPem] } } });
try {
  const api = await net.startServer(0, "https", { port: 443, names: ["api.openai.com"] });
  await net.setDns("api.openai.com", { A: [net.hosts[0].ip] });
  const key = `sk-demo-${crypto.randomUUID().replaceAll("-", "")}`;
  await engine.setSecret("openai-api-key", key, { hosts: ["api.openai.com"] });

  // The example from the design, as a caller writes it (plus the engine and backend of this demo;
  // plain JavaScript on Node 20 has no `await using`, so the sandbox is killed at the end).
  const sb = await Sandbox.create({
    engine,
    ...(backend ? { backend } : {}),
    image: "debian:bookworm+python3",
    network: NetworkPolicy.denyByDefault().allowHttps("api.openai.com"),
    secrets: { OPENAI_API_KEY: SecretRef.from("openai-api-key") },
    ttlSeconds: 1800,
  });
  await sb.files.write(
    "/work/tool.py",
    [
      "import json, os, urllib.request",
      'print("my key:", os.environ["OPENAI_API_KEY"])',
      'req = urllib.request.Request("https://api.openai.com/v1/models", headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})',
      'print("api.openai.com:", urllib.request.urlopen(req, timeout=30).status)',
      "try:",
      '    urllib.request.urlopen("https://example.org/", timeout=30)',
      "except Exception as e:",
      '    print("example.org:", e)',
    ].join("\n"),
  );
  const r = await sb.commands.run(["python3", "/work/tool.py"], { timeoutSeconds: 30 });
  console.log(`--- inside the sandbox (${sb.info.tier}) ---\n${r.stdout}${r.stderr}`);
  const seen = (await api.requests()).at(-1);
  console.log("--- what api.openai.com received ---");
  console.log(`Authorization: ${seen?.headers.authorization === `Bearer ${key}` ? "Bearer <the real key>" : seen?.headers.authorization}`);
  console.log("--- network events (mvmctl logs --network) ---");
  for (const { event } of (await sb.network.events()).events) {
    if (event.type !== "connection") continue;
    console.log(`${event.decision.padEnd(7)} ${event.protocol} ${event.host}:${event.port}${event.intercepted ? ` (secrets: ${event.secrets?.join(",")})` : ""}${event.reason ? ` ${event.reason}` : ""}`);
  }
  await sb.kill();
} finally {
  await engine.removeSecret("openai-api-key").catch(() => {});
  await engine.close();
  await net.close();
}
