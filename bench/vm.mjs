// VM-tier figures for bench/run.mjs ("vm"), each beside a baseline measured in the same run:
//   coldBoot  launch() to the agent's hello with saved VMs off, beside a plain unjailed QEMU
//             boot of the same kernel and initramfs to the first line of its /init
//   restore   createSandbox() to the first stdout chunk of `echo hi` on a restored VM, beside the
//             same on the namespace backend and a plain host spawn of /bin/echo
//   memory    QEMU RSS/PSS and the guest's own used memory of idle restored and booted VMs
// Counts: BENCH_VM_COLD_RUNS (5), BENCH_VM_RESTORE_RUNS (20), BENCH_VM_IDLE (4).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { randomInt } from "node:crypto";
import { DEFAULT_IMAGE, defaultAgentBundlePath, openEngine } from "@mvm/engine";

// Deep imports: the package exports only its root, so the compiled files are named by path.
const dist = (path) => import(new URL(`../packages/engine/dist/${path}`, import.meta.url).href);
const [{ VmBackend, GUEST_OVERHEAD_MIB }, { VmProcess }, { SavedVmStore }, { BENCH_INIT_MARKER }, { parseTscKhz }, { ImageStore }, { assembleAgentRuntime }, { AgentClient }, { listProcessesWithId }] =
  await Promise.all([
    dist("backends/vm/vm-backend.js"),
    dist("backends/vm/vm-process.js"),
    dist("backends/vm/snapshots.js"),
    dist("backends/vm/init-script.js"),
    dist("backends/vm/qemu.js"),
    dist("images/store.js"),
    dist("runtime/agent-runtime.js"),
    dist("agent/client.js"),
    dist("_internal/proc.js"),
  ]);

/** The engine's defaults for a create that names no resources, so booted and restored VMs have one shape. */
const SANDBOX = { resources: { memoryMiB: 1024, pids: 1024 }, workMiB: 1024, tmpMiB: 256 };
const BOOT_TIMEOUT_MS = 180_000;
const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";
const r1 = (v) => Math.round(v * 10) / 10;
const mean = (xs) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

function onPath(name) {
  for (const dir of [...(process.env.PATH ?? "").split(":"), "/usr/bin", "/usr/sbin"]) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/**
 * Wraps VmProcess.spawn and SavedVmStore#ensure (same module instances the engine uses) to note
 * when QEMU is spawned and which saved VM a launch used; engine code is not changed.
 */
function instrument() {
  const marks = { spawnAt: 0, statePath: undefined };
  const spawnVm = VmProcess.spawn;
  const ensure = SavedVmStore.prototype.ensure;
  VmProcess.spawn = function (options) {
    marks.spawnAt = performance.now();
    return spawnVm.call(this, options);
  };
  SavedVmStore.prototype.ensure = async function (...args) {
    const saved = await ensure.apply(this, args);
    marks.statePath = join(saved.dir, "device");
    return saved;
  };
  const undo = () => {
    VmProcess.spawn = spawnVm;
    SavedVmStore.prototype.ensure = ensure;
  };
  return { marks, undo };
}

/** Boots `kernel`+`initrd` in a plain QEMU (no jail, no disks) to /init's bench marker; ms from spawn. Killed at the marker. */
function plainBoot(qemu, { kernelPath, initrdPath, memoryMiB, tscKhz }, live) {
  const append = ["console=ttyS0", ...(tscKhz !== undefined ? [`tsc_early_khz=${tscKhz}`] : []), "quiet", "panic=-1", "mvm.bench_stop=init"].join(" ");
  const args = ["-M", "microvm,x-option-roms=off", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-m", String(memoryMiB), "-kernel", kernelPath, "-initrd", initrdPath, "-append", append, "-serial", "stdio"];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(qemu, args, { stdio: ["ignore", "pipe", "pipe"] });
    live.add(child);
    let out = "";
    let reachedMs;
    const timer = setTimeout(() => child.kill("SIGKILL"), BOOT_TIMEOUT_MS);
    child.stdout.on("data", (chunk) => {
      if (reachedMs !== undefined) return;
      out = (out + chunk.toString("latin1")).slice(-4096);
      if (out.includes(BENCH_INIT_MARKER)) {
        reachedMs = performance.now() - t0;
        // The figure is taken: end the guest here rather than wait for it to power off (it may
        // not, and would hold its RAM while the next boot is timed).
        child.kill("SIGKILL");
      }
    });
    child.stderr.resume();
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      if (reachedMs !== undefined) resolve(reachedMs);
      else reject(new Error(`Plain QEMU exited (${code ?? signal}) before "${BENCH_INIT_MARKER}"; console tail: ${JSON.stringify(out.slice(-500))}`));
    });
  });
}

/** The QEMU process running as the sandbox's own host uid. */
async function qemuPidOf(hostUid) {
  for (const pid of await listProcessesWithId(Number(hostUid))) {
    if ((await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "")).startsWith("qemu-system")) return pid;
  }
  throw new Error(`No QEMU runs as uid "${hostUid}"`);
}

/** RSS, PSS and anonymous memory of a process, MiB. */
async function rssPssMiB(pid) {
  const roll = await readFile(`/proc/${pid}/smaps_rollup`, "utf8");
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(roll)?.[1] ?? NaN);
  return { rssMiB: kib("Rss") / 1024, pssMiB: kib("Pss") / 1024, anonMiB: kib("Anonymous") / 1024 };
}

/** Used memory as the guest sees it, from its /proc/meminfo text, MiB. */
function guestUsedMiB(text) {
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? NaN);
  return {
    usedMiB: (kib("MemTotal") - kib("MemFree") - kib("Buffers") - kib("Cached")) / 1024,
    notAvailableMiB: (kib("MemTotal") - kib("MemAvailable")) / 1024,
  };
}

async function engineRun(engine, id, argv) {
  const out = [];
  const started = await engine.exec(id, { argv }, { onStdout: (c) => out.push(Buffer.from(c)) });
  const exit = await started.exit;
  if (exit.exitCode !== 0) throw new Error(`"${argv.join(" ")}" exited ${exit.exitCode} in ${id}`);
  return Buffer.concat(out).toString("utf8");
}

async function clientRun(client, argv) {
  const out = [];
  const proc = await client.exec(
    { argv, env: { PATH: "/usr/bin:/bin" }, cwd: "/work", timeoutMs: 60_000, killGraceMs: 1_000, maxOutputBytes: 1 << 20 },
    { openStdin: false, output: { onStdout: (c) => out.push(Buffer.from(c)), onStderr: () => undefined } },
  );
  const exit = await proc.exit;
  if (exit.exitCode !== 0) throw new Error(`"${argv.join(" ")}" exited ${exit.exitCode} in the guest`);
  return Buffer.concat(out).toString("utf8");
}

/** Time from createSandbox() to its return and to the first stdout chunk of `echo hi`, ms. */
async function createToFirstOutput(engine, image, ids) {
  const t0 = performance.now();
  const info = await engine.createSandbox({ acknowledgeContainerTier: true, image });
  ids.add(info.id);
  const createdMs = performance.now() - t0;
  let firstMs;
  const started = await engine.exec(info.id, { argv: ["/bin/echo", "hi"] }, { onStdout: () => (firstMs ??= performance.now() - t0) });
  await started.exit;
  return { id: info.id, t0, createdMs, firstMs, afterCreateMs: firstMs - createdMs };
}

function hostEcho() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn("/bin/echo", ["hi"], { stdio: ["ignore", "pipe", "ignore"] });
    let first;
    child.stdout.once("data", () => (first = performance.now() - t0));
    child.on("error", reject);
    child.on("close", () => (first === undefined ? reject(new Error("/bin/echo wrote nothing")) : resolve(first)));
  });
}

/** Averages of per-sandbox memory samples. */
function memoryAverages(samples) {
  const avg = (key) => r1(mean(samples.map((s) => s[key])));
  return { n: samples.length, qemuRssMiB: avg("rssMiB"), qemuPssMiB: avg("pssMiB"), qemuAnonMiB: avg("anonMiB"), guestUsedMiB: avg("usedMiB"), guestNotAvailableMiB: avg("notAvailableMiB"), perSandbox: samples.map((s) => Object.fromEntries(Object.entries(s).map(([k, v]) => [k, r1(v)]))) };
}

/**
 * Runs the VM-tier benchmarks. `runs` may override the counts: { cold, restore, idle }.
 * `summary` and `ratio` are run.mjs's helpers, so every figure is summarized alike.
 * Returns `{ skipped }` when QEMU or the image store is missing.
 */
export async function benchVm({ runs = {}, log, summary, ratio }) {
  const qemu = onPath("qemu-system-x86_64");
  if (qemu === undefined) return { skipped: "qemu-system-x86_64 is not installed" };
  const imagesDir = process.env.MVM_TEST_IMAGES_DIR ?? "/var/lib/mvm/images";
  if (!existsSync(join(imagesDir, "refs.json"))) return { skipped: `no image store at ${imagesDir}` };
  const image = await (await ImageStore.open(imagesDir)).resolve(DEFAULT_IMAGE);
  if (image === undefined) return { skipped: `${DEFAULT_IMAGE} is not in the image store at ${imagesDir}` };
  const vmCacheDir = process.env.MVM_VM_CACHE_DIR ?? "/var/lib/mvm/vm";
  const COLD = runs.cold ?? Number(process.env.BENCH_VM_COLD_RUNS ?? 5);
  const RESTORE = runs.restore ?? Number(process.env.BENCH_VM_RESTORE_RUNS ?? 20);
  const IDLE = runs.idle ?? Number(process.env.BENCH_VM_IDLE ?? 4);

  const tmp = await mkdtemp(join(tmpdir(), "mvm-bench-vm-"));
  await chmod(tmp, 0o711); // the agent runtime under it must be reachable by sandbox uids
  const { marks, undo } = instrument();
  const plain = new Set(); // plain QEMU children
  const booted = new Set(); // { sandbox, client } launched through the VmBackend
  const engineIds = new Map(); // engine -> Set of sandbox ids
  const engines = [];
  const out = { vmCacheDir, image: image.digest };
  try {
    const agentDir = (await assembleAgentRuntime({ agentBundlePath: defaultAgentBundlePath(), outRoot: join(tmp, "runtime") })).dir;
    const backend = new VmBackend({ cacheRoot: vmCacheDir, savedVms: false });
    const tscKhz = parseTscKhz(await readFile("/proc/cpuinfo", "utf8").catch(() => ""));

    /** A cold boot through the VmBackend to the agent's hello; the VM stays up until destroyed. */
    const coldBoot = async () => {
      const sandboxId = `sbx_${Array.from({ length: 20 }, () => BASE32[randomInt(32)]).join("")}`;
      const stateDir = join(tmp, "state", sandboxId);
      await mkdir(stateDir, { recursive: true, mode: 0o700 });
      const spec = { sandboxId, rootfsDir: image.rootfsDir, agentDir, stateDir, ...SANDBOX, agentLogPath: join(stateDir, "agent.log") };
      const t0 = performance.now();
      const sandbox = await backend.launch(spec);
      const entry = { sandbox, client: undefined, stateDir };
      booted.add(entry);
      entry.client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: BOOT_TIMEOUT_MS, requestTimeoutMs: 60_000, label: sandboxId });
      return { entry, helloMs: performance.now() - t0, hostBeforeQemuMs: marks.spawnAt - t0 };
    };
    const destroyBooted = async (entry) => {
      entry.client?.destroy();
      await entry.sandbox.destroy();
      await rm(entry.stateDir, { recursive: true, force: true });
      booted.delete(entry);
    };

    // 1. Cold boot vs plain QEMU boot of the same kernel and initramfs, alternating.
    log(`vm: ${COLD} cold boots and ${COLD} plain QEMU boots`);
    const first = await coldBoot(); // also builds (or finds) the kernel, initramfs and disks
    await destroyBooted(first.entry);
    // The kernel and initramfs the backend booted (its private cache of them, read for the baseline).
    const artifacts = await backend["artifacts"];
    if (artifacts?.kernel?.kernelPath === undefined) throw new Error("VmBackend no longer keeps its boot files in \"artifacts\": update bench/vm.mjs");
    const { kernel, initrdPath } = artifacts;
    const plainConfig = { kernelPath: kernel.kernelPath, initrdPath, memoryMiB: SANDBOX.resources.memoryMiB + GUEST_OVERHEAD_MIB, tscKhz };
    const cold = [];
    const hostBefore = [];
    const plainMs = [];
    for (let i = 0; i < COLD; i++) {
      plainMs.push(await plainBoot(qemu, plainConfig, plain));
      const c = await coldBoot();
      await destroyBooted(c.entry);
      cold.push(c.helloMs);
      hostBefore.push(c.hostBeforeQemuMs);
      log(`vm cold ${i + 1}/${COLD}: hello ${r1(c.helloMs)} ms (host before QEMU ${r1(c.hostBeforeQemuMs)} ms), plain to /init ${r1(plainMs.at(-1))} ms`);
    }
    const coldS = summary(cold);
    const plainS = summary(plainMs);
    out.coldBoot = {
      unit: "ms", accel: "tcg", firstLaunchMs: r1(first.helloMs), launchToHello: coldS, hostBeforeQemu: summary(hostBefore),
      baselinePlainQemuToInit: plainS, ratio: ratio(coldS.p50, plainS.p50), ratioP95: ratio(coldS.p95, plainS.p95), target: "ratio <= 1.2",
      method: "VmBackend (savedVms: false) launch() call to AgentClient hello, alternating with plain unjailed QEMU (same kernel, initramfs, -m) spawn to /init's marker on the serial console; hostBeforeQemu is launch() call to VmProcess.spawn",
    };
    log("vm coldBoot", JSON.stringify(out.coldBoot));

    // 2. Restore to first exec output, beside the namespace backend and a host spawn.
    const stateRoot = (name) => join(tmp, name);
    const openOne = async (name, extra) => {
      const engine = await openEngine({ stateDir: stateRoot(name), imagesDir, defaultTtlSeconds: 3600, ...extra });
      engines.push(engine);
      engineIds.set(engine, new Set());
      return engine;
    };
    const vmEngine = await openOne("vm-engine", { vmCacheDir, backends: ["vm"] });
    const nsEngine = await openOne("ns-engine", { backends: ["namespace"] });
    const kill = async (engine, id) => {
      await engine.killSandbox(id);
      engineIds.get(engine).delete(id);
    };
    log(`vm: warm-up create (may save the VM), then ${RESTORE} restores`);
    const wallStart = Date.now();
    const warm = await createToFirstOutput(vmEngine, DEFAULT_IMAGE, engineIds.get(vmEngine));
    await kill(vmEngine, warm.id);
    const statePath = marks.statePath;
    const state = statePath !== undefined ? await stat(statePath) : undefined;
    const restore = { created: [], first: [], afterCreate: [], hostBeforeQemu: [] };
    const ns = { created: [], first: [], afterCreate: [] };
    const host = [];
    for (let i = 0; i < RESTORE; i++) {
      host.push(await hostEcho());
      const n = await createToFirstOutput(nsEngine, DEFAULT_IMAGE, engineIds.get(nsEngine));
      await kill(nsEngine, n.id);
      ns.created.push(n.createdMs), ns.first.push(n.firstMs), ns.afterCreate.push(n.afterCreateMs);
      const v = await createToFirstOutput(vmEngine, DEFAULT_IMAGE, engineIds.get(vmEngine));
      await kill(vmEngine, v.id);
      restore.created.push(v.createdMs), restore.first.push(v.firstMs), restore.afterCreate.push(v.afterCreateMs), restore.hostBeforeQemu.push(marks.spawnAt - v.t0);
      if (i % 5 === 4) log(`vm restore ${i + 1}/${RESTORE}: ${r1(v.firstMs)} ms (namespace ${r1(n.firstMs)} ms)`);
    }
    const vmFirst = summary(restore.first);
    const nsFirst = summary(ns.first);
    const hostS = summary(host);
    out.restore = {
      unit: "ms", saveFirstMs: r1(warm.firstMs), savedVmBuiltByWarmUp: state !== undefined && state.mtimeMs >= wallStart,
      createToFirstOutput: vmFirst, createReturned: summary(restore.created), returnedToFirstOutput: summary(restore.afterCreate), hostBeforeQemu: summary(restore.hostBeforeQemu),
      baselineNamespace: { createToFirstOutput: nsFirst, createReturned: summary(ns.created), returnedToFirstOutput: summary(ns.afterCreate) },
      baselineHostSpawnEcho: hostS,
      ratioToNamespaceP50: ratio(vmFirst.p50, nsFirst.p50), ratioToNamespaceP95: ratio(vmFirst.p95, nsFirst.p95), ratioToHostSpawnP50: ratio(vmFirst.p50, hostS.p50),
      target: "createToFirstOutput.p50 <= 300 ms under TCG",
      method: "openEngine(backends: [vm]) createSandbox() call to the first stdout chunk of exec /bin/echo hi, alternating with the same on backends: [namespace] and a host spawn of /bin/echo; saveFirstMs is the warm-up create's figure",
    };
    log("vm restore", JSON.stringify(out.restore));

    // 3. Memory of idle VMs: K restored, then K cold-booted.
    log(`vm: memory of ${IDLE} idle restored and ${IDLE} idle booted VMs`);
    const restoredSamples = [];
    const ids = [];
    for (let i = 0; i < IDLE; i++) {
      const info = await vmEngine.createSandbox({ image: DEFAULT_IMAGE });
      engineIds.get(vmEngine).add(info.id);
      ids.push(info.id);
    }
    for (const id of ids) {
      const record = JSON.parse(await readFile(join(stateRoot("vm-engine"), "sandboxes", id, "record.json"), "utf8"));
      const guest = guestUsedMiB(await engineRun(vmEngine, id, ["/bin/cat", "/proc/meminfo"]));
      restoredSamples.push({ ...(await rssPssMiB(await qemuPidOf(record.reap.extra.hostUid))), ...guest });
    }
    for (const id of ids) await kill(vmEngine, id);
    const bootedSamples = [];
    const entries = [];
    for (let i = 0; i < IDLE; i++) entries.push((await coldBoot()).entry);
    for (const entry of entries) {
      const guest = guestUsedMiB(await clientRun(entry.client, ["/bin/cat", "/proc/meminfo"]));
      bootedSamples.push({ ...(await rssPssMiB(await qemuPidOf(entry.sandbox.reapRecord.extra.hostUid))), ...guest });
    }
    for (const entry of entries) await destroyBooted(entry);
    const restoredM = memoryAverages(restoredSamples);
    const bootedM = memoryAverages(bootedSamples);
    out.memory = {
      unit: "MiB", guestRamMiB: plainConfig.memoryMiB, restored: restoredM, booted: bootedM,
      savedByRestoreMiB: r1(bootedM.qemuRssMiB - restoredM.qemuRssMiB), savedByRestorePssMiB: r1(bootedM.qemuPssMiB - restoredM.qemuPssMiB),
      guestUsedSavedByRestoreMiB: r1(bootedM.guestUsedMiB - restoredM.guestUsedMiB),
      savedStateFileMiB: state !== undefined ? r1(state.size / 2 ** 20) : null,
      method: "each VM measured after create and one exec of cat /proc/meminfo while all K of its kind are alive: QEMU Rss/Pss from /proc/<qemu>/smaps_rollup; guest used = MemTotal-MemFree-Buffers-Cached, notAvailable = MemTotal-MemAvailable",
    };
    log("vm memory", JSON.stringify({ ...out.memory, restored: { ...restoredM, perSandbox: undefined }, booted: { ...bootedM, perSandbox: undefined } }));
    return out;
  } finally {
    undo();
    for (const child of plain) child.kill("SIGKILL");
    for (const entry of [...booted]) {
      entry.client?.destroy();
      await entry.sandbox.destroy().catch((err) => log("destroy failed", err.message));
    }
    for (const engine of engines) {
      for (const id of engineIds.get(engine)) await engine.killSandbox(id).catch((err) => log("kill failed", err.message));
      await engine.close().catch((err) => log("close failed", err.message));
    }
    await rm(tmp, { recursive: true, force: true });
  }
}
