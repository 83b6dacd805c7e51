/**
 * The saved VM every VM sandbox restores is checked against the digest the engine recorded when
 * it saved it, before QEMU reads it: one flipped byte in its device state fails the create with
 * SnapshotMismatchError before anything boots, and the next create saves a fresh one.
 *
 * The engine here has a VM cache of its own (the guest kernel copied from the shared cache, the
 * rest built here), so tampering never touches what other tests use, and their rebuilds never
 * reach this test's VMs. It builds its disks and boots and saves twice under TCG: minutes.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, cp, mkdtemp, open, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SnapshotMismatchError, type EngineApi } from "@mvm/protocol";
import { openEngine } from "../open.js";
import { readProcStat } from "../_internal/proc.js";
import { DEFAULT_IMAGE } from "../engine.js";
import { run, sharedImagesDir, sharedVmCacheDir, unavailableReason } from "./harness.js";

const skip = unavailableReason() ?? (existsSync("/usr/bin/qemu-system-x86_64") ? undefined : "needs qemu-system-x86_64 (scripts/setup.sh installs it)");

/** Every live descendant of this process (the engine runs in it: QEMU's jail would be one). */
async function descendants(): Promise<{ pid: number; comm: string }[]> {
  const parent = new Map<number, number>();
  for (const name of await readdir("/proc")) {
    if (!/^[0-9]+$/.test(name)) continue;
    const st = await readProcStat(Number(name));
    if (st !== undefined && st.state !== "Z") parent.set(st.pid, st.ppid);
  }
  const out: { pid: number; comm: string }[] = [];
  for (const pid of parent.keys()) {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) {
      if (p === process.pid) {
        out.push({ pid, comm: (await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "")).trim() });
        break;
      }
    }
  }
  return out;
}

/** Names under `dir`, recursively, relative to it. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    out.push(entry.name);
    if (entry.isDirectory()) out.push(...(await tree(join(dir, entry.name))).map((n) => `${entry.name}/${n}`));
  }
  return out.sort();
}

async function sha256File(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

describe("saved VM integrity (vm tier)", { skip, timeout: 1_200_000 }, () => {
  let cacheDir: string;
  let stateDir: string;
  let engine: EngineApi & { close(): Promise<void> };
  const savedRoot = () => join(cacheDir, "saved");
  const savedKeys = async () => (await readdir(savedRoot()).catch(() => [] as string[])).filter((n) => /^[0-9a-f]{64}$/.test(n));

  before(async () => {
    cacheDir = await mkdtemp(join(tmpdir(), "mvm-savedvm-cache-"));
    // A saving QEMU runs as its own uid and must reach its socket directory below saved/.
    await chmod(cacheDir, 0o711);
    // The guest kernel is copied (fetching it needs the Debian mirror); the rest is built here.
    await cp(join(sharedVmCacheDir(), "kernel"), join(cacheDir, "kernel"), { recursive: true, preserveTimestamps: true });
    stateDir = await mkdtemp(join(tmpdir(), "mvm-savedvm-state-"));
    engine = await openEngine({ stateDir, imagesDir: sharedImagesDir(), vmCacheDir: cacheDir, backends: ["vm"] });
  });
  after(async () => {
    await engine?.close();
    if (stateDir !== undefined) await rm(stateDir, { recursive: true, force: true });
    if (cacheDir !== undefined) await rm(cacheDir, { recursive: true, force: true });
  });

  /** Creates a sandbox, checks it runs a command, kills it. */
  async function createAndRun(): Promise<void> {
    const info = await engine.createSandbox({ image: DEFAULT_IMAGE });
    try {
      const r = await run(engine, info.id, ["/bin/echo", "ok"]);
      assert.equal(r.stdout, "ok\n", r.stderr);
    } finally {
      await engine.killSandbox(info.id);
    }
  }

  /** The one saved VM's manifest, checked against its part files. */
  async function checkManifest(): Promise<string> {
    const [key, ...others] = await savedKeys();
    assert.ok(key !== undefined && others.length === 0, `saved VMs: ${await tree(savedRoot())}`);
    const dir = join(savedRoot(), key);
    const manifestPath = join(dir, "manifest.json");
    assert.equal((await stat(manifestPath)).mode & 0o777, 0o600);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    const manifest = JSON.parse(await readFile(manifestPath, "utf8")) as unknown;
    const part = async (name: string) => ({ bytes: (await stat(join(dir, name))).size, digest: `sha256:${await sha256File(join(dir, name))}` });
    assert.deepEqual(manifest, { version: 2, shapeKey: key, parts: { ram: await part("ram"), device: await part("device"), work: await part("work") } });
    return key;
  }

  test("one flipped byte in the saved VM's device state is SnapshotMismatchError before anything boots, and the next create saves a fresh one", async () => {
    // The first create boots and saves; the second restores what was saved, verified.
    await createAndRun();
    await createAndRun();
    const [key, ...others] = await savedKeys();
    assert.ok(key !== undefined && others.length === 0, `saved VMs: ${await tree(savedRoot())}`);

    const statePath = join(savedRoot(), key, "device");
    const fh = await open(statePath, "r+");
    try {
      const offset = Math.floor((await fh.stat()).size / 2);
      const byte = Buffer.alloc(1);
      await fh.read(byte, 0, 1, offset);
      byte[0] = byte[0]! ^ 0x01;
      await fh.write(byte, 0, 1, offset);
    } finally {
      await fh.close();
    }

    assert.deepEqual(await descendants(), []);
    await assert.rejects(engine.createSandbox({ image: DEFAULT_IMAGE }), (err: unknown) => {
      assert.ok(err instanceof SnapshotMismatchError, String(err));
      assert.equal(err.code, "SNAPSHOT_MISMATCH");
      assert.match(err.message, /digest/);
      return true;
    });
    // Nothing booted: no QEMU (or its jail) running, no work disk, no sandbox directory left.
    assert.deepEqual(await descendants(), []);
    assert.deepEqual(await tree(join(stateDir, "sandboxes")), []);
    assert.deepEqual((await tree(stateDir)).filter((n) => n.endsWith(".img")), []);
    // The bad saved VM is out of the way (set aside for inspection), no build is left half done.
    const saved = await readdir(savedRoot());
    assert.deepEqual(await savedKeys(), []);
    assert.ok(saved.every((n) => n.startsWith(".quarantine-")), `saved/ holds ${saved.join(", ")}`);
    assert.equal(saved.length, 1);

    // The next create boots and saves afresh (recording the new state's digest), then restores.
    await createAndRun();
    assert.equal(await checkManifest(), key);
    await createAndRun();
  });
});
