// VM-tier snapshot figures (issue 12), on the backend directly (VmBackend + AgentClient, no
// engine API), each beside a baseline measured in the same run:
//   restore     launch() from the boot snapshot (saved VM) to the first stdout chunk of `echo hi`,
//               beside a plain QEMU (no engine, no jail) restoring the same RAM and device state
//               to the agent's first byte after its start line
//   userRestore the same from a user snapshot of a running sandbox
//   memory      host memory per restored VM sandbox with K alive: QEMU's PSS less its shared-memory
//               part, plus the pages of its RAM file (tmpfs), against the guest's own used memory
//               (MemTotal - MemAvailable inside)
//   snapshot    snapshot of a live 1 GiB guest (idle, and holding BENCH_SNAPVM_DIRTY_MIB of data):
//               time, bytes per part, 2 MiB chunks of the RAM part that are all zero (what a
//               chunk store elides)
//   fork        snapshot of a live sandbox then N restores started together: wall time to every
//               child's first output, and the children's memory
// Runs standalone (`node bench/snapshot-vm.mjs`, JSON on stdout) or from bench/run.mjs as
// benchSnapshotVm({ log, summary }). Counts: BENCH_SNAPVM_RUNS (10), BENCH_SNAPVM_ALIVE (4),
// BENCH_SNAPVM_FORK (8), BENCH_SNAPVM_DIRTY_MIB (256); BENCH_SNAPVM_ONLY=restore stops after the
// restore figures. Cache: BENCH_VM_CACHE_DIR (default
// /var/lib/mvm/vm; saved VMs are kept there).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { constants } from "node:fs";
import { mkdir, mkdtemp, open, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { randomInt } from "node:crypto";
import { fileURLToPath } from "node:url";
import { generateKeyPairSync } from "node:crypto";
import { defaultAgentBundlePath } from "@mvm/engine";

const dist = (path) => import(new URL(`../packages/engine/dist/${path}`, import.meta.url).href);
const [{ VmBackend }, { qemuArgs }, { restoreVmState }, { QmpClient }, { ImageStore }, { assembleAgentRuntime }, { AgentClient }, { listProcessesWithId }, { SnapshotStore }] = await Promise.all([
  dist("backends/vm/vm-backend.js"),
  dist("backends/vm/qemu.js"),
  dist("backends/vm/snapshot-io.js"),
  dist("backends/vm/qmp.js"),
  dist("images/store.js"),
  dist("runtime/agent-runtime.js"),
  dist("agent/client.js"),
  dist("_internal/proc.js"),
  dist("store/snapshot-store.js"),
]);

const MiB = 1024 * 1024;
/** A 1 GiB guest: the sandbox's memory plus the backend's 96 MiB guest overhead. */
const SANDBOX = { resources: { memoryMiB: 1024 - 96 }, workMiB: 256, tmpMiB: 64 };
const TIMEOUT_MS = 180_000;
const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";
const r1 = (v) => Math.round(v * 10) / 10;
const mean = (xs) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
function defaultSummary(xs) {
  return { n: xs.length, p50: r1(pct(xs, 50)), p95: r1(pct(xs, 95)), min: r1(Math.min(...xs)), max: r1(Math.max(...xs)) };
}

const sandboxId = () => `sbx_${Array.from({ length: 20 }, () => BASE32[randomInt(32)]).join("")}`;

async function clientRun(client, argv, onFirst) {
  const out = [];
  const proc = await client.exec(
    { argv, env: { PATH: "/usr/bin:/bin" }, cwd: "/work", timeoutMs: 120_000, killGraceMs: 1_000, maxOutputBytes: 4 << 20 },
    { openStdin: false, output: { onStdout: (c) => (onFirst?.(), out.push(Buffer.from(c))), onStderr: () => undefined } },
  );
  const exit = await proc.exit;
  if (exit.exitCode !== 0) throw new Error(`"${argv.join(" ")}" exited ${exit.exitCode}`);
  return Buffer.concat(out).toString("utf8");
}

async function qemuPidOf(hostUid) {
  for (const pid of await listProcessesWithId(Number(hostUid))) {
    if ((await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "")).startsWith("qemu-system")) return pid;
  }
  throw new Error(`No QEMU runs as uid "${hostUid}"`);
}

/** Host memory of one VM sandbox, MiB: QEMU's PSS outside shared memory plus its RAM file's pages. */
async function hostMemory(sandbox) {
  const roll = await readFile(`/proc/${await qemuPidOf(sandbox.reapRecord.extra.hostUid)}/smaps_rollup`, "utf8");
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(roll)?.[1] ?? 0);
  const ram = await stat(join(sandbox.reapRecord.extra.ramDir, "ram"));
  const pss = kib("Pss") / 1024;
  const pssShmem = kib("Pss_Shmem") / 1024;
  const ramFile = (ram.blocks * 512) / MiB;
  return { qemuPssMiB: pss, qemuPssShmemMiB: pssShmem, ramFileMiB: ramFile, hostMiB: pss - pssShmem + ramFile };
}

function guestUsed(meminfo) {
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(meminfo)?.[1] ?? NaN);
  return (kib("MemTotal") - kib("MemAvailable")) / 1024;
}

/** Bytes of each part (apparent and allocated) and the all-zero 2 MiB chunks of the RAM part. */
async function partSizes(parts) {
  const out = {};
  for (const [name, path] of Object.entries(parts)) {
    const st = await stat(path);
    out[name] = { bytes: st.size, allocatedBytes: st.blocks * 512 };
  }
  const file = await open(parts.ram, "r");
  const chunk = Buffer.alloc(2 * MiB);
  let chunks = 0;
  let zero = 0;
  try {
    for (let off = 0; ; off += chunk.length) {
      const { bytesRead } = await file.read(chunk, 0, chunk.length, off);
      if (bytesRead === 0) break;
      chunks++;
      if (chunk.subarray(0, bytesRead).every((b) => b === 0)) zero++;
    }
  } finally {
    await file.close();
  }
  out.ram.chunks2MiB = chunks;
  out.ram.zeroChunks2MiB = zero;
  out.ram.nonZeroBytes = (chunks - zero) * 2 * MiB;
  return out;
}

export async function benchSnapshotVm({ log = (...a) => console.error("[snapshot-vm]", ...a), summary = defaultSummary } = {}) {
  const RUNS = Number(process.env.BENCH_SNAPVM_RUNS ?? 10);
  const ALIVE = Number(process.env.BENCH_SNAPVM_ALIVE ?? 4);
  const FORK = Number(process.env.BENCH_SNAPVM_FORK ?? 8);
  const DIRTY_MIB = Number(process.env.BENCH_SNAPVM_DIRTY_MIB ?? 256);
  const cacheRoot = process.env.BENCH_VM_CACHE_DIR ?? "/var/lib/mvm/vm";
  const imagesDir = process.env.MVM_TEST_IMAGES_DIR ?? "/var/lib/mvm/images";
  const root = await mkdtemp(join(tmpdir(), "mvm-bench-snapvm-"));
  const ramRoot = await mkdtemp("/dev/shm/mvm-bench-snapvm-");
  const backend = new VmBackend({ cacheRoot, diskRoot: join(cacheRoot, "disks"), ramRoot });
  const image = await (await ImageStore.open(imagesDir)).resolve("debian:bookworm+python3");
  if (image === undefined) throw new Error("debian:bookworm+python3 is not in the image store");
  const agentDir = (await assembleAgentRuntime({ agentBundlePath: defaultAgentBundlePath(), outRoot: join(root, "runtime") })).dir;
  const live = new Set();
  const makeSpec = async (extra = {}) => {
    const id = sandboxId();
    const stateDir = join(root, "state", id);
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    return { sandboxId: id, rootfsDir: image.rootfsDir, rootfsDigest: image.digest, agentDir, stateDir, agentLogPath: join(stateDir, "agent.log"), ...SANDBOX, ...extra };
  };
  /** launch → hello → `echo hi` first output; the sandbox stays alive. */
  const startAndEcho = async (extra) => {
    const spec = await makeSpec(extra);
    const t0 = performance.now();
    const sandbox = await backend.launch(spec);
    live.add(sandbox);
    const launchedMs = performance.now() - t0;
    const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: TIMEOUT_MS, requestTimeoutMs: TIMEOUT_MS, label: spec.sandboxId });
    const helloMs = performance.now() - t0;
    let firstMs;
    await clientRun(client, ["/bin/echo", "hi"], () => (firstMs ??= performance.now() - t0));
    return { sandbox, client, spec, launchedMs, helloMs, firstMs };
  };
  const destroy = async (sandbox) => {
    live.delete(sandbox);
    await sandbox.destroy();
  };
  const out = { unit: "ms / MiB", guestRamMiB: 1024, cacheRoot };
  try {
    // 0. The boot snapshot (saved VM) of this shape, made by the first launch when missing.
    log("snapshot-vm: first launch (saves the VM when its shape has none)");
    const t0 = performance.now();
    const first = await startAndEcho();
    out.firstLaunchMs = r1(performance.now() - t0);
    await destroy(first.sandbox);

    // 1. Restore from the boot snapshot → first output.
    const restore = { launched: [], hello: [], first: [] };
    for (let i = 0; i < RUNS; i++) {
      const v = await startAndEcho();
      restore.launched.push(v.launchedMs), restore.hello.push(v.helloMs), restore.first.push(v.firstMs);
      await destroy(v.sandbox);
    }
    out.restore = { launchReturned: summary(restore.launched), hello: summary(restore.hello), firstOutput: summary(restore.first) };
    log("restore", JSON.stringify(out.restore));

    // Baseline: plain QEMU (no engine, no jail) restoring the same saved VM.
    out.restore.baselinePlainQemu = await plainQemuRestores(backend, await makeSpec(), root, RUNS, summary, log);

    if (process.env.BENCH_SNAPVM_ONLY === "restore") return out;

    // 2. Memory per restored sandbox with ALIVE alive.
    const alive = [];
    for (let i = 0; i < ALIVE; i++) alive.push(await startAndEcho());
    const samples = [];
    for (const a of alive) {
      const used = guestUsed(await clientRun(a.client, ["/bin/cat", "/proc/meminfo"]));
      samples.push({ ...(await hostMemory(a.sandbox)), guestUsedMiB: used });
    }
    const avg = (k) => r1(mean(samples.map((s) => s[k])));
    out.memory = {
      alive: ALIVE, hostMiB: avg("hostMiB"), qemuPssMiB: avg("qemuPssMiB"), qemuPssShmemMiB: avg("qemuPssShmemMiB"), ramFileMiB: avg("ramFileMiB"), guestUsedMiB: avg("guestUsedMiB"),
      ratio: r1(mean(samples.map((s) => s.hostMiB / s.guestUsedMiB)) * 100) / 100,
      perSandbox: samples.map((s) => Object.fromEntries(Object.entries(s).map(([k, v]) => [k, r1(v)]))),
      method: "per sandbox after create and two execs, all alive: QEMU Pss - Pss_Shmem (smaps_rollup) + allocated bytes of its RAM file (tmpfs), against MemTotal - MemAvailable in the guest",
    };
    log("memory", JSON.stringify({ ...out.memory, perSandbox: undefined }));

    // 3. Snapshot of a live 1 GiB guest: idle, then holding DIRTY_MIB of data in a process.
    const target = alive[0];
    const snap = async (label) => {
      const dir = await mkdtemp(join(root, `snap-${label}-`));
      const t = performance.now();
      await target.client.quiesce(60_000);
      let taken;
      try {
        taken = await target.sandbox.snapshot({ memory: true, dir });
      } finally {
        await target.client.resumeAfterQuiesce();
      }
      const ms = performance.now() - t;
      return { taken, dir, ms };
    };
    const idle = await snap("idle");
    out.snapshot = { idle: { ms: r1(idle.ms), parts: await partSizes(idle.taken.parts) } };
    void clientRun(target.client, ["/usr/bin/python3", "-c", `import time\nb = bytearray(b'x' * (${DIRTY_MIB} << 20))\nopen('/work/ready', 'w').close()\ntime.sleep(3600)`]).catch(() => undefined);
    for (;;) {
      const ready = await clientRun(target.client, ["/bin/sh", "-c", "test -e /work/ready && echo y || echo n"]);
      if (ready.trim() === "y") break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const dirty = await snap("dirty");
    out.snapshot.dirty = { dirtyMiB: DIRTY_MIB, ms: r1(dirty.ms), parts: await partSizes(dirty.taken.parts) };
    // Into the snapshot store (chunks, zero chunks elided, signed manifest), as the engine does next.
    {
      const store = await SnapshotStore.open(join(root, "store"), generateKeyPairSync("ed25519"));
      const t = performance.now();
      const stored = await store.create({
        parts: dirty.taken.parts, kind: "user", source: "bench", retention: { manual: true }, memory: true,
        shape: { tier: "vm-emulated", imageDigest: image.digest, ...dirty.taken.shape, workMiB: SANDBOX.workMiB },
      });
      const storeMs = performance.now() - t;
      const usage = await store.usage();
      const ram = stored.manifest.blobs.ram;
      out.snapshot.dirty.store = {
        createMs: r1(storeMs), storedBytes: usage.uniqueStoredBytes, logicalBytes: usage.logicalBytes,
        ramChunks: ram.chunks.length, ramZeroChunksElided: ram.chunks.filter((c) => c === null).length,
      };
    }
    log("snapshot", JSON.stringify(out.snapshot));

    // 4. Restore from the user snapshot (the one holding data) → first output.
    const user = { first: [], hello: [] };
    const restoreSpec = { restore: { memory: true, parts: dirty.taken.parts, shape: dirty.taken.shape } };
    for (let i = 0; i < Math.min(RUNS, 5); i++) {
      const v = await startAndEcho(restoreSpec);
      user.first.push(v.firstMs), user.hello.push(v.helloMs);
      await destroy(v.sandbox);
    }
    out.userRestore = { hello: summary(user.hello), firstOutput: summary(user.first) };
    log("user restore", JSON.stringify(out.userRestore));
    for (const a of alive) await destroy(a.sandbox);
    await rm(idle.dir, { recursive: true, force: true });

    // 5. Fork: snapshot a live sandbox, then FORK restores started together.
    const parent = await startAndEcho();
    const f0 = performance.now();
    const forkSnap = await (async () => {
      const dir = await mkdtemp(join(root, "fork-"));
      await parent.client.quiesce(60_000);
      try {
        return await parent.sandbox.snapshot({ memory: true, dir });
      } finally {
        await parent.client.resumeAfterQuiesce();
      }
    })();
    const snapshotMs = performance.now() - f0;
    const children = await Promise.all(Array.from({ length: FORK }, () => startAndEcho({ restore: { memory: true, parts: forkSnap.parts, shape: forkSnap.shape } })));
    const wallMs = performance.now() - f0;
    const childMem = [];
    for (const c of children) childMem.push({ ...(await hostMemory(c.sandbox)), guestUsedMiB: guestUsed(await clientRun(c.client, ["/bin/cat", "/proc/meminfo"])) });
    out.fork = {
      children: FORK, snapshotMs: r1(snapshotMs), wallToAllFirstOutputMs: r1(wallMs),
      childFirstOutput: summary(children.map((c) => c.firstMs)),
      hostMiBTotal: r1(childMem.reduce((a, s) => a + s.hostMiB, 0)), hostMiBPerChild: r1(mean(childMem.map((s) => s.hostMiB))), guestUsedMiBPerChild: r1(mean(childMem.map((s) => s.guestUsedMiB))),
    };
    log("fork", JSON.stringify(out.fork));
    for (const c of children) await destroy(c.sandbox);
    await destroy(parent.sandbox);
    await rm(dirty.dir, { recursive: true, force: true });

    out.targets = {
      restoreFirstOutputP50LE300ms: out.restore.firstOutput.p50 <= 300,
      memoryLE1_5xGuestUsed: out.memory.ratio <= 1.5,
    };
    return out;
  } finally {
    await Promise.all([...live].map((s) => s.destroy().catch(() => undefined)));
    await rm(ramRoot, { recursive: true, force: true });
    await rm(root, { recursive: true, force: true });
  }
}

/**
 * Plain QEMU, run directly (no engine, no jail, no control-port start): a sparse copy of the saved
 * VM's RAM, its device state loaded with -incoming defer, then the agent's start line; timed to
 * the agent's first byte (its hello). Same machine, devices and files as the backend's.
 */
async function plainQemuRestores(backend, spec, root, runs, summary, log) {
  const host = await backend.host();
  const p = await backend.prepare(spec, host);
  const saved = await backend.saved.find(p.shape);
  if (saved === undefined) throw new Error("no saved VM for the baseline");
  const times = [];
  for (let i = 0; i < runs; i++) {
    const dir = await mkdtemp("/dev/shm/mvm-bench-plain-");
    const ram = join(dir, "ram");
    const work = join(dir, "work");
    const t0 = performance.now();
    const cp = (from, to) => new Promise((res, rej) => spawn("cp", ["--sparse=always", from, to]).once("exit", (c) => (c === 0 ? res() : rej(new Error(`cp ${c}`)))));
    await Promise.all([cp(join(saved.dir, "ram"), ram), cp(join(saved.dir, "work"), work)]);
    const device = await open(join(saved.dir, "device"), constants.O_RDONLY);
    // Skip the engine's header line: QEMU reads from the descriptor's offset.
    const head = Buffer.alloc(4096);
    const { bytesRead } = await device.read(head, 0, head.length, 0);
    const end = head.subarray(0, bytesRead).indexOf(0x0a);
    await device.read(Buffer.alloc(end + 1), 0, end + 1, null);
    const args = qemuArgs({
      ...p.config, kernelPath: p.files.kernelPath, initrdPath: p.files.initrdPath, rootDiskPath: p.files.rootDiskPath, agentDiskPath: p.files.agentDiskPath,
      workDiskPath: work, ramFile: { path: ram, shared: true }, incoming: true,
    });
    const stdio = ["pipe", "pipe", "pipe", "pipe", "pipe", "pipe", device.fd, "ignore", "ignore", "ignore", "ignore", "ignore", "ignore", "ignore", "pipe"];
    const child = spawn(host.qemuPath, args, { stdio });
    const exited = once(child, "exit");
    try {
      const qmp = await QmpClient.connect(child.stdio[5], { timeoutMs: 30_000, label: "plain" });
      const firstByte = once(child.stdout, "data");
      await restoreVmState(qmp, { fdNumber: 6, ignoreShared: true, timeoutMs: 60_000 });
      child.stdin.write("mvm-agent start\n");
      await firstByte;
      times.push(performance.now() - t0);
      qmp.close();
    } finally {
      await device.close();
      child.kill("SIGKILL");
      await exited;
      await rm(dir, { recursive: true, force: true });
    }
  }
  const s = summary(times);
  log("plain QEMU restore → agent's first byte", JSON.stringify(s));
  return { toAgentFirstByte: s, method: "cp --sparse=always of ram and work, QEMU started with -incoming defer, migrate-incoming of the device state, cont, start line, first byte on stdout; no jail, no control-port start, no exec" };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const result = await benchSnapshotVm();
  console.log(JSON.stringify(result, null, 2));
}
