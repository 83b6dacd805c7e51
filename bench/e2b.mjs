// E2B-compatible API round trip: the unmodified `e2b` SDK's `commands.run("true")` through
// `mvmctl serve --e2b` against the native SDK's `commands.run` on the same sandbox and daemon,
// interleaved in the same run (namespace backend).
//   e2b.run.e2bMs     e2b Sandbox.commands.run("true")  (envd runs it as /bin/bash -l -c true)
//   e2b.run.sdkMs     @mvm/sdk commands.run(["/bin/bash", "-l", "-c", "true"])  (the same argv)
//   e2b.run.sdkTrueMs @mvm/sdk commands.run(["true"])  (what the shell costs, for reference)
// Target: ratioP50 <= 1.3 (issue 16).
import { spawn } from "node:child_process";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Sandbox as E2bSandbox } from "e2b";
import { Sandbox } from "@mvm/sdk";
import { MVMCTL, startBenchDaemon, startMvmctl } from "./_daemon.mjs";

function runOnce(env, args) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [MVMCTL, ...args], { env, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    c.stdout.on("data", (d) => (out += d));
    c.on("error", reject);
    c.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`mvmctl ${args.join(" ")} exited ${code}`))));
  });
}

export async function benchE2b({ log, summary, ratio, imagesDir, image, runs }) {
  const daemon = await startBenchDaemon({
    prefix: "mvm-bench-e2b-",
    imagesDir,
    files: { "e2b.json": JSON.stringify({ templates: { base: image }, backend: "namespace" }) },
  });
  const { dir, env, socketPath } = daemon;
  let server;
  let sbx;
  let native;
  try {
    const apiKey = (await runOnce(env, ["apikey", "create", "--name", "bench"])).trim();
    server = startMvmctl(env, ["serve", "--e2b", "--port", "0", "--config", join(dir, "e2b.json")], /envd on (http:\/\/127\.0\.0\.1:\d+)/);
    const url = (await server.ready)[1];
    const opts = { apiKey, apiUrl: url, sandboxUrl: url };
    sbx = await E2bSandbox.create("base", opts);
    native = await Sandbox.connect(sbx.sandboxId, { mode: "daemon", socketPath });
    const e2b = [];
    const sdk = [];
    const sdkTrue = [];
    const once = async () => {
      let t0 = performance.now();
      await sbx.commands.run("true");
      e2b.push(performance.now() - t0);
      t0 = performance.now();
      await native.commands.run(["/bin/bash", "-l", "-c", "true"]);
      sdk.push(performance.now() - t0);
      t0 = performance.now();
      await native.commands.run(["true"]);
      sdkTrue.push(performance.now() - t0);
    };
    for (let i = 0; i < 3; i++) await once(); // warm-up, not counted
    e2b.length = 0;
    sdk.length = 0;
    sdkTrue.length = 0;
    for (let i = 0; i < runs; i++) await once();
    const e = summary(e2b);
    const s = summary(sdk);
    const out = {
      run: {
        e2bMs: e,
        sdkMs: s,
        sdkTrueMs: summary(sdkTrue),
        ratioP50: ratio(e.p50, s.p50),
        ratioP95: ratio(e.p95, s.p95),
        target: "ratioP50 <= 1.3",
        method: `e2b ${"2.51.0"} Sandbox.commands.run("true") through mvmctl serve --e2b (HTTP on loopback, Connect JSON stream) against @mvm/sdk commands.run(["/bin/bash","-l","-c","true"]) (the argv envd runs) and commands.run(["true"]) on the same sandbox through the same daemon, alternating, ${runs} rounds after 3 warm-up rounds`,
      },
    };
    log(`e2b run: e2b p50 ${e.p50} ms, native (same argv) p50 ${s.p50} ms, ratio ${out.run.ratioP50}; native ["true"] p50 ${out.run.sdkTrueMs.p50} ms`);
    return out;
  } finally {
    await sbx?.kill().catch(() => {});
    if (server) {
      server.child.kill("SIGTERM");
      await server.closed;
    }
    await daemon.stop();
  }
}
