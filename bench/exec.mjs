// Exec round trip on a live namespace sandbox, against a host spawn('/bin/true') in this process,
// interleaved so that drift in the machine's load affects both series alike:
//   execRoundTrip   one exec of true through the engine API (embedded): p50/p99 against host spawn
//   execSequential  back-to-back execs per second against host spawns per second, in alternating blocks
//   execDaemonSdk   one `commands.run(["/bin/true"])` of the SDK through a daemon in its own process,
//                   beside the engine API and host spawn of the same rounds
// BENCH_EXEC_BLOCKS (default 8) blocks of BENCH_EXEC_BLOCK_MS (default 500) each for the rate.
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

const BLOCKS = Number(process.env.BENCH_EXEC_BLOCKS ?? 8);
const BLOCK_MS = Number(process.env.BENCH_EXEC_BLOCK_MS ?? 500);

/** Starts a daemon with its own engine in a child process; resolves once its socket listens. */
async function startDaemon(imagesDir) {
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-daemon-"));
  const socketPath = join(stateDir, "run", "mvmd.sock");
  const script = `
    const m = await import(${JSON.stringify(import.meta.resolve("@mvm/engine"))});
    const engine = await m.openEngine({ stateDir: process.env.STATE, imagesDir: process.env.IMAGES, backends: ["namespace"], defaultTtlSeconds: 3600 });
    const server = await m.startDaemonServer({ engine, socketPath: process.env.SOCK });
    process.once("SIGTERM", async () => { await server.close(); await engine.close(); process.exit(0); });
    process.stdout.write("ready\\n");`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    env: { ...process.env, STATE: stateDir, IMAGES: imagesDir, SOCK: socketPath },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    child.stdout.once("data", resolve);
    child.once("exit", (code) => reject(new Error(`bench daemon exited early (${code})`)));
  });
  const stop = async () => {
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
    await rm(stateDir, { recursive: true, force: true });
  };
  return { socketPath, stop };
}

/** Calls of `once` made back to back for `ms`: calls per second. */
async function rate(once, ms) {
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < ms) {
    await once();
    n++;
  }
  return { n, seconds: (performance.now() - t0) / 1000 };
}

export async function benchExec({ log, summary, ratio, spawnTimed, execOnce, engine, imagesDir, image, runs }) {
  const figures = {};
  const sb = await engine.createSandbox({ acknowledgeContainerTier: true, image });
  const hostTrue = async () => (await spawnTimed("/bin/true", [])).totalMs;
  const mvmTrue = async () => {
    const r = await execOnce(engine, sb.id, ["/bin/true"]);
    if (r.exit.exitCode !== 0) throw new Error(`exec of true exited ${r.exit.exitCode}`);
    return r.totalMs;
  };
  try {
    for (let i = 0; i < 20; i++) await mvmTrue();
    const host = [];
    const ours = [];
    const n = Math.max(runs * 5, 200);
    for (let i = 0; i < n; i++) {
      host.push(await hostTrue());
      ours.push(await mvmTrue());
    }
    const h = summary(host);
    const o = summary(ours);
    figures.execRoundTrip = {
      unit: "ms",
      mvm: o,
      baselineHostSpawn: h,
      ratioP50: ratio(o.p50, h.p50),
      ratioP99: ratio(o.p99, h.p99),
      target: "ratioP50 <= 1.3, ratioP99 <= 2",
    };
    log("exec", JSON.stringify(figures.execRoundTrip));

    // Alternating blocks, the order swapped every block.
    const hostRates = [];
    const mvmRates = [];
    const total = { host: { n: 0, s: 0 }, mvm: { n: 0, s: 0 } };
    for (let b = 0; b < BLOCKS; b++) {
      const order = b % 2 === 0 ? ["host", "mvm"] : ["mvm", "host"];
      for (const who of order) {
        const r = await rate(who === "host" ? hostTrue : mvmTrue, BLOCK_MS);
        (who === "host" ? hostRates : mvmRates).push(r.n / r.seconds);
        total[who].n += r.n;
        total[who].s += r.seconds;
      }
    }
    const per = (xs) => Math.round(summary(xs).p50 * 10) / 10;
    const mvmPerSecond = Math.round((total.mvm.n / total.mvm.s) * 10) / 10;
    const hostPerSecond = Math.round((total.host.n / total.host.s) * 10) / 10;
    figures.execSequential = {
      unit: "calls/s",
      mvmExecsPerSecond: mvmPerSecond,
      hostSpawnsPerSecond: hostPerSecond,
      ratio: ratio(mvmPerSecond, hostPerSecond),
      blockP50: { mvm: per(mvmRates), host: per(hostRates) },
      method: `${BLOCKS} alternating blocks of ${BLOCK_MS} ms each, exec of true one after another on one sandbox against spawn('/bin/true') in this process`,
      target: "ratio >= 0.8",
    };
    log("exec sequential", JSON.stringify(figures.execSequential));
  } finally {
    await engine.killSandbox(sb.id).catch(() => {});
  }

  // The SDK through a daemon in another process: what a caller of `commands.run` sees.
  const daemon = await startDaemon(imagesDir);
  try {
    const { Sandbox } = await import("@mvm/sdk");
    const remote = await Sandbox.create({ image, acknowledgeContainerTier: true, mode: "daemon", socketPath: daemon.socketPath });
    const local = await engine.createSandbox({ acknowledgeContainerTier: true, image });
    try {
      const sdkTrue = async () => {
        const t0 = performance.now();
        await remote.commands.run(["/bin/true"]);
        return performance.now() - t0;
      };
      const localTrue = async () => (await execOnce(engine, local.id, ["/bin/true"])).totalMs;
      for (let i = 0; i < 20; i++) await sdkTrue();
      const host = [];
      const api = [];
      const sdk = [];
      const n = Math.max(runs * 5, 200);
      for (let i = 0; i < n; i++) {
        host.push(await hostTrue());
        api.push(await localTrue());
        sdk.push(await sdkTrue());
      }
      const h = summary(host);
      const a = summary(api);
      const s = summary(sdk);
      figures.execDaemonSdk = {
        unit: "ms",
        sdkThroughDaemon: s,
        engineApi: a,
        baselineHostSpawn: h,
        ratioP50: ratio(s.p50, h.p50),
        ratioP99: ratio(s.p99, h.p99),
        daemonAddsP50Ms: Math.round((s.p50 - a.p50) * 100) / 100,
        method: "commands.run(['/bin/true']) of @mvm/sdk against a daemon in its own process (HTTP+NDJSON on its Unix socket), interleaved with an engine-API exec in this process and a host spawn",
      };
      log("exec sdk+daemon", JSON.stringify(figures.execDaemonSdk));
    } finally {
      await remote.kill().catch(() => {});
      await engine.killSandbox(local.id).catch(() => {});
    }
  } finally {
    await daemon.stop();
  }
  return figures;
}
