// Functions (docs/FUNCTIONS.md) through the SDK on an in-process engine, namespace backend:
// add.remote(2, 3) cold (a new sandbox per call) and from a warm pool (a claimed sandbox), p50/p95,
// beside baselines from the same run, interleaved: `node -e 0` on the host, a plain exec of `true`
// on a live sandbox, and a call in a live session (the wrapper's own cost: two Node processes in
// the sandbox). Then map throughput at concurrency 1, 8 and 32, and memory per warm sandbox.
//
//   node bench/run.mjs functions   # BENCH_FN_RUNS (default 20), BENCH_FN_MAP_CALLS (64), BENCH_FN_WARM_MEM (8)
import { spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fn } from "@mvm/sdk";

const noop = () => {};

function hostNode() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const c = spawn(process.execPath, ["-e", "0"], { stdio: "ignore" });
    c.on("error", reject);
    c.on("exit", (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`node -e exited ${code}`))));
  });
}

async function timed(f) {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

/** Pss per sandbox (sum over the host processes in its cgroup, as bench/run.mjs "density"), by sandbox id. */
async function sandboxPss() {
  const out = new Map();
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const m = (await readFile(`/proc/${pid}/cgroup`, "utf8")).match(/sbx_[a-z2-7]{20}/);
      if (!m) continue;
      const kib = Number((await readFile(`/proc/${pid}/smaps_rollup`, "utf8")).match(/^Pss:\s+(\d+)/m)?.[1] ?? 0);
      out.set(m[0], (out.get(m[0]) ?? 0) + kib);
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

async function memAvailableKiB() {
  return Number((await readFile("/proc/meminfo", "utf8")).match(/MemAvailable:\s+(\d+)/)[1]);
}

export async function benchFunctions({ log, summary, ratio, openEngine, imagesDir, image }) {
  const runs = Number(process.env.BENCH_FN_RUNS ?? 20);
  const mapCalls = Number(process.env.BENCH_FN_MAP_CALLS ?? 64);
  const warmMem = Number(process.env.BENCH_FN_WARM_MEM ?? 8);
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-fn-"));
  await chmod(stateDir, 0o711);
  const engine = await openEngine({ stateDir, imagesDir, defaultTtlSeconds: 3600, backends: ["namespace"] });
  const base = { engine, image, backend: "namespace", onStdout: noop, onStderr: noop, logDir: join(stateDir, "fn-logs") };
  try {
    // Pools are keyed by workload: the cold function's differs (one env var), so it never claims.
    const add = fn({ ...base, id: "bench-add", env: { MVM_BENCH_COLD: "1" } }, (a, b) => a + b);
    const warmAdd = fn({ ...base, id: "bench-add-warm", warm: 2 }, (a, b) => a + b);
    const live = await engine.createSandbox({ backend: "namespace", image, ttlSeconds: 3600 });
    const session = await add.session();
    await warmAdd.warmUp();
    // One untimed round warms caches (image, bundle, runtime pages).
    await add.remote(2, 3);
    await warmAdd.remote(2, 3);
    await session.remote(2, 3);

    const cold = [];
    const warm = [];
    const inSession = [];
    const node = [];
    const exec = [];
    for (let i = 0; i < runs; i++) {
      node.push(await hostNode());
      exec.push(await timed(async () => (await engine.exec(live.id, { argv: ["true"] }, {})).exit));
      inSession.push(await timed(() => session.remote(2, 3)));
      cold.push(await timed(() => add.remote(2, 3)));
      // Timed from a full pool: the claim path, not the refill.
      await warmAdd.warmUp();
      warm.push(await timed(() => warmAdd.remote(2, 3)));
      if ((i + 1) % 5 === 0) log(`functions: ${i + 1}/${runs}`);
    }
    await session.close();
    await engine.killSandbox(live.id);

    const throughput = {};
    for (const concurrency of [1, 8, 32]) {
      const calls = concurrency === 1 ? Math.min(mapCalls, 16) : mapCalls;
      const inputs = Array.from({ length: calls }, (_, i) => [i, 1]);
      const t0 = performance.now();
      let n = 0;
      for await (const r of add.map(inputs, { concurrency })) if (r === inputs[n++][0] + 1) continue;
      const seconds = (performance.now() - t0) / 1000;
      throughput[`c${concurrency}`] = { calls, seconds: Math.round(seconds * 100) / 100, callsPerSecond: Math.round((calls / seconds) * 100) / 100 };
      log(`functions: map at concurrency ${concurrency}: ${throughput[`c${concurrency}`].callsPerSecond} calls/s`);
    }

    // Memory per warm sandbox: MemAvailable before and after a pool of warmMem fills.
    await warmAdd.coolDown();
    await new Promise((r) => setTimeout(r, 1000));
    const beforeIds = new Set((await sandboxPss()).keys());
    const before = await memAvailableKiB();
    const pool = fn({ ...base, id: "bench-mem", warm: warmMem }, (a, b) => a + b);
    await pool.warmUp({ timeoutMs: 120_000 });
    await new Promise((r) => setTimeout(r, 1000));
    const after = await memAvailableKiB();
    // Warm sandboxes are not listed until claimed: they are the sandbox cgroups that appeared.
    const warmPss = [...(await sandboxPss()).entries()].filter(([id]) => !beforeIds.has(id)).map(([, kib]) => kib);
    await pool.coolDown();
    const count = Math.max(1, warmPss.length);
    const perSandboxMiB = Math.round(((before - after) / count / 1024) * 10) / 10;
    const pssPerSandboxMiB = Math.round((warmPss.reduce((a, b) => a + b, 0) / count / 1024) * 10) / 10;

    const c = summary(cold);
    const w = summary(warm);
    const s = summary(inSession);
    const n = summary(node);
    const e = summary(exec);
    return {
      runs,
      coldRemoteMs: c,
      warmRemoteMs: w,
      sessionCallMs: s,
      hostNodeMs: n,
      liveExecMs: e,
      ratios: {
        warmOverCold_p50: ratio(w.p50, c.p50),
        warmOverHostNode_p50: ratio(w.p50, n.p50),
        warmOverLiveExec_p50: ratio(w.p50, e.p50),
        sessionOverHostNode_p50: ratio(s.p50, n.p50),
      },
      targetWarmP50Ms: 30,
      map: throughput,
      warmMemory: {
        sandboxes: warmPss.length,
        pssPerSandboxMiB,
        memAvailableDropPerSandboxMiB: perSandboxMiB,
        note: "Pss: sum over the processes in each warm sandbox's cgroup (bubblewrap, init, agent), shared pages split; MemAvailable: drop while the pool filled (noisy with other work on the host)",
      },
    };
  } finally {
    await engine.close();
    await rm(stateDir, { recursive: true, force: true });
  }
}
