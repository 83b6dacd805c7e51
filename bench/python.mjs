// The Python SDK beside the TypeScript SDK, both talking to one daemon (namespace backend), in
// the same run, interleaved: Sandbox.create → first output of `echo hi`, and the exec round trip
// of `true` on a live sandbox. Each SDK times itself in its own long-lived process (interpreter
// start-up is not counted); ratios are Python / TypeScript at p50 and p95.
//
//   node bench/run.mjs python      # BENCH_PY_RUNS (default 20), MVM_PYTHON (default /usr/bin/python3)
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";
import { startBenchDaemon } from "./_daemon.mjs";
import { Sandbox } from "@mvm/sdk";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A long-lived Python driver: one command line in, one JSON line out. */
function pythonDriver(python, socketPath, image) {
  const child = spawn(python, [join(ROOT, "bench/python-driver.py"), image], {
    env: { ...process.env, PYTHONPATH: join(ROOT, "python"), MVM_DAEMON_SOCKET: socketPath },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const r = await lines.next();
    if (r.done) throw new Error("the Python driver exited");
    return JSON.parse(r.value);
  };
  return {
    ready: next,
    async ask(cmd) {
      child.stdin.write(`${cmd}\n`);
      return next();
    },
    async close() {
      child.stdin.end("quit\n");
      await new Promise((r) => child.on("exit", r));
    },
  };
}

export async function benchPython({ log, summary, ratio, imagesDir, image }) {
  const runs = Number(process.env.BENCH_PY_RUNS ?? 20);
  const python = process.env.MVM_PYTHON ?? (existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3");
  const daemon = await startBenchDaemon({ prefix: "mvm-bench-py-", imagesDir });
  const conn = { socketPath: daemon.socketPath, mode: "daemon", backend: "namespace", acknowledgeContainerTier: true };
  const py = pythonDriver(python, daemon.socketPath, image);
  try {
    await py.ready();
    const live = await Sandbox.create({ ...conn, image, ttlSeconds: 3600 });
    const tsCreate = async () => {
      const t0 = performance.now();
      const sb = await Sandbox.create({ ...conn, image, ttlSeconds: 600 });
      const created = performance.now();
      let first;
      await sb.commands.run(["echo", "hi"], { onStdout: () => (first ??= performance.now()) });
      await sb.kill();
      return { createMs: created - t0, firstOutputMs: first - t0 };
    };
    const tsExec = async () => {
      const t0 = performance.now();
      await live.commands.run(["true"]);
      return performance.now() - t0;
    };
    // Untimed warm-up of both sides.
    await tsCreate();
    await py.ask("create");
    for (let i = 0; i < 5; i++) {
      await tsExec();
      await py.ask("exec");
    }
    const f = { tsFirst: [], pyFirst: [], tsCreate: [], pyCreate: [], tsExec: [], pyExec: [] };
    for (let i = 0; i < runs; i++) {
      // Alternate which SDK goes first, so neither always gets the warmer machine.
      const order = i % 2 === 0 ? ["ts", "py"] : ["py", "ts"];
      for (const who of order) {
        if (who === "ts") {
          const c = await tsCreate();
          f.tsFirst.push(c.firstOutputMs);
          f.tsCreate.push(c.createMs);
          f.tsExec.push(await tsExec());
        } else {
          const c = await py.ask("create");
          f.pyFirst.push(c.firstOutputMs);
          f.pyCreate.push(c.createMs);
          f.pyExec.push((await py.ask("exec")).execMs);
        }
      }
      if ((i + 1) % 5 === 0) log(`python: ${i + 1}/${runs}`);
    }
    await live.kill();
    const s = Object.fromEntries(Object.entries(f).map(([k, v]) => [k, summary(v)]));
    return {
      runs,
      python,
      createToFirstOutputMs: { typescript: s.tsFirst, python: s.pyFirst },
      createMs: { typescript: s.tsCreate, python: s.pyCreate },
      execRoundTripMs: { typescript: s.tsExec, python: s.pyExec },
      ratios: {
        createToFirstOutputP50: ratio(s.pyFirst.p50, s.tsFirst.p50),
        createToFirstOutputP95: ratio(s.pyFirst.p95, s.tsFirst.p95),
        execRoundTripP50: ratio(s.pyExec.p50, s.tsExec.p50),
        execRoundTripP95: ratio(s.pyExec.p95, s.tsExec.p95),
      },
      note: "Python / TypeScript, both SDKs against one daemon in this run; each times itself in a long-lived process",
    };
  } finally {
    await py.close().catch(() => {});
    await daemon.stop();
  }
}
