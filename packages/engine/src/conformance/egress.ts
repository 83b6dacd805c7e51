/**
 * The egress and secrets suite, run on every backend: real sandboxes reach real servers on test
 * hosts (network namespaces joined by veth pairs) only through the host's gateway.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetworkPolicy, PolicyDeniedError, type BackendName, type ConnectionEvent, type EngineApi, type NetworkEvent, type SandboxInfo } from "@mvm/protocol";
import { openEngine } from "../open.js";
import { startTestNetwork, testNetworkSupport, type TestNetwork, type TestServer } from "../egress/_test-hosts.js";
import { run, sharedImagesDir, sharedVmCacheDir, unavailableReason, waitFor } from "./harness.js";

/** Python run inside the sandbox: fetch a URL through the proxy variables, print status and body. */
const FETCH = `
import os, ssl, sys, urllib.request, urllib.error
url, cafile = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None)
headers = {}
if os.environ.get("API_KEY"): headers["Authorization"] = "Bearer " + os.environ["API_KEY"]
ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
try:
    r = urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=ctx, timeout=30)
    print("STATUS", r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print("HTTP", e.code, e.read().decode()); sys.exit(3)
except Exception as e:
    print("ERR", type(e).__name__, e); sys.exit(4)
`;

/** A CONNECT tunnel by hand, then TLS with a server name of our choosing (domain fronting). */
const FRONT = `
import socket, ssl, sys
host, sni, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
s.sendall(("CONNECT %s:443 HTTP/1.1\\r\\nHost: %s:443\\r\\n\\r\\n" % (host, host)).encode())
head = s.recv(4096).decode(errors="replace").split("\\r\\n")[0]
print("CONNECT", head)
try:
    t = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=sni)
    t.sendall(b"GET / HTTP/1.1\\r\\nHost: " + sni.encode() + b"\\r\\n\\r\\n"); print("TLS", t.recv(100))
except Exception as e:
    print("ERR", type(e).__name__); sys.exit(4)
`;

/** SOCKS5 CONNECT by hand (RFC 1928, no authentication) to a raw TCP echo server. */
const SOCKS = `
import socket, sys
host, port = sys.argv[1].encode(), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
s.sendall(b"\\x05\\x01\\x00"); assert s.recv(2) == b"\\x05\\x00"
s.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big"))
rep = s.recv(262)
print("REPLY", rep[1])
if rep[1] != 0: sys.exit(5)
s.sendall(b"hello over socks"); print("ECHO", s.recv(100).decode())
`;

function connections(events: readonly NetworkEvent[]): ConnectionEvent[] {
  return events.filter((e): e is ConnectionEvent => e.type === "connection");
}

async function allEvents(engine: EngineApi, id: string): Promise<NetworkEvent[]> {
  return (await engine.networkEvents(id)).events.map((e) => e.event);
}

async function eventually(engine: EngineApi, id: string, pred: (e: ConnectionEvent) => boolean): Promise<ConnectionEvent> {
  let found: ConnectionEvent | undefined;
  await waitFor(async () => (found = connections(await allEvents(engine, id)).find(pred)) !== undefined, 15_000);
  assert.ok(found, "expected network event not recorded");
  return found;
}

function httpGet(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: "127.0.0.1", port, path: "/", timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.end();
  });
}

const SECRET_VALUE = "sk-live-4f9d8c7b6a5e4d3c2b1a0f9e8d7c6b5a";

/**
 * Registers the suite for `backend`. `full` runs every case; the VM tier (slow under TCG) runs the
 * ones that exercise its own plumbing: the relay, the trust bundle, the floor and substitution.
 */
export function egressSuite(backend: BackendName, options: { full: boolean; skip?: string | undefined }): void {
  const gatewayOnly = options.full ? false : "gateway logic, the same for every backend: runs in egress.namespace.test.ts";
  const support = testNetworkSupport();
  const skip = options.skip ?? unavailableReason() ?? (support.ok ? undefined : support.reason);

  describe(`egress on ${backend}`, { skip, timeout: 900_000 }, () => {
    let net: TestNetwork;
    let engine: EngineApi & { close(): Promise<void> };
    let stateDir: string;
    let https: TestServer;
    let other: TestServer;
    let echo: TestServer;
    let sb: SandboxInfo;

    before(async () => {
      net = await startTestNetwork({ hosts: 2 });
      const [h0, h1] = net.hosts;
      https = await net.startServer(0, "https", { port: 443, names: ["api.egress.test"] });
      other = await net.startServer(1, "https", { port: 443, names: ["other.egress.test"] });
      echo = await net.startServer(1, "tcp-echo", { port: 7000 });
      await net.setDns("api.egress.test", { A: [h0!.ip] });
      await net.setDns("other.egress.test", { A: [h1!.ip] });
      await net.setDns("echo.egress.test", { A: [h1!.ip] });
      await net.setDns("rebind.egress.test", { A: ["10.0.0.7", "127.0.0.1", "169.254.169.254"] });
      await net.setDns("metadata.egress.test", { A: ["169.254.169.254"], AAAA: ["fd00:ec2::254"] });
      // Special-purpose blocks outside the test allowance: benchmarking (not a test host), documentation.
      await net.setDns("reserved.egress.test", { A: ["198.19.55.173", "192.0.2.1", "203.0.113.9"], AAAA: ["2001:db8::1"] });
      stateDir = await mkdtemp(join(tmpdir(), `mvm-egress-${backend}-`));
      engine = await openEngine({
        stateDir,
        imagesDir: sharedImagesDir(),
        vmCacheDir: sharedVmCacheDir(),
        backends: [backend],
        egress: { dnsServers: [net.dnsServer], upstreamCa: [net.caPem], testAllowance: net.testAllowance },
      });
      await engine.setSecret("test-api-key", SECRET_VALUE, { hosts: ["api.egress.test"] });
      sb = await engine.createSandbox({
        backend,
        network: NetworkPolicy.denyByDefault()
          .allowHttps("api.egress.test")
          .allowHttps("other.egress.test")
          .allowHttps("rebind.egress.test")
          .allowHttps("metadata.egress.test")
          .allowHttps("reserved.egress.test")
          .allowTcp("echo.egress.test", 7000)
          .toJSON(),
        secrets: { API_KEY: { kind: "secret-ref", source: "store", name: "test-api-key", posture: "mediated" } },
        ports: [{ guest: 8080 }],
      });
      await engine.writeFile(sb.id, "/tmp/fetch.py", Buffer.from(FETCH));
      await engine.writeFile(sb.id, "/tmp/front.py", Buffer.from(FRONT));
      await engine.writeFile(sb.id, "/tmp/socks.py", Buffer.from(SOCKS));
      await engine.writeFile(sb.id, "/tmp/testca.pem", Buffer.from(net.caPem));
    });

    after(async () => {
      await engine?.close();
      await net?.close();
      if (stateDir) await rm(stateDir, { recursive: true, force: true });
    });

    test("the workload sees only a placeholder; the bound host gets the real key over TLS", async () => {
      const env = await run(engine, sb.id, ["sh", "-c", 'printf %s "$API_KEY"']);
      assert.notEqual(env.stdout, SECRET_VALUE);
      assert.match(env.stdout, /^mvm-placeholder-[0-9a-f]{32}$/);
      const r = await run(engine, sb.id, ["python3", "/tmp/fetch.py", "https://api.egress.test/hello"]);
      assert.equal(r.exit.exitCode, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /STATUS 200/);
      const seen = (await https.requests()).filter((q) => q.path === "/hello");
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.headers["authorization"], `Bearer ${SECRET_VALUE}`);
      assert.equal(seen[0]!.sni, "api.egress.test");
      const event = await eventually(engine, sb.id, (e) => e.host === "api.egress.test" && e.decision === "allowed");
      assert.equal(event.intercepted, true);
      assert.deepEqual(event.secrets, ["test-api-key"]);
      assert.ok(!JSON.stringify(await allEvents(engine, sb.id)).includes(SECRET_VALUE));
    });

    test("a host the secret is not bound to never sees it, and its TLS is not intercepted", async () => {
      const r = await run(engine, sb.id, ["python3", "/tmp/fetch.py", "https://other.egress.test/unbound", "/tmp/testca.pem"]);
      assert.equal(r.exit.exitCode, 0, r.stdout + r.stderr);
      const seen = (await other.requests()).filter((q) => q.path === "/unbound");
      assert.equal(seen.length, 1);
      const auth = String(seen[0]!.headers["authorization"]);
      assert.ok(!auth.includes(SECRET_VALUE));
      assert.match(auth, /^Bearer mvm-placeholder-/);
      const event = await eventually(engine, sb.id, (e) => e.host === "other.egress.test" && e.decision === "allowed");
      assert.notEqual(event.intercepted, true);
    });

    for (const [kind, url, cafile] of [
      ["spliced", "https://other.egress.test/loop%d", '"/tmp/testca.pem"'],
      ["intercepted", "https://api.egress.test/loop%d", "None"],
    ] as const) {
      test(`every response reaches the workload when the server closes right after it (20 ${kind} tunnels in a row)`, { skip: gatewayOnly }, async () => {
        // The last bytes of a response may still wait for relay credit when the server's side closes.
        const loop = [
          "import ssl, urllib.request",
          `ctx = ssl.create_default_context(cafile=${cafile})`,
          "ok = 0",
          "for i in range(20):",
          "    try:",
          `        urllib.request.urlopen("${url}" % i, context=ctx, timeout=20).read(); ok += 1`,
          "    except Exception as e:",
          '        print("FAIL", i, repr(e))',
          'print("ok", ok)',
        ].join("\n");
        const r = await run(engine, sb.id, ["python3", "-c", loop]);
        assert.match(r.stdout, /^ok 20$/m, r.stdout);
      });
    }

    test("a name that resolves only to private, loopback, metadata, benchmarking or documentation addresses is denied (rebinding floor)", async () => {
      for (const name of ["rebind.egress.test", "metadata.egress.test", "reserved.egress.test"]) {
        const r = await run(engine, sb.id, ["python3", "/tmp/fetch.py", `https://${name}/`, "/tmp/testca.pem"]);
        assert.notEqual(r.exit.exitCode, 0);
        const event = await eventually(engine, sb.id, (e) => e.host === name && e.decision === "denied");
        assert.match(event.reason ?? "", /blocked|private|loopback|metadata/);
      }
    });

    test("anything not allowed fails inside with a clear error and a denied event outside", async () => {
      const r = await run(engine, sb.id, ["python3", "/tmp/fetch.py", "https://not-allowed.egress.test/", "/tmp/testca.pem"]);
      assert.equal(r.exit.exitCode, 4, r.stdout);
      assert.match(r.stdout, /403/);
      await eventually(engine, sb.id, (e) => e.host === "not-allowed.egress.test" && e.decision === "denied");
      // A direct connection has no route at all: the sandbox has no network interface but loopback.
      const direct = await run(engine, sb.id, ["python3", "-c", `import socket; socket.create_connection(("${net.hosts[0]!.ip}", 443), timeout=5)`]);
      assert.notEqual(direct.exit.exitCode, 0);
      assert.match(direct.stderr, /unreachable|Network is unreachable|timed out|refused/i);
    });

    test("TLS whose SNI differs from the allowed host is cut (no domain fronting)", async () => {
      const r = await run(engine, sb.id, ["python3", "/tmp/front.py", "other.egress.test", "api.egress.test", "/tmp/testca.pem"]);
      assert.match(r.stdout, /CONNECT HTTP\/1\.1 200/);
      assert.match(r.stdout, /ERR/);
      const event = await eventually(engine, sb.id, (e) => e.decision === "denied" && /SNI/.test(e.reason ?? ""));
      assert.equal(event.host, "other.egress.test");
    });

    test("raw TCP to an allowed host:port works through SOCKS5; other ports are refused", { skip: gatewayOnly }, async () => {
      const ok = await run(engine, sb.id, ["python3", "/tmp/socks.py", "echo.egress.test", "7000"]);
      assert.equal(ok.exit.exitCode, 0, ok.stdout + ok.stderr);
      assert.match(ok.stdout, /ECHO hello over socks/);
      const no = await run(engine, sb.id, ["python3", "/tmp/socks.py", "echo.egress.test", "7001"]);
      assert.equal(no.exit.exitCode, 5);
      assert.match(no.stdout, /REPLY 2/);
      const event = await eventually(engine, sb.id, (e) => e.via === "socks5" && e.decision === "allowed" && e.port === 7000);
      assert.ok(event.bytesOut >= 16 && event.bytesIn >= 16);
      void echo;
    });

    test("a policy changed on a live sandbox applies at once and is recorded", { skip: gatewayOnly }, async () => {
      const info = await engine.setNetworkPolicy(sb.id, NetworkPolicy.denyByDefault().allowHttps("api.egress.test").toJSON());
      assert.equal(info.network?.revision, 1);
      const r = await run(engine, sb.id, ["python3", "/tmp/fetch.py", "https://other.egress.test/after-change", "/tmp/testca.pem"]);
      assert.notEqual(r.exit.exitCode, 0);
      const events = await allEvents(engine, sb.id);
      const change = events.find((e) => e.type === "policy-changed");
      assert.ok(change && change.type === "policy-changed" && change.rulesAfter === 1);
    });

    test("a published guest port is reachable on host loopback, nothing else is", async () => {
      const port = sb.ports?.find((p) => p.guest === 8080)?.host;
      assert.ok(port !== undefined);
      await engine.exec(sb.id, { argv: ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", "/tmp"], background: true }, {});
      let answer: { status: number; body: string } | undefined;
      await waitFor(async () => {
        answer = await httpGet(port).catch(() => undefined);
        return answer !== undefined;
      }, 20_000);
      assert.equal(answer?.status, 200);
      assert.match(answer?.body ?? "", /fetch\.py/);
    });

    test("secret-looking arguments warn, and fail under MVM_STRICT_SECRETS=1", { skip: gatewayOnly }, async () => {
      const r = await run(engine, sb.id, ["echo", "--password=hunter2hunter2"]);
      assert.ok((r.exit.warnings ?? []).some((w) => /password/i.test(w)));
      assert.ok(!(r.exit.warnings ?? []).join(" ").includes("hunter2hunter2"));
      process.env["MVM_STRICT_SECRETS"] = "1";
      try {
        await assert.rejects(run(engine, sb.id, ["echo", "--password=hunter2hunter2"]), PolicyDeniedError);
      } finally {
        delete process.env["MVM_STRICT_SECRETS"];
      }
    });

    test("an env-posture secret is readable inside, says so in the record, and is redacted from output", { skip: gatewayOnly }, async () => {
      const s = await engine.createSandbox({
        backend,
        secrets: { PLAIN_KEY: { kind: "secret-ref", source: "store", name: "test-api-key", posture: "env" } },
      });
      try {
        assert.deepEqual(s.secrets?.map((x) => x.posture), ["env"]);
        const r = await run(engine, s.id, ["sh", "-c", 'test "$PLAIN_KEY" = "$0" && echo same; printf "%s" "$PLAIN_KEY"', SECRET_VALUE]);
        assert.match(r.stdout, /^same\n/);
        assert.ok(!r.stdout.includes(SECRET_VALUE), "the value came back to the caller");
      } finally {
        await engine.killSandbox(s.id);
      }
    });
  });
}
