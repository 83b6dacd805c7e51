/**
 * Run by unprivileged-engine.test.ts as an ordinary (non-root) uid: opens a whole engine with the
 * real agent, imports a busybox image into its own store, starts a sandbox and reports what it saw
 * as one JSON line. Bundled by the test into a world-readable file before it runs.
 */
import { openEngine } from "../open.js";

async function main(): Promise<void> {
  const [stateDir, rootfs, agentBundlePath] = process.argv.slice(2) as [string, string, string];
  const engine = await openEngine({ stateDir, agentBundlePath, defaultImage: "local/busybox" });
  const out: Record<string, unknown> = { uid: process.getuid?.() };
  try {
    const health = await engine.health();
    out["enforceable"] = health.backends.find((b) => b.backend === "namespace")?.enforceable;
    await engine.importImage(rootfs, "local/busybox");
    out["limitRefused"] = await engine.createSandbox({ backend: "namespace", resources: { memoryMiB: 256 } }).then(
      () => "created",
      (err: { code?: string }) => err.code,
    );
    const sb = await engine.createSandbox({ backend: "namespace" });
    const run = async (script: string) => {
      const chunks: Buffer[] = [];
      const st = await engine.exec(sb.id, { argv: ["/bin/sh", "-c", script] }, { onStdout: (c) => chunks.push(Buffer.from(c)), onStderr: (c) => chunks.push(Buffer.from(c)) });
      const exit = await st.exit;
      return { code: exit.exitCode, text: Buffer.concat(chunks).toString() };
    };
    out["id"] = (await run("id -u")).text.trim();
    out["corePattern"] = (await run("(echo x > /proc/sys/kernel/core_pattern) 2>/dev/null && echo written || echo denied")).text.trim();
    out["status"] = (await run("grep -E '^(NoNewPrivs|CapEff|Seccomp):' /proc/self/status")).text;
    out["net"] = (await run("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")).text.trim();
    await engine.writeFile(sb.id, "/work/f.txt", Buffer.from("round trip"));
    out["file"] = (await run("cat /work/f.txt")).text;
    await engine.killSandbox(sb.id);
  } finally {
    await engine.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
