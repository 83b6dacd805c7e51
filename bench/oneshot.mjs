#!/usr/bin/env node
// One-shot figures for bench/run.mjs ("oneshot"): a whole `mvmctl run --backend namespace -- true`
// process, spawn to exit, the way a user meets it, beside whole-process baselines in the same run,
// interleaved so that drift in the machine's load falls on every series alike:
//   - `bwrap --unshare-all ... node -e 0` (a bare namespace sandbox starting Node)
//   - `srt true` (Anthropic's sandbox-runtime), when installed (SRT_BIN, PATH or node_modules/.bin)
// mvmctl is measured embedded (its own engine in the process) and against a daemon started here
// (its own state directory and socket), and, when the engine has warm pools, against a daemon
// keeping sandboxes of this shape warm. Every mvmctl series gets one unmeasured run first (which
// fills the engine's host-facts cache, as any first run on a host does). mvmctl is started as the
// executable (bin/mvmctl.cjs, which runs Node with mvmctl's startup snapshot when it fits); the
// warm-pool series and a bare `mvmctl --help` are measured again with the snapshot turned off
// (MVM_CLI_NO_SNAPSHOT=1: Node runs the bundle with its code cache, as before the snapshot).
import { spawn } from "node:child_process";
import { realpathSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

const MVMCTL = new URL("../packages/cli/bin/mvmctl.cjs", import.meta.url).pathname;

/** Runs a whole process to its exit; wall ms. Rejects on a non-zero exit. */
function timed(cmd, args, env) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"], env });
    let err = "";
    child.stderr.on("data", (c) => (err = (err + c).slice(-2000)));
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`${cmd} ${args.join(" ")} exited ${code ?? signal}: ${err}`));
    });
  });
}

/** Starts `mvmctl daemon` on `socket`; resolves once it listens. */
function startDaemon(env, socket) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MVMCTL, "daemon", "--socket", socket], { stdio: ["ignore", "pipe", "pipe"], env });
    let out = "";
    const onData = (c) => {
      out += c;
      if (out.includes("listening")) {
        child.stderr.off("data", onData);
        child.stderr.resume();
        resolve(child);
      }
    };
    // mvmctl says it listens on stderr (stdout is for results).
    child.stderr.on("data", onData);
    child.stdout.resume();
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`mvmctl daemon exited ${code} before listening: ${out}`)));
  });
}

async function stopDaemon(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

export async function benchOneshot({ log, summary, ratio, imagesDir, runs, findSrt, pools = false }) {
  const root = await mkdtemp(join(tmpdir(), "mvm-bench-oneshot-"));
  const daemons = [];
  try {
    // The state directories below it must be searchable by sandbox uids; the sockets stay in
    // directories of their own (0700).
    await chmod(root, 0o711);
    const config = join(root, "config.json");
    await writeFile(config, "{}");
    const envFor = (name) => ({
      ...process.env,
      MVM_STATE_DIR: join(root, name),
      MVM_IMAGES_DIR: imagesDir,
      MVM_CONFIG: config,
      MVM_ACK_CONTAINER_TIER: "1",
      MVM_DAEMON_SOCKET: "",
    });
    const run = ["run", "--backend", "namespace", "--", "true"];
    const series = {
      bwrapNode: () => timed("bwrap", ["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", process.execPath, "-e", "0"], process.env),
      mvmctlEmbedded: () => timed(MVMCTL, ["--embedded", ...run], envFor("embedded")),
      mvmctlHelp: () => timed(MVMCTL, ["--help"], envFor("help")),
      mvmctlHelpNoSnapshot: () => timed(MVMCTL, ["--help"], { ...envFor("help"), MVM_CLI_NO_SNAPSHOT: "1" }),
    };
    const srt = await findSrt();
    if (srt) series.srt = () => timed(srt, ["true"], process.env);

    await mkdir(join(root, "sockets"), { mode: 0o700 });
    const daemonSocket = join(root, "sockets", "daemon.sock");
    daemons.push(await startDaemon(envFor("daemon"), daemonSocket));
    series.mvmctlDaemon = () => timed(MVMCTL, ["--socket", daemonSocket, ...run], envFor("daemon"));

    if (pools) {
      const pooledSocket = join(root, "sockets", "pooled.sock");
      daemons.push(await startDaemon(envFor("pooled"), pooledSocket));
      await timed(process.execPath, [MVMCTL, "--socket", pooledSocket, "pool", "set", "--backend", "namespace", "--size", "2"], envFor("pooled"));
      series.mvmctlDaemonWarmPool = () => timed(MVMCTL, ["--socket", pooledSocket, ...run], envFor("pooled"));
      series.mvmctlDaemonWarmPoolNoSnapshot = () => timed(MVMCTL, ["--socket", pooledSocket, ...run], { ...envFor("pooled"), MVM_CLI_NO_SNAPSHOT: "1" });
    }

    for (const [name, once] of Object.entries(series)) {
      if (name.startsWith("mvmctl")) await once();
    }
    const times = Object.fromEntries(Object.keys(series).map((k) => [k, []]));
    for (let i = 0; i < runs; i++) {
      for (const [name, once] of Object.entries(series)) times[name].push(await once());
      // A warm pool refills between runs, as it would between a user's commands.
      if (pools) await new Promise((r) => setTimeout(r, 300));
    }
    const s = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, summary(v)]));
    const vs = (name) =>
      s[name] && {
        toBwrapNodeP50: ratio(s[name].p50, s.bwrapNode.p50),
        ...(s.srt ? { toSrtP50: ratio(s[name].p50, s.srt.p50) } : {}),
      };
    const figures = {
      unit: "ms, whole process from spawn to exit",
      command: "mvmctl run --backend namespace -- true",
      ...s,
      ratios: Object.fromEntries(Object.keys(s).filter((k) => k.startsWith("mvmctl")).map((k) => [k, vs(k)])),
      // What the startup snapshot saves, same run: with it against without it.
      snapshot: {
        helpP50: ratio(s.mvmctlHelp.p50, s.mvmctlHelpNoSnapshot.p50),
        ...(s.mvmctlDaemonWarmPoolNoSnapshot ? { warmPoolP50: ratio(s.mvmctlDaemonWarmPool.p50, s.mvmctlDaemonWarmPoolNoSnapshot.p50) } : {}),
      },
      ...(srt ? {} : { srtSkipped: "@anthropic-ai/sandbox-runtime is not installed (npm i -g @anthropic-ai/sandbox-runtime, or set SRT_BIN)" }),
      target: "toSrtP50 <= 0.5 and toBwrapNodeP50 <= 1.5",
    };
    log("oneshot", JSON.stringify(figures));
    return figures;
  } finally {
    for (const d of daemons) await stopDaemon(d);
    await rm(root, { recursive: true, force: true });
  }
}


// Run directly (`./bench/oneshot.mjs`): the oneshot section of bench/run.mjs, with its arguments.
if (process.argv[1] !== undefined && new URL(import.meta.url).pathname === realpathSync(process.argv[1])) {
  const run = spawn(process.execPath, [new URL("./run.mjs", import.meta.url).pathname, "oneshot", ...process.argv.slice(2)], { stdio: "inherit" });
  run.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}
