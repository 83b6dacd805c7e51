/**
 * SavedVmStore on a real directory tree (builds are scripted: no QEMU), and copySparse on real
 * sparse files.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readSync } from "node:fs";
import { chmod, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { InternalError, type Sha256Digest, SnapshotMismatchError } from "@mvm/protocol";
import { copySparse } from "./ram-file.js";
import { SAVED_VM_MANIFEST_VERSION, type SavedPartRecord, type SavedVmManifest, encodeSavedVmManifest } from "./snapshot-manifest.js";
import { SavedVmStore, type SavedPartsRecord, type SavedVm, type VmShape, shapeKey } from "./snapshots.js";

const MiB = 1024 * 1024;
const DAY_MS = 24 * 60 * 60 * 1000;

const SHAPE: VmShape = {
  kernelDigest: "a".repeat(64),
  initrdPath: "/var/cache/mvm/initrd.img",
  rootDiskKey: "root-1",
  agentDiskKey: "agent-1",
  memoryMiB: 512,
  cpus: 1,
  workMiB: 1024,
  accel: "tcg",
  tscKhz: 2_000_000,
  guestUid: 1000,
  qemu: "/usr/bin/qemu-system-x86_64:123:456",
  argsDigest: "b".repeat(64),
};

let root: string;
let stores = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-snapshots-test-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A store under a fresh directory of its own. */
function newStore(): SavedVmStore {
  return new SavedVmStore(join(root, `store${stores++}`));
}

/** What a build reports for a part holding `content`. */
function recordOf(content: string): SavedPartRecord {
  return { bytes: Buffer.byteLength(content), digest: `sha256:${createHash("sha256").update(content).digest("hex")}` as Sha256Digest };
}

const PARTS = { ram: "guest memory", device: "device state", work: "work disk" };

function recordsOf(parts: { ram: string; device: string; work: string }): SavedPartsRecord {
  return { ram: recordOf(parts.ram), device: recordOf(parts.device), work: recordOf(parts.work) };
}

/** A build that writes the three parts the store needs and reports them. */
async function goodBuild(dir: string, parts = PARTS): Promise<SavedPartsRecord> {
  for (const [name, content] of Object.entries(parts)) await writeFile(join(dir, name), content, { mode: 0o600 });
  return recordsOf(parts);
}

/** Writes a whole saved VM of `shape` into `dir` as another engine would, manifest included. */
async function writeSaved(dir: string, shape: VmShape, device: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const parts = { ...PARTS, device };
  await goodBuild(dir, parts);
  await writeFile(join(dir, "manifest.json"), encodeSavedVmManifest({ version: SAVED_VM_MANIFEST_VERSION, shapeKey: shapeKey(shape), parts: recordsOf(parts) }), { mode: 0o600 });
}

/** The directory of the saved VM of SHAPE in `store`. */
function pathsOf(store: SavedVmStore): Pick<SavedVm, "dir"> {
  return { dir: join(store.root, shapeKey(SHAPE)) };
}

/** `saved` without its state file's identity, for comparisons. */
function plain(saved: SavedVm | undefined): Omit<SavedVm, "stateId"> | undefined {
  if (saved === undefined) return undefined;
  const { stateId: _, ...rest } = saved;
  return rest;
}

/** Sets a path's times to `ageMs` ago. */
async function age(path: string, ageMs: number): Promise<void> {
  const then = new Date(Date.now() - ageMs);
  await utimes(path, then, then);
}

describe("shapeKey", () => {
  it("is a sha256 hex digest that ignores key order", () => {
    const reversed = Object.fromEntries(Object.entries(SHAPE).reverse()) as unknown as VmShape;
    assert.notDeepEqual(Object.keys(reversed), Object.keys(SHAPE));
    assert.match(shapeKey(SHAPE), /^[0-9a-f]{64}$/);
    assert.equal(shapeKey(reversed), shapeKey(SHAPE));
    assert.equal(shapeKey({ ...SHAPE }), shapeKey(SHAPE));
  });

  it("changes when any field changes", () => {
    const base = shapeKey(SHAPE);
    const seen = new Set([base]);
    for (const [field, value] of Object.entries(SHAPE)) {
      const changed = typeof value === "number" ? value + 1 : field === "accel" ? "kvm" : `${String(value)}x`;
      const key = shapeKey({ ...SHAPE, [field]: changed } as VmShape);
      assert.notEqual(key, base, `field ${field}`);
      seen.add(key);
    }
    const { tscKhz: _, ...withoutTsc } = SHAPE;
    seen.add(shapeKey(withoutTsc));
    assert.equal(seen.size, Object.keys(SHAPE).length + 2);
  });
});

describe("SavedVmStore.find", () => {
  it("finds a directory only when it holds ram, device, work and a manifest of its shape that gives their sizes", async () => {
    const store = newStore();
    const { dir } = pathsOf(store);
    assert.equal(await store.find(SHAPE), undefined);
    await mkdir(dir, { recursive: true });
    assert.equal(await store.find(SHAPE), undefined);
    await goodBuild(dir);
    // An older engine's saved VM: no manifest, so nothing says what its parts should be.
    assert.equal(await store.find(SHAPE), undefined);
    const manifest: SavedVmManifest = { version: SAVED_VM_MANIFEST_VERSION, shapeKey: shapeKey(SHAPE), parts: recordsOf(PARTS) };
    await writeFile(join(dir, "manifest.json"), encodeSavedVmManifest(manifest));
    assert.deepEqual(plain(await store.find(SHAPE)), { dir, manifest });
    assert.equal(await store.find({ ...SHAPE, cpus: 2 }), undefined);
    for (const part of ["ram", "device", "work"]) {
      await rename(join(dir, part), join(dir, `${part}.aside`));
      assert.equal(await store.find(SHAPE), undefined, `without ${part}`);
      await rename(join(dir, `${part}.aside`), join(dir, part));
    }
    assert.deepEqual(plain(await store.find(SHAPE)), { dir, manifest });
    // A manifest of another shape, another size, another version, or not a manifest at all.
    for (const text of [
      encodeSavedVmManifest({ ...manifest, shapeKey: shapeKey({ ...SHAPE, cpus: 2 }) }),
      encodeSavedVmManifest({ ...manifest, parts: { ...manifest.parts, ram: recordOf("ss") } }),
      encodeSavedVmManifest(manifest).replace('"version":2', '"version":1'),
      "{}",
      "x".repeat(5000),
    ]) {
      await writeFile(join(dir, "manifest.json"), text);
      assert.equal(await store.find(SHAPE), undefined, text);
    }
    await rm(join(dir, "manifest.json"));
    await symlink(join(root, "elsewhere.json"), join(dir, "manifest.json"));
    await writeFile(join(root, "elsewhere.json"), encodeSavedVmManifest(manifest));
    assert.equal(await store.find(SHAPE), undefined);
  });
});

describe("SavedVmStore.ensure", () => {
  it("builds once for concurrent callers of one shape and renames the result into place", async () => {
    const store = newStore();
    let builds = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let started!: () => void;
    const building = new Promise<void>((resolve) => (started = resolve));
    const buildDirs: string[] = [];
    const build = async (dir: string) => {
      builds++;
      buildDirs.push(dir);
      started();
      await gate;
      return goodBuild(dir);
    };
    const callers = Array.from({ length: 5 }, () => store.ensure(SHAPE, build));
    await building;
    // While the build runs, the only entry is its temporary directory.
    assert.deepEqual(await readdir(store.root), [buildDirs[0]!.slice(store.root.length + 1)]);
    assert.match(buildDirs[0]!, /\/\.build-[0-9a-f]+$/);
    release();
    const results = await Promise.all(callers);
    assert.equal(builds, 1);
    const { dir } = pathsOf(store);
    const manifest: SavedVmManifest = { version: SAVED_VM_MANIFEST_VERSION, shapeKey: shapeKey(SHAPE), parts: recordsOf(PARTS) };
    for (const saved of results) assert.deepEqual(plain(saved), { ...pathsOf(store), manifest });
    assert.deepEqual(await readdir(store.root), [shapeKey(SHAPE)]);
    assert.deepEqual((await readdir(dir)).sort(), ["device", "manifest.json", "ram", "shape.json", "work"]);
    assert.deepEqual(JSON.parse(await readFile(join(dir, "shape.json"), "utf8")), SHAPE);
    assert.deepEqual(JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")), manifest);
    assert.equal((await stat(join(dir, "shape.json"))).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, "manifest.json"))).mode & 0o777, 0o600);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.equal(await readFile(join(dir, "device"), "utf8"), PARTS.device);
    for (const part of ["ram", "device", "work"]) assert.equal((await stat(join(dir, part))).mode & 0o777, 0o600);

    // Stored now: later callers get it without building.
    assert.deepEqual(await store.ensure(SHAPE, build), results[0]);
    assert.equal(builds, 1);
  });

  it("builds each shape separately", async () => {
    const store = newStore();
    let builds = 0;
    const build = async (dir: string) => {
      builds++;
      return goodBuild(dir);
    };
    const [one, two] = await Promise.all([store.ensure(SHAPE, build), store.ensure({ ...SHAPE, memoryMiB: 256 }, build)]);
    assert.equal(builds, 2);
    assert.notEqual(one.dir, two.dir);
    assert.deepEqual((await readdir(store.root)).sort(), [shapeKey(SHAPE), shapeKey({ ...SHAPE, memoryMiB: 256 })].sort());
  });

  it("rejects every caller of a failing build, leaves nothing behind, and retries on the next call", async () => {
    const store = newStore();
    const failure = new Error("build failed");
    let builds = 0;
    const failing = async (dir: string) => {
      builds++;
      await writeFile(join(dir, "device"), "half a stream");
      throw failure;
    };
    const callers = Array.from({ length: 3 }, () => store.ensure(SHAPE, failing));
    for (const caller of callers) await assert.rejects(caller, (err) => err === failure);
    assert.equal(builds, 1);
    assert.deepEqual(await readdir(store.root), []);
    assert.equal(await store.find(SHAPE), undefined);

    const saved = await store.ensure(SHAPE, async (dir) => {
      builds++;
      return goodBuild(dir);
    });
    assert.equal(builds, 2);
    assert.equal(saved.dir, join(store.root, shapeKey(SHAPE)));
    assert.deepEqual(await readdir(store.root), [shapeKey(SHAPE)]);
  });

  it("keeps the saved VM another engine renamed into place first", async () => {
    const store = newStore();
    const dir = join(store.root, shapeKey(SHAPE));
    const saved = await store.ensure(SHAPE, async (tmp) => {
      const record = await goodBuild(tmp);
      // Another engine finishes the same shape while this build runs.
      await writeSaved(dir, SHAPE, "theirs");
      return record;
    });
    assert.equal(saved.dir, dir);
    assert.equal(await readFile(join(saved.dir, "device"), "utf8"), "theirs");
    assert.deepEqual(saved.manifest.parts.device, recordOf("theirs"));
    assert.deepEqual(await readdir(store.root), [shapeKey(SHAPE)]);
  });

  it("replaces a saved VM without a manifest (an older engine's): it is not trusted, and is saved again", async () => {
    const store = newStore();
    const { dir } = pathsOf(store);
    await writeSaved(dir, SHAPE, "old engine");
    await rm(join(dir, "manifest.json"));
    let builds = 0;
    const saved = await store.ensure(SHAPE, async (tmp) => {
      builds++;
      return goodBuild(tmp);
    });
    assert.equal(builds, 1);
    assert.equal(saved.dir, dir);
    assert.equal(await readFile(join(saved.dir, "device"), "utf8"), PARTS.device);
    assert.deepEqual(saved.manifest.parts.device, recordOf(PARTS.device));
    assert.deepEqual(await readdir(store.root), [shapeKey(SHAPE)]);
  });

  it("refuses a build whose part does not have the size it reported, and leaves nothing behind", async () => {
    const store = newStore();
    await assert.rejects(
      store.ensure(SHAPE, async (tmp) => ({ ...(await goodBuild(tmp)), ram: recordOf("x") })),
      InternalError,
    );
    assert.deepEqual(await readdir(store.root), []);
  });

  it("replaces a damaged saved VM directory that is in the way", async () => {
    const store = newStore();
    const dir = join(store.root, shapeKey(SHAPE));
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "device"), "left over");
    assert.equal(await store.find(SHAPE), undefined);
    const saved = await store.ensure(SHAPE, (d) => goodBuild(d));
    assert.equal(saved.dir, dir);
    assert.deepEqual(await store.find(SHAPE), saved);
    assert.equal(await readFile(join(saved.dir, "device"), "utf8"), PARTS.device);
    assert.deepEqual(await readdir(store.root), [shapeKey(SHAPE)]);
  });
});

describe("SavedVmStore.openVerified and quarantine", () => {
  const LONG = { ram: "guest memory pages of some length", device: "a device state of some length", work: "a work disk of some length" };

  /** A store holding a saved VM of SHAPE whose parts are LONG. */
  async function storeWithSaved(): Promise<{ store: SavedVmStore; saved: SavedVm }> {
    const store = newStore();
    const saved = await store.ensure(SHAPE, (dir) => goodBuild(dir, LONG));
    return { store, saved };
  }

  function mismatch(pattern: RegExp) {
    return (err: unknown) => {
      assert.ok(err instanceof SnapshotMismatchError, String(err));
      assert.equal(err.code, "SNAPSHOT_MISMATCH");
      assert.match(err.message, pattern);
      return true;
    };
  }

  it("returns the parts opened read-only, checked, the device state's offset at the start (what QEMU reads next)", async () => {
    const { store, saved } = await storeWithSaved();
    const parts = await store.openVerified(saved);
    try {
      const buffer = Buffer.alloc(64);
      // A read at the descriptor's own offset, as QEMU's is: it starts at byte 0.
      const n = readSync(parts.device.fd, buffer, 0, buffer.length, null);
      assert.equal(buffer.subarray(0, n).toString(), LONG.device);
      for (const handle of [parts.ram, parts.device, parts.work]) await assert.rejects(handle.write("x"), { code: "EBADF" });
    } finally {
      await parts.close();
    }
  });

  it("refuses a part with any one byte flipped, or cut, or extended: SnapshotMismatchError", async () => {
    for (const part of ["ram", "device", "work"] as const) {
      for (let i = 0; i < LONG[part].length; i += 9) {
        const { store, saved } = await storeWithSaved();
        const flipped = Buffer.from(LONG[part]);
        flipped[i] = flipped[i]! ^ 0x01;
        await writeFile(join(saved.dir, part), flipped);
        await assert.rejects(store.openVerified(saved), mismatch(new RegExp(`its ${part} file does not match the digest recorded`)));
      }
      for (const changed of [LONG[part].slice(0, -1), `${LONG[part]}x`, ""]) {
        const { store, saved } = await storeWithSaved();
        await writeFile(join(saved.dir, part), changed);
        await assert.rejects(store.openVerified(saved), mismatch(/does not match the digest recorded/));
      }
    }
  });

  it("checks ram and work once, then that they are the same unchanged files; a change is caught", async () => {
    const { store, saved } = await storeWithSaved();
    await (await store.openVerified(saved)).close();
    // Modified in place after the first check: the write changes the file's ctime.
    const ram = join(saved.dir, "ram");
    const flipped = Buffer.from(LONG.ram);
    flipped[0] = flipped[0]! ^ 0x01;
    await new Promise((r) => setTimeout(r, 20));
    const file = await open(ram, "r+");
    await file.write(flipped, 0, 1, 0);
    await file.close();
    await assert.rejects(store.openVerified(saved), mismatch(/its ram file does not match/));
    // Put back: checked again in full, and accepted.
    await writeFile(ram, LONG.ram);
    await (await store.openVerified(saved)).close();
    // Replaced by another file with the same bytes: a new identity, checked again, accepted.
    await writeFile(`${ram}.new`, LONG.ram, { mode: 0o600 });
    await rename(`${ram}.new`, ram);
    await (await store.openVerified(saved)).close();
  });

  it("refuses a part that others may write, that is a symlink, or that is gone", async () => {
    for (const part of ["ram", "device", "work"]) {
      const groupWritable = await storeWithSaved();
      await chmod(join(groupWritable.saved.dir, part), 0o620);
      await assert.rejects(groupWritable.store.openVerified(groupWritable.saved), mismatch(/engine alone can write/));

      const linked = await storeWithSaved();
      const path = join(linked.saved.dir, part);
      await rename(path, `${path}.real`);
      await symlink(`${path}.real`, path);
      await assert.rejects(linked.store.openVerified(linked.saved), mismatch(new RegExp(`cannot open its ${part} file`)));

      const gone = await storeWithSaved();
      await rm(join(gone.saved.dir, part));
      await assert.rejects(gone.store.openVerified(gone.saved), mismatch(new RegExp(`cannot open its ${part} file`)));
    }
  });

  it("stops reading when the signal fires", async () => {
    const { store, saved } = await storeWithSaved();
    await assert.rejects(store.openVerified(saved, AbortSignal.abort()), { code: "ABORTED" });
  });

  it("quarantine moves the saved VM aside, so the next ensure saves a new one", async () => {
    const { store, saved } = await storeWithSaved();
    await writeFile(join(saved.dir, "device"), "tampered");
    await store.quarantine(saved);
    const names = await readdir(store.root);
    assert.equal(names.length, 1);
    assert.match(names[0]!, /^\.quarantine-[0-9a-f]+$/);
    assert.equal(await readFile(join(store.root, names[0]!, "device"), "utf8"), "tampered");
    assert.equal(await store.find(SHAPE), undefined);
    let builds = 0;
    const fresh = await store.ensure(SHAPE, async (dir) => {
      builds++;
      return goodBuild(dir);
    });
    assert.equal(builds, 1);
    await (await store.openVerified(fresh)).close();
    // A second quarantine of the old one (another launch saw it fail too) leaves the new one alone.
    await store.quarantine(saved);
    assert.deepEqual(await store.find(SHAPE), fresh);
    assert.equal((await readdir(store.root)).length, 2);
  });
});

describe("SavedVmStore.touch and sweep", () => {
  it("removes stale builds and unused saved VMs and keeps fresh and touched ones", async () => {
    const store = newStore();
    const hex = (c: string) => c.repeat(64);
    const names = {
      oldSaved: hex("1"),
      freshSaved: hex("2"),
      touchedSaved: hex("3"),
      oldBuild: ".build-0000aa",
      freshBuild: ".build-0000bb",
      oldQuarantine: ".quarantine-0000cc",
      freshQuarantine: ".quarantine-0000dd",
      otherOld: "notes",
    };
    for (const name of Object.values(names)) {
      await mkdir(join(store.root, name), { recursive: true });
      await writeFile(join(store.root, name, "state"), "s");
    }
    await age(join(store.root, names.oldSaved), 8 * DAY_MS);
    await age(join(store.root, names.touchedSaved), 8 * DAY_MS);
    await age(join(store.root, names.oldBuild), 2 * 60 * 60 * 1000);
    await age(join(store.root, names.oldQuarantine), 2 * 60 * 60 * 1000);
    await age(join(store.root, names.otherOld), 30 * DAY_MS);
    const touched = join(store.root, names.touchedSaved);
    await store.touch({ dir: touched });

    const removed = await store.sweep(60 * 60 * 1000, 7 * DAY_MS);
    assert.deepEqual(removed.sort(), [names.oldBuild, names.oldQuarantine, names.oldSaved].map((n) => join(store.root, n)).sort());
    assert.deepEqual((await readdir(store.root)).sort(), [names.freshBuild, names.freshQuarantine, names.freshSaved, names.otherOld, names.touchedSaved].sort());
  });

  it("sweeps a store whose root does not exist yet", async () => {
    assert.deepEqual(await newStore().sweep(0, 0), []);
  });

  it("touch ignores a saved VM that is gone", async () => {
    const store = newStore();
    const dir = join(store.root, "gone");
    await store.touch({ dir });
  });
});

describe("copySparse", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(root, "disks-"));
  });

  async function copyFrom(template: string, target: string): Promise<void> {
    const handle = await open(template, "r");
    try {
      await copySparse(handle, target);
    } finally {
      await handle.close();
    }
  }

  /** A 64 MiB file with three 4 KiB blocks of data; `sparse` leaves the rest as holes. */
  async function makeDisk(path: string, sparse: boolean): Promise<void> {
    const file = await open(path, "w");
    try {
      if (!sparse) await file.write(Buffer.alloc(64 * MiB));
      for (const [i, offset] of [0, 10 * MiB, 63 * MiB].entries()) await file.write(Buffer.alloc(4096, i + 1), 0, 4096, offset);
      await file.truncate(64 * MiB);
    } finally {
      await file.close();
    }
  }

  it("keeps a sparse disk sparse and its contents equal", async () => {
    const template = join(dir, "sparse.img");
    const target = join(dir, "sparse-copy.img");
    await makeDisk(template, true);
    await copyFrom(template, target);
    const [src, copy] = await Promise.all([stat(template), stat(target)]);
    assert.equal(copy.size, 64 * MiB);
    assert.ok(src.blocks * 512 < 1 * MiB, `template uses ${src.blocks} blocks`);
    assert.ok(copy.blocks <= src.blocks, `copy uses ${copy.blocks} blocks, template ${src.blocks}`);
    assert.ok((await readFile(template)).equals(await readFile(target)));
  });

  it("makes holes of a template's zero blocks", async () => {
    const template = join(dir, "dense.img");
    const target = join(dir, "dense-copy.img");
    await makeDisk(template, false);
    await copyFrom(template, target);
    const [src, copy] = await Promise.all([stat(template), stat(target)]);
    assert.ok(src.blocks * 512 >= 64 * MiB, `template uses ${src.blocks} blocks`);
    assert.ok(copy.blocks * 512 < 1 * MiB, `copy uses ${copy.blocks} blocks`);
    assert.ok((await readFile(template)).equals(await readFile(target)));
  });

  it("copies the file its descriptor is open on, whatever its path names now", async () => {
    const template = join(dir, "moved.img");
    const target = join(dir, "moved-copy.img");
    await writeFile(template, "the original");
    const handle = await open(template, "r");
    try {
      await rm(template);
      await writeFile(template, "a replacement");
      await copySparse(handle, target);
    } finally {
      await handle.close();
    }
    assert.equal(await readFile(target, "utf8"), "the original");
  });

  it("throws InternalError when the target's directory is missing", async () => {
    const template = join(dir, "small.img");
    await writeFile(template, "x");
    const target = join(dir, "no-such-dir", "copy.img");
    await assert.rejects(copyFrom(template, target), (err) => {
      assert.ok(err instanceof InternalError, `got ${String(err)}`);
      assert.ok(err.message.includes(target));
      return true;
    });
    await assert.rejects(stat(target), { code: "ENOENT" });
  });
});
