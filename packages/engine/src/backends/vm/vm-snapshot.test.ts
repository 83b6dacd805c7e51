/**
 * VM snapshots on real QEMU (TCG here) with the Debian image and the real agent: a running
 * sandbox snapshotted with its agent quiesced keeps running, restores continue its processes'
 * memory and diverge from each other, a tampered saved VM fails closed, and no RAM file or work
 * copy outlives its sandbox. Kernel and initramfs are cached under $MVM_TEST_VM_CACHE_DIR (give
 * each parallel run its own); saved VMs go there too.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { generateKeyPairSync } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SnapshotMismatchError, UnsupportedCapabilityError } from "@mvm/protocol";
import { AgentClient } from "../../agent/client.js";
import { assembleAgentRuntime } from "../../runtime/agent-runtime.js";
import { isSameLiveProcess } from "../../_internal/proc.js";
import { ImageStore } from "../../images/store.js";
import { makeSpec, makeTestRoot, removeTestRoot } from "../namespace/_fixtures.js";
import type { BackendSnapshot, LaunchSpec } from "../types.js";
import { SnapshotStore } from "../../store/snapshot-store.js";
import { VmBackend } from "./vm-backend.js";
import type { VmSandbox } from "./vm-sandbox.js";

const CACHE = process.env["MVM_TEST_VM_CACHE_DIR"] ?? process.env["MVM_TEST_VM_CACHE"] ?? "/var/tmp/mvm-test-vm-cache";
const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const TIMEOUT_MS = 120_000;

async function run(client: AgentClient, argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const proc = await client.exec(
    { argv, env: { PATH: "/usr/bin:/bin" }, cwd: "/work", timeoutMs: 60_000, killGraceMs: 1_000, maxOutputBytes: 1 << 20 },
    { openStdin: false, output: { onStdout: (c) => (stdout += Buffer.from(c).toString()), onStderr: (c) => (stderr += Buffer.from(c).toString()) } },
  );
  const exit = await proc.exit;
  return { code: exit.exitCode, stdout, stderr };
}

const sh = async (client: AgentClient, script: string): Promise<string> => {
  const r = await run(client, ["/bin/sh", "-c", script]);
  assert.equal(r.code, 0, `${script}: ${r.stderr}`);
  return r.stdout;
};

/** "<pid> <n>" the counter process last wrote. */
async function counter(client: AgentClient): Promise<{ pid: number; n: number }> {
  const [pid, n] = (await sh(client, "cat /work/counter")).trim().split(" ").map(Number);
  return { pid: pid!, n: n! };
}

async function waitCounterAbove(client: AgentClient, n: number): Promise<{ pid: number; n: number }> {
  for (;;) {
    const c = await counter(client).catch(() => ({ pid: 0, n: -1 }));
    if (c.n > n) return c;
    await new Promise((r) => setTimeout(r, 200));
  }
}

const COUNTER = `
import os, time
n = 0
while True:
    n += 1
    with open('/work/counter.tmp', 'w') as f:
        f.write(f'{os.getpid()} {n}')
    os.replace('/work/counter.tmp', '/work/counter')
    time.sleep(0.05)
`;

describe("VM snapshots", { timeout: 1_800_000, skip: !existsSync(join(IMAGES, "refs.json")) && `no image store at ${IMAGES}` }, () => {
  let root: string;
  let ramRoot: string;
  let rootfsDir: string;
  let agentDir: string;
  let backend: VmBackend;
  const alive: VmSandbox[] = [];

  const spec = (extra: Partial<LaunchSpec> = {}) =>
    makeSpec({ root, rootfsDir, agentDir, resources: { memoryMiB: 256 }, workMiB: 16, tmpMiB: 16 }).then((s) => ({ ...s, ...extra }));
  const launch = async (s: LaunchSpec): Promise<{ sandbox: VmSandbox; client: AgentClient }> => {
    const sandbox = await backend.launch(s);
    alive.push(sandbox);
    const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: TIMEOUT_MS, requestTimeoutMs: TIMEOUT_MS, label: s.sandboxId });
    return { sandbox, client };
  };

  /** A launch expected to fail: a sandbox it starts after all is destroyed in `after`. */
  const tracked = (launched: Promise<VmSandbox>): Promise<VmSandbox> => launched.then((sandbox) => (alive.push(sandbox), sandbox));

  before(async () => {
    root = await makeTestRoot("mvm-vmsnap-");
    ramRoot = await mkdtemp("/dev/shm/mvm-vmsnap-test-");
    const image = await (await ImageStore.open(IMAGES)).resolve("debian:bookworm+python3");
    assert.ok(image !== undefined, "debian:bookworm+python3 is not in the image store");
    rootfsDir = image.rootfsDir;
    const agentBundlePath = createRequire(import.meta.url).resolve("@mvm/agent/agent.cjs");
    agentDir = (await assembleAgentRuntime({ agentBundlePath, outRoot: join(root, "runtime") })).dir;
    await mkdir(CACHE, { recursive: true });
    backend = new VmBackend({ cacheRoot: CACHE, diskRoot: join(root, "disks"), ramRoot });
  });
  after(async () => {
    await Promise.all(alive.map((s) => s.destroy().catch(() => undefined)));
    await rm(ramRoot, { recursive: true, force: true });
    await removeTestRoot(root);
  });

  let snapshot: BackendSnapshot;
  let source: { sandbox: VmSandbox; client: AgentClient; spec: LaunchSpec };

  it("snapshots a running sandbox, which keeps running with a writable disk", async (t) => {
    const s = await spec();
    t.after(async () => {
      if (process.env["MVM_TEST_VERBOSE"]) console.log((await readFile(s.agentLogPath, "utf8").catch(() => "")).slice(-4000), source?.sandbox.qemuStderr());
    });
    const launched = await launch(s);
    source = { ...launched, spec: s };
    const { sandbox, client } = launched;
    assert.deepEqual(await readdir(ramRoot), [s.sandboxId]);
    void run(client, ["/usr/bin/python3", "-c", COUNTER]).catch(() => undefined);
    const before = await waitCounterAbove(client, 2);

    const dir = await mkdtemp(join(root, "snap-"));
    await client.quiesce(30_000);
    try {
      await assert.rejects(sandbox.snapshot({ memory: false, dir }), UnsupportedCapabilityError);
      snapshot = await sandbox.snapshot({ memory: true, dir });
    } finally {
      await client.resumeAfterQuiesce();
    }
    assert.deepEqual(Object.keys(snapshot.parts).sort(), ["device", "ram", "work"]);
    assert.equal(snapshot.shape.memoryMiB, 256 + 96);
    assert.equal(snapshot.shape.cpus, 1);
    assert.match(snapshot.shape.kernelDigest ?? "", /./);
    assert.match(snapshot.shape.initramfsDigest ?? "", /^sha256:[0-9a-f]{64}$/);
    const ram = await open(snapshot.parts.ram!, "r");
    assert.equal((await ram.stat()).size, (256 + 96) * 1024 * 1024);
    // Sparse: the guest's free memory is not in the copy.
    assert.ok((await ram.stat()).blocks * 512 < (256 + 96) * 1024 * 1024, "the RAM copy is sparse");
    await ram.close();

    // The source carries on: its process counts on, and /work takes writes.
    const later = await waitCounterAbove(client, before.n + 5);
    assert.equal(later.pid, before.pid);
    assert.equal(await sh(client, "echo x > /work/after && cat /work/after"), "x\n");

    // A paused sandbox stays paused through a snapshot, and resumes with a writable disk.
    await client.quiesce(30_000);
    await sandbox.pause();
    const pausedDir = await mkdtemp(join(root, "snap-paused-"));
    await sandbox.snapshot({ memory: true, dir: pausedDir });
    assert.deepEqual(await sandbox.runState(), { status: "postmigrate", running: false });
    await sandbox.resume();
    await client.resumeAfterQuiesce();
    const resumed = await waitCounterAbove(client, later.n);
    assert.equal(resumed.pid, before.pid);
    assert.equal(await sh(client, "echo y >> /work/after && cat /work/after"), "x\ny\n");
    await rm(pausedDir, { recursive: true, force: true });
  });

  it("restores continue the snapshot's processes from its memory, and two restores diverge", async () => {
    assert.ok(snapshot !== undefined, "needs the snapshot of the previous case");
    const taken = await counter(source.client);
    const restores = [];
    for (let i = 0; i < 2; i++) {
      const s = await spec({ restore: { memory: true, parts: snapshot.parts, shape: snapshot.shape } });
      restores.push(await launch(s));
    }
    const random: string[] = [];
    const bootIds: string[] = [];
    for (const { client } of restores) {
      // The counter process is the same process, alive, counting on from the snapshot's value.
      const c = await waitCounterAbove(client, 0);
      assert.ok(c.n <= taken.n + 1_000, `restored counter ${c.n} starts near the snapshot's`);
      const next = await waitCounterAbove(client, c.n + 3);
      assert.equal(next.pid, c.pid);
      assert.equal(await sh(client, `kill -0 ${c.pid} && echo alive`), "alive\n");
      // The file written after the snapshot is not in it.
      assert.equal(await sh(client, "test -e /work/after && echo yes || echo no"), "no\n");
      random.push(await sh(client, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"));
      bootIds.push(await sh(client, "cat /proc/sys/kernel/random/boot_id"));
    }
    assert.notEqual(random[0], random[1], "the restores' RNG output differs");
    // The guest kernel makes boot_id when it is first read: nothing read it before the snapshot,
    // so each restore has its own (one read before a snapshot would fix it for every restore).
    assert.notEqual(bootIds[0], bootIds[1]);
    for (const { sandbox } of restores) await sandbox.destroy();
  });

  it("refuses a snapshot of another RAM size or vCPU count before anything starts", async () => {
    assert.ok(snapshot !== undefined, "needs the snapshot of the first case");
    for (const shape of [{ ...snapshot.shape, memoryMiB: 512 }, { ...snapshot.shape, kernelDigest: "sha256:0" }]) {
      const s = await spec({ restore: { memory: true, parts: snapshot.parts, shape } });
      const before = await readdir(ramRoot);
      await assert.rejects(tracked(backend.launch(s)), SnapshotMismatchError);
      assert.deepEqual(await readdir(ramRoot), before);
      assert.deepEqual(await readdir(s.stateDir), []);
    }
  });

  it("leaves no RAM file or work copy after destroy, and reap removes them after a lost engine", async () => {
    const { sandbox, spec: s } = source;
    await sandbox.destroy();
    assert.equal((await sandbox.exited).signal, "SIGKILL");
    assert.ok(!(await readdir(ramRoot)).includes(s.sandboxId));
    assert.ok(!(await readdir(s.stateDir)).includes("work.img"));

    const t = await spec();
    const lost = await backend.launch(t);
    alive.push(lost);
    assert.ok((await readdir(ramRoot)).includes(t.sandboxId));
    await backend.reap(lost.reapRecord);
    assert.equal((await lost.exited).signal, "SIGKILL");
    assert.equal(await isSameLiveProcess(lost.reapRecord.pid, lost.reapRecord.pidStartTime), false);
    assert.ok(!(await readdir(ramRoot)).includes(t.sandboxId));
  });

  it("fails closed on a flipped byte in the saved VM's RAM or device state, and boots nothing", async () => {
    const savedRoot = join(CACHE, "saved");
    // The saved VM this backend uses: the one used last (a use touches it).
    const dirs = (await readdir(savedRoot)).filter((n) => /^[0-9a-f]{64}$/.test(n));
    const used = await Promise.all(dirs.map(async (d) => ({ d, at: (await stat(join(savedRoot, d))).mtimeMs })));
    const key = used.sort((a, b) => b.at - a.at)[0]!.d;
    for (const part of ["ram", "device"] as const) {
      const path = join(savedRoot, key, part);
      const file = await open(path, "r+");
      const size = (await file.stat()).size;
      // A byte in the middle: for ram a page the guest used, found by scanning for a non-zero one.
      let at = Math.floor(size / 2);
      if (part === "ram") {
        const buf = Buffer.alloc(4096);
        for (let off = 0; off < size; off += 1 << 20) {
          await file.read(buf, 0, buf.length, off);
          if (buf.some((b) => b !== 0)) {
            at = off + buf.findIndex((b) => b !== 0);
            break;
          }
        }
      }
      const byte = Buffer.alloc(1);
      await file.read(byte, 0, 1, at);
      await file.write(Buffer.from([byte[0]! ^ 0xff]), 0, 1, at);
      const s = await spec();
      const ramBefore = await readdir(ramRoot);
      await assert.rejects(tracked(backend.launch(s)), (err: unknown) => err instanceof SnapshotMismatchError && new RegExp(`${part} file`).test(err.message));
      assert.deepEqual(await readdir(ramRoot), ramBefore, "no RAM file was made");
      assert.deepEqual(await readdir(s.stateDir), [], "no work copy was made, no QEMU ran");
      // Set aside; put it back whole for the next case.
      await file.write(byte, 0, 1, at);
      await file.close();
      const aside = (await readdir(savedRoot)).find((n) => n.startsWith(".quarantine-") && existsSync(join(savedRoot, n, part)));
      assert.ok(aside !== undefined, "the saved VM was set aside");
      await rename(join(savedRoot, aside), join(savedRoot, key));
    }
    // Whole again, it is checked again (its files changed) and used.
    const { sandbox, client } = await launch(await spec());
    assert.equal(await sh(client, "echo ok"), "ok\n");
    await sandbox.destroy();
    assert.deepEqual(await readdir(ramRoot), []);
  });

  it("keeps the failed launch's files away: a damaged device header fails before QEMU starts", async () => {
    assert.ok(snapshot !== undefined, "needs the snapshot of the first case");
    const bad = join(root, "bad-device");
    const text = await readFile(snapshot.parts.device!);
    const copy = Buffer.from(text);
    copy[20] = copy[20]! ^ 0x01;
    await writeFile(bad, copy);
    const s = await spec({ restore: { memory: true, parts: { ...snapshot.parts, device: bad }, shape: snapshot.shape } });
    await assert.rejects(tracked(backend.launch(s)), SnapshotMismatchError);
    assert.deepEqual(await readdir(ramRoot), []);
    assert.deepEqual(await readdir(s.stateDir), []);
  });

  it("keeps the boot snapshot in the snapshot store: verified before use, rebuilt from chunks when its template changed, fail closed on a bad chunk", async () => {
    const store = await SnapshotStore.open(join(root, "snapstore"), generateKeyPairSync("ed25519"));
    const storeBackend = new VmBackend({ cacheRoot: join(root, "store-cache"), diskRoot: join(root, "disks"), ramRoot, snapshots: store });
    await mkdir(join(root, "store-cache"), { recursive: true });
    for (const sub of ["kernel", "guest-helper", "initramfs"]) await cp(join(CACHE, sub), join(root, "store-cache", sub), { recursive: true });
    const use = async () => {
      const s = await spec();
      const sandbox = await storeBackend.launch(s);
      alive.push(sandbox);
      const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: TIMEOUT_MS, requestTimeoutMs: TIMEOUT_MS, label: s.sandboxId });
      assert.equal(await sh(client, "echo ok"), "ok\n");
      await sandbox.destroy();
    };
    await use();
    const [boot] = await store.list();
    assert.ok(boot !== undefined && boot.kind === "boot" && boot.memory && boot.key !== undefined);
    assert.deepEqual(Object.keys(boot.manifest.blobs).sort(), ["device", "ram", "work"]);
    assert.ok(!existsSync(join(root, "store-cache", "saved")), "nothing under the phase-1 saved VM directory");
    await use();
    assert.equal((await store.list()).length, 1, "the second launch used the same boot snapshot");

    // A byte changed in the materialized template: the store notices and rebuilds it from chunks.
    const hex = boot.digest.slice("sha256:".length);
    const template = join(store.root, "templates", hex, "ram");
    const ramChunk = boot.manifest.blobs.ram!.chunks.find((c) => c !== null)!;
    const flip = async (path: string, at: number) => {
      await chmod(path, 0o600);
      const file = await open(path, "r+");
      const byte = Buffer.alloc(1);
      await file.read(byte, 0, 1, at);
      await file.write(Buffer.from([byte[0]! ^ 0xff]), 0, 1, at);
      await file.close();
    };
    await flip(template, boot.manifest.blobs.ram!.chunks.indexOf(ramChunk) * 2 * 1024 * 1024);
    await use();

    // A byte changed in a stored chunk: the rebuild fails closed, nothing boots, the boot
    // snapshot is dropped; the next launch saves a new one.
    await flip(join(store.root, "chunks", "blake3", ramChunk.slice(0, 2), ramChunk), 100);
    await rm(join(store.root, "templates", hex), { recursive: true, force: true });
    const s = await spec();
    await assert.rejects(tracked(storeBackend.launch(s)), SnapshotMismatchError);
    assert.deepEqual(await readdir(ramRoot), []);
    assert.deepEqual(await readdir(s.stateDir), []);
    assert.deepEqual(await store.list(), []);
    await use();
    assert.equal((await store.list()).length, 1);
  });
});
