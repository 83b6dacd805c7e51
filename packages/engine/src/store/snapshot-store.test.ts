import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { chmod, lstat, mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { NotFoundError, SnapshotInfo, SnapshotMismatchError, canonicalJson } from "@mvm/protocol";
import { CHUNK_SIZE, type ChunkId } from "./chunks.js";
import { SnapshotStore, type StoredSnapshot } from "./snapshot-store.js";
import type { SnapshotShape } from "./manifest.js";

const keys = generateKeyPairSync("ed25519");
const shape: SnapshotShape = { tier: "vm-emulated", imageDigest: `sha256:${"1".repeat(64)}`, cpus: 1, memoryMiB: 64, workMiB: 16 };

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-snapstore-"));
});
after(() => rm(dir, { recursive: true, force: true }));

let n = 0;
async function freshStore(): Promise<{ store: SnapshotStore; root: string }> {
  const root = join(dir, `store-${n++}`);
  return { store: await SnapshotStore.open(root, keys), root };
}

/** Part files: ram = data, zeros, data, short tail; device = a few bytes. */
async function sampleParts(seed = randomBytes(CHUNK_SIZE)): Promise<{ ram: string; device: string; ramBytes: Buffer; deviceBytes: Buffer }> {
  const partsDir = await mkdtemp(join(dir, "parts-"));
  const ramBytes = Buffer.concat([seed, Buffer.alloc(CHUNK_SIZE), randomBytes(CHUNK_SIZE), randomBytes(1000)]);
  const deviceBytes = randomBytes(777);
  await writeFile(join(partsDir, "ram"), ramBytes);
  await writeFile(join(partsDir, "device"), deviceBytes);
  return { ram: join(partsDir, "ram"), device: join(partsDir, "device"), ramBytes, deviceBytes };
}

async function userSnapshot(store: SnapshotStore, parts: { ram: string; device: string }, ttlSeconds?: number): Promise<StoredSnapshot> {
  return store.create({
    parts: { ram: parts.ram, device: parts.device },
    shape,
    kind: "user",
    source: "sbx_test",
    retention: ttlSeconds === undefined ? { manual: true } : { ttlSeconds },
    memory: true,
    labels: { purpose: "test" },
  });
}

async function chunkFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const base = join(root, "chunks", "blake3");
  for (const p of await readdir(base)) for (const c of await readdir(join(base, p))) out.push(c);
  return out.sort();
}

async function flipByte(path: string, offset: number): Promise<void> {
  await chmod(path, 0o644);
  const fh = await open(path, "r+");
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = b[0]! ^ 0x01;
  await fh.write(b, 0, 1, offset);
  await fh.close();
}

describe("snapshot store", () => {
  it("has the layout and record fields docs/STORAGE.md shows", async () => {
    const doc = await readFile(new URL("../../../../docs/STORAGE.md", import.meta.url), "utf8");
    const section = doc.slice(doc.indexOf("## Snapshot registry"));
    const { store, root } = await freshStore();
    const snap = await userSnapshot(store, await sampleParts());
    const m = await store.materialize(snap);
    // Every top-level entry of the registry is in the diagram, and the template's files.
    for (const name of await readdir(root)) assert.match(section, new RegExp(`── ${name}/`), `${name}/ in the diagram`);
    for (const name of await readdir(join(root, "templates", snap.digest.slice(7)))) assert.ok(section.includes(name), `${name} in the diagram`);
    // The record's wire form: the outer keys and every field of the record, as shown.
    const wire = JSON.parse((await readFile(join(root, "records", snap.id))).toString()) as Record<string, Record<string, unknown>>;
    const shown = section.slice(section.indexOf('{ "record":'), section.indexOf("signature.value = Ed25519(host key, \"mvm.snapshot-record.v1"));
    for (const key of Object.keys(wire)) assert.ok(shown.includes(`"${key}":`), `outer key ${key}`);
    for (const key of [...Object.keys(wire.record!), "key"]) assert.ok(shown.includes(`"${key}"`), `record field ${key}`);
    const shownFields = [...shown.slice(0, shown.indexOf('"manifest":')).matchAll(/"([a-zA-Z]+)"(?=\??:)/g)].map((x) => x[1]);
    assert.deepEqual(shownFields.filter((f) => f !== "record" && f !== "manual").sort(), [...Object.keys(wire.record!), "key"].sort());
    await m.release();
  });

  it("creates, gets (by id and digest), lists and materializes a snapshot as sparse 0400 templates", async () => {
    const { store, root } = await freshStore();
    const parts = await sampleParts();
    const snap = await userSnapshot(store, parts);
    assert.match(snap.id, /^snap_[a-z2-7]{20}$/);
    assert.equal((await store.get(snap.id)).digest, snap.digest);
    assert.equal((await store.get(snap.digest)).id, snap.id);
    assert.deepEqual((await store.list()).map((s) => s.id), [snap.id]);
    assert.equal((await stat(root)).mode & 0o777, 0o700);
    assert.equal((await stat(join(root, "records", snap.id))).mode & 0o777, 0o600);

    const m = await store.materialize(snap);
    assert.ok((await readFile(m.parts.ram!)).equals(parts.ramBytes));
    assert.ok((await readFile(m.parts.device!)).equals(parts.deviceBytes));
    const st = await stat(m.parts.ram!);
    assert.equal(st.mode & 0o777, 0o400);
    assert.ok(st.blocks * 512 < st.size, "the zero chunk is a hole");
    assert.equal((await stat(join(root, "templates", snap.digest.slice(7)))).mode & 0o777, 0o700);
    // A later call reuses the same template (same inode).
    const again = await store.materialize(snap);
    assert.equal((await stat(again.parts.ram!)).ino, st.ino);
    await m.release();
    await again.release();
    await again.release();

    const info = SnapshotInfo.parse(store.info(snap));
    assert.deepEqual(info.sizes.ram, { bytes: parts.ramBytes.length, storedBytes: 2 * CHUNK_SIZE + 1000, chunks: 4, zeroChunks: 1 });
    assert.equal(info.tier, "vm-emulated");
    assert.deepEqual(info.retention, { manual: true });
    assert.equal(info.expiresAt, undefined);
    assert.deepEqual(info.labels, { purpose: "test" });
  });

  it("shares chunks between snapshots of identical parts and reports dedup", async () => {
    const { store, root } = await freshStore();
    const parts = await sampleParts();
    await userSnapshot(store, parts);
    const before = await chunkFiles(root);
    await userSnapshot(store, parts);
    assert.deepEqual(await chunkFiles(root), before);
    const usage = await store.usage();
    assert.equal(usage.snapshots, 2);
    assert.equal(usage.snapshotStoredBytes, 2 * usage.uniqueStoredBytes);
    assert.equal(usage.dedupRatio, 2);
  });

  it("concurrent materialize calls of one digest share one build", async () => {
    const { store } = await freshStore();
    const snap = await userSnapshot(store, await sampleParts());
    const all = await Promise.all([1, 2, 3, 4].map(() => store.materialize(snap)));
    const inodes = new Set(await Promise.all(all.map(async (m) => (await stat(m.parts.ram!)).ino)));
    assert.equal(inodes.size, 1);
    for (const m of all) await m.release();
  });

  it("rebuilds a template whose file was changed or replaced, from verified chunks", async () => {
    const { store } = await freshStore();
    const parts = await sampleParts();
    const snap = await userSnapshot(store, parts);
    const first = await store.materialize(snap);
    await first.release();
    // Changed in place, mtime put back: ctime still tells.
    const ramPath = first.parts.ram!;
    const { mtime, atime } = await stat(ramPath);
    await flipByte(ramPath, 10);
    await chmod(ramPath, 0o400);
    const { utimes } = await import("node:fs/promises");
    await utimes(ramPath, atime, mtime);
    const second = await store.materialize(snap);
    assert.ok((await readFile(second.parts.ram!)).equals(parts.ramBytes));
    await second.release();
    // Replaced by another file.
    await unlink(second.parts.device!);
    await writeFile(second.parts.device!, parts.deviceBytes, { mode: 0o400 });
    const third = await store.materialize(snap);
    assert.ok((await readFile(third.parts.device!)).equals(parts.deviceBytes));
    assert.notEqual((await stat(third.parts.device!)).ino, undefined);
    await third.release();
    // An extra file in the template.
    await writeFile(join(third.parts.ram!, "..", "extra"), "x");
    const fourth = await store.materialize(snap);
    assert.equal(existsSync(join(fourth.parts.ram!, "..", "extra")), false);
    await fourth.release();
  });

  it("a new store instance (a restarted engine) accepts the template by its signed identity", async () => {
    const { store, root } = await freshStore();
    const snap = await userSnapshot(store, await sampleParts());
    const m = await store.materialize(snap);
    const ino = (await stat(m.parts.ram!)).ino;
    await m.release();
    const reopened = await SnapshotStore.open(root, keys);
    const m2 = await reopened.materialize(await reopened.get(snap.id));
    assert.equal((await stat(m2.parts.ram!)).ino, ino);
    await m2.release();
  });

  describe("fails closed", () => {
    it("flipped byte in a chunk: SnapshotMismatchError at materialize, nothing half-made", async () => {
      const { store, root } = await freshStore();
      const snap = await userSnapshot(store, await sampleParts());
      await flipByte(store.chunks.pathOf(snap.manifest.blobs.ram!.chunks[2] as ChunkId), 5000);
      await assert.rejects(store.materialize(snap), SnapshotMismatchError);
      assert.deepEqual(await readdir(join(root, "templates")), []);
      assert.deepEqual(await readdir(join(root, "tmp")), []);
      assert.deepEqual(await readdir(join(root, "holds")), []);
      assert.deepEqual(await readdir(join(root, "busy")), []);
    });

    it("missing chunk, chunk replaced by a symlink or a directory", async () => {
      const { store, root } = await freshStore();
      const snap = await userSnapshot(store, await sampleParts());
      const path = store.chunks.pathOf(snap.manifest.blobs.ram!.chunks[0] as ChunkId);
      const saved = await readFile(path);
      await unlink(path);
      await assert.rejects(store.materialize(snap), (e: unknown) => e instanceof SnapshotMismatchError && /missing/.test(e.message));
      await writeFile(join(root, "elsewhere"), saved);
      await symlink(join(root, "elsewhere"), path);
      await assert.rejects(store.materialize(snap), (e: unknown) => e instanceof SnapshotMismatchError && /symlink/.test(e.message));
      await unlink(path);
      await mkdir(path);
      await assert.rejects(store.materialize(snap), (e: unknown) => e instanceof SnapshotMismatchError && /not a regular file/.test(e.message));
      assert.deepEqual(await readdir(join(root, "templates")), []);
      assert.deepEqual(await readdir(join(root, "tmp")), []);
    });

    it("flipped byte anywhere in a record (and its manifest): SnapshotMismatchError on get, skipped and reported by list", async () => {
      const { store, root } = await freshStore();
      const snap = await userSnapshot(store, await sampleParts());
      const path = join(root, "records", snap.id);
      const good = await readFile(path);
      await fc.assert(
        fc.asyncProperty(fc.nat({ max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), async (index, delta) => {
          const bad = Buffer.from(good);
          bad[index] = (bad[index]! + delta) & 0xff;
          await writeFile(path, bad);
          await assert.rejects(store.get(snap.id), SnapshotMismatchError);
        }),
        { numRuns: 150 },
      );
      // A byte inside the embedded manifest's chunk list, specifically.
      const text = good.toString();
      const at = text.indexOf(snap.manifest.blobs.ram!.chunks[0]!);
      const bad = Buffer.from(good);
      bad[at] = bad[at] === 0x61 ? 0x62 : 0x61;
      await writeFile(path, bad);
      await assert.rejects(store.get(snap.id), SnapshotMismatchError);
      await assert.rejects(store.get(snap.digest), SnapshotMismatchError);
      const invalid: string[] = [];
      assert.deepEqual(await store.list({ onInvalid: (name) => invalid.push(name) }), []);
      assert.deepEqual(invalid, [snap.id]);
      // While a record is damaged no chunk is removed (which ones it needs is unknown); delete by id removes it.
      const chunksBefore = await chunkFiles(root);
      await store.chunks.put(Buffer.from("an orphan chunk"));
      const swept = await store.sweep();
      assert.equal(swept.invalid.length, 1);
      assert.equal(swept.chunksDeferred, true);
      assert.equal((await chunkFiles(root)).length, chunksBefore.length + 1);
      await store.delete(snap.id);
      assert.deepEqual(await chunkFiles(root), []);
    });

    it("unknown manifest or record version", async () => {
      const { store, root } = await freshStore();
      const snap = await userSnapshot(store, await sampleParts());
      const path = join(root, "records", snap.id);
      const wire = JSON.parse((await readFile(path)).toString());
      const m2 = structuredClone(wire);
      m2.manifest.manifest.version = 2;
      await writeFile(path, canonicalJson(m2));
      await assert.rejects(store.get(snap.id), /manifest version 2 is not supported/);
      const r2 = structuredClone(wire);
      r2.record.version = 2;
      await writeFile(path, canonicalJson(r2));
      await assert.rejects(store.get(snap.id), /record version 2 is not supported/);
    });

    it("a record signed by another key, a record renamed to another id, a symlinked record", async () => {
      const { store, root } = await freshStore();
      const snap = await userSnapshot(store, await sampleParts());
      const other = await SnapshotStore.open(root, generateKeyPairSync("ed25519"));
      await assert.rejects(other.get(snap.id), /signed by key/);
      const path = join(root, "records", snap.id);
      const elsewhere = join(root, "records", "snap_aaaaaaaaaaaaaaaaaaaa");
      await writeFile(elsewhere, await readFile(path));
      await assert.rejects(store.get("snap_aaaaaaaaaaaaaaaaaaaa"), /is the record of/);
      await unlink(elsewhere);
      await symlink(path, elsewhere);
      await assert.rejects(store.get("snap_aaaaaaaaaaaaaaaaaaaa"), SnapshotMismatchError);
      await assert.rejects(store.get("snap_bbbbbbbbbbbbbbbbbbbb"), NotFoundError);
      await assert.rejects(store.get(`sha256:${"f".repeat(64)}`), NotFoundError);
    });
  });

  describe("retention and removal", () => {
    it("delete removes the record, then chunks no other snapshot names, never shared ones, and an unheld template", async () => {
      const { store, root } = await freshStore();
      const seed = randomBytes(CHUNK_SIZE);
      const a = await userSnapshot(store, await sampleParts(seed));
      const b = await userSnapshot(store, await sampleParts(seed));
      const m = await store.materialize(a);
      await m.release();
      await store.delete(a.id);
      await assert.rejects(store.get(a.id), NotFoundError);
      await assert.rejects(store.delete(a.id), NotFoundError);
      const want = new Set(Object.values(b.manifest.blobs).flatMap((blob) => blob!.chunks.filter((c) => c !== null)));
      assert.deepEqual(await chunkFiles(root), [...want].sort());
      assert.deepEqual(await readdir(join(root, "templates")), []);
      const mb = await store.materialize(b);
      await mb.release();
    });

    it("sweep removes TTL-expired and unused boot snapshots (returning them), keeps the rest and held templates", async () => {
      const { store, root } = await freshStore();
      const ttl = await userSnapshot(store, await sampleParts(), 3600);
      const manual = await userSnapshot(store, await sampleParts());
      const parts = await sampleParts();
      const boot = await store.create({ parts: { ram: parts.ram }, shape, kind: "boot", source: "engine", retention: { unusedSeconds: 7 * 24 * 3600 }, memory: true, key: "shape-1" });
      assert.equal((await store.findByKey("shape-1"))?.id, boot.id);
      assert.equal(await store.findByKey("shape-2"), undefined);
      assert.throws(() => store.info(boot), /boot/);
      const held = await store.materialize(ttl);

      const t0 = Date.parse(ttl.createdAt);
      assert.deepEqual((await store.sweep(new Date(t0 + 1000))).expired, []);
      // Two days on, the boot snapshot is used; an hour later the TTL one expires.
      await store.touch(boot, new Date(t0 + 2 * 86400_000));
      const s1 = await store.sweep(new Date(t0 + 3601_000));
      assert.deepEqual(s1.expired.map((s) => s.id), [ttl.id]);
      assert.equal(s1.templatesRemoved, 0, "a held template stays");
      assert.ok(existsSync(held.parts.ram!));
      await held.release();
      const s2 = await store.sweep(new Date(t0 + 3601_000));
      assert.equal(s2.templatesRemoved, 1);
      // Seven days after the touch (not after creation) the boot snapshot goes.
      assert.deepEqual((await store.sweep(new Date(t0 + 8 * 86400_000))).expired, []);
      const s3 = await store.sweep(new Date(t0 + 9 * 86400_000 + 1000));
      assert.deepEqual(s3.expired.map((s) => s.id), [boot.id]);
      assert.deepEqual((await store.list()).map((s) => s.id), [manual.id]);
      const want = new Set(Object.values(manual.manifest.blobs).flatMap((blob) => blob!.chunks.filter((c) => c !== null)));
      assert.deepEqual(await chunkFiles(root), [...want].sort());
    });

    it("an aborted create registers nothing, and its chunks go at the next sweep", async () => {
      const { store, root } = await freshStore();
      const parts = await sampleParts();
      const ac = new AbortController();
      let puts = 0;
      const put = store.chunks.put.bind(store.chunks);
      store.chunks.put = async (bytes, expected) => {
        if (++puts === 2) ac.abort(new Error("stop"));
        return put(bytes, expected);
      };
      await assert.rejects(store.create({ parts, shape, kind: "user", source: "s", retention: { manual: true }, memory: true, signal: ac.signal }), /stop/);
      assert.deepEqual(await store.list(), []);
      assert.deepEqual(await readdir(join(root, "busy")), []);
      assert.ok((await chunkFiles(root)).length > 0);
      assert.equal((await store.sweep()).chunksDeferred, false);
      assert.deepEqual(await chunkFiles(root), []);
    });

    it("verify reads every chunk of a snapshot and fails closed on a damaged one", async () => {
      const { store } = await freshStore();
      const snap = await userSnapshot(store, await sampleParts());
      await store.verify(snap);
      await flipByte(store.chunks.pathOf(snap.manifest.blobs.device!.chunks[0] as ChunkId), 3);
      await assert.rejects(store.verify(snap), SnapshotMismatchError);
    });

    it("sweep removes a live snapshot's template once nobody has used it for templateIdleSeconds; a held one stays", async () => {
      const { store, root } = await freshStore();
      const parts = await sampleParts();
      const a = await userSnapshot(store, parts);
      const b = await userSnapshot(store, await sampleParts());
      await (await store.materialize(a)).release();
      const held = await store.materialize(b);
      const later = new Date(Date.now() + 2 * 3600_000);
      assert.equal((await store.sweep(new Date(), { templateIdleSeconds: 3600 })).templatesRemoved, 0);
      assert.equal((await store.sweep(later, { templateIdleSeconds: 3600 })).templatesRemoved, 1);
      assert.deepEqual(await readdir(join(root, "templates")), [b.digest.slice(7)]);
      await held.release();
      const again = await store.materialize(a);
      assert.ok((await readFile(again.parts.ram!)).equals(parts.ramBytes));
      await again.release();
    });

    it("refuses inconsistent retention and kinds before storing anything", async () => {
      const { store, root } = await freshStore();
      const parts = await sampleParts();
      await assert.rejects(store.create({ parts, shape, kind: "user", source: "s", retention: { unusedSeconds: 60 }, memory: true }), /unusedSeconds/);
      await assert.rejects(store.create({ parts, shape, kind: "boot", source: "s", retention: { manual: true }, memory: true, key: "k" }), /unusedSeconds/);
      await assert.rejects(store.create({ parts, shape, kind: "boot", source: "s", retention: { unusedSeconds: 60 }, memory: true }), /key/);
      await assert.rejects(store.create({ parts: {}, shape, kind: "user", source: "s", retention: { manual: true }, memory: true }), /no parts/);
      assert.deepEqual(await chunkFiles(root), []);
    });

    it("sweep never removes a chunk a live snapshot names (random sets of snapshots, random deletions)", async () => {
      // Chunk contents drawn from a small pool, so snapshots share chunks in random ways.
      const pool = Array.from({ length: 6 }, (_, i) => Buffer.alloc(CHUNK_SIZE, i)); // pool[0] is a zero chunk
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ picks: fc.array(fc.nat({ max: 5 }), { minLength: 1, maxLength: 4 }), keep: fc.boolean() }), { minLength: 1, maxLength: 5 }),
          async (specs) => {
            const { store, root } = await freshStore();
            const snaps: { snap: StoredSnapshot; keep: boolean }[] = [];
            for (const spec of specs) {
              const file = join(root, "part");
              await writeFile(file, Buffer.concat(spec.picks.map((p) => pool[p]!)));
              snaps.push({ snap: await store.create({ parts: { work: file }, shape, kind: "user", source: "s", retention: { ttlSeconds: 60 }, memory: false }), keep: spec.keep });
            }
            for (const { snap, keep } of snaps) if (!keep) await store.delete(snap.id);
            await store.sweep(new Date(0));
            const live = new Set(snaps.filter((s) => s.keep).flatMap((s) => s.snap.manifest.blobs.work!.chunks.filter((c) => c !== null)));
            assert.deepEqual(await chunkFiles(root), [...live].sort());
            for (const { snap, keep } of snaps) if (keep) await (await store.materialize(snap)).release();
            await rm(root, { recursive: true, force: true });
          },
        ),
        { numRuns: 15 },
      );
    });
  });
});

const storeModule = new URL("./snapshot-store.js", import.meta.url).href;
const chunksModule = new URL("./chunks.js", import.meta.url).href;

/**
 * A child process that runs `body` against the store at `root` (as `store`), with the ChunkStore
 * method `method` patched to pause after its `after`-th call: it prints "midway" and waits for a
 * line on stdin. Lines the child prints come back through `nextLine`.
 */
function child(root: string, method: "put" | "get", after: number, body: string) {
  const pem = keys.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const script = `
import { createPrivateKey, createPublicKey } from "node:crypto";
import { createInterface } from "node:readline";
import { SnapshotStore } from ${JSON.stringify(storeModule)};
import { ChunkStore } from ${JSON.stringify(chunksModule)};
const privateKey = createPrivateKey(${JSON.stringify(pem)});
const store = await SnapshotStore.open(${JSON.stringify(root)}, { privateKey, publicKey: createPublicKey(privateKey) });
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const original = ChunkStore.prototype.${method};
let calls = 0;
ChunkStore.prototype.${method} = async function (...args) {
  const result = await original.apply(this, args);
  if (++calls === ${after}) { process.stdout.write("midway\\n"); await lines.next(); }
  return result;
};
${body}
process.exit(0);`;
  const proc = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["pipe", "pipe", "inherit"] });
  const lines: string[] = [];
  let buffered = "";
  const waiters: (() => void)[] = [];
  proc.stdout.on("data", (d: Buffer) => {
    buffered += d.toString();
    let i;
    while ((i = buffered.indexOf("\n")) >= 0) {
      lines.push(buffered.slice(0, i));
      buffered = buffered.slice(i + 1);
      waiters.splice(0).forEach((w) => w());
    }
  });
  const nextLine = async (): Promise<string> => {
    while (lines.length === 0) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`child exited ${proc.exitCode ?? proc.signalCode}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        proc.once("exit", () => r());
      });
    }
    return lines.shift()!;
  };
  return { child: proc, nextLine };
}

/** A child that creates a snapshot of `part`, pausing after its third chunk put, then prints the id. */
function childCreate(root: string, part: string) {
  return child(
    root,
    "put",
    3,
    `const snap = await store.create({ parts: { ram: ${JSON.stringify(part)} }, shape: ${JSON.stringify(shape)}, kind: "user", source: "sbx_child", retention: { manual: true }, memory: true });
process.stdout.write(snap.id + "\\n");`,
  );
}

describe("snapshot store across processes", () => {
  it("a sweep during a live create removes none of its chunks, even ones it found already stored", async () => {
    const { store, root } = await freshStore();
    const content = randomBytes(6 * CHUNK_SIZE);
    const part = join(root, "..", `part-${n}`);
    await writeFile(part, content);
    // The first chunks already stored, named by no snapshot: the create finds them (dedup).
    for (let i = 0; i < 3; i++) await store.chunks.put(content.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE));
    const { child, nextLine } = childCreate(root, part);
    try {
      assert.equal(await nextLine(), "midway");
      const swept = await store.sweep();
      assert.equal(swept.chunksDeferred, true);
      assert.equal(swept.chunksRemoved, 0);
      assert.equal((await chunkFiles(root)).length, 3);
      child.stdin.write("go\n");
      const id = await nextLine();
      await once(child, "exit");
      const snap = await store.get(id);
      assert.equal((await store.sweep()).chunksRemoved, 0);
      const m = await store.materialize(snap);
      assert.ok((await readFile(m.parts.ram!)).equals(content));
      await m.release();
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("kill -9 mid-create: no snapshot visible, and the next sweep leaves nothing behind", async () => {
    const { store, root } = await freshStore();
    const part = join(root, "..", `part-${n}`);
    await writeFile(part, randomBytes(6 * CHUNK_SIZE));
    const { child, nextLine } = childCreate(root, part);
    assert.equal(await nextLine(), "midway");
    child.kill("SIGKILL");
    await once(child, "exit");
    assert.deepEqual(await store.list(), []);
    assert.equal((await chunkFiles(root)).length, 3);
    assert.equal((await readdir(join(root, "busy"))).length, 1, "the dead create's marker");
    const swept = await store.sweep();
    assert.deepEqual(swept, { expired: [], chunksRemoved: 3, chunksDeferred: false, templatesRemoved: 0, invalid: [] });
    for (const sub of ["records", "templates", "busy", "holds", "tmp", "chunks/tmp"]) assert.deepEqual(await readdir(join(root, sub)), [], sub);
    assert.deepEqual(await chunkFiles(root), []);
    assert.ok((await lstat(join(root, "locks"))).isDirectory());
  });

  it("kill -9 mid-materialize: nothing half-made in templates/, leftovers swept, the next materialize builds it", async () => {
    const { store, root } = await freshStore();
    const parts = await sampleParts();
    const snap = await userSnapshot(store, parts);
    const { child: proc, nextLine } = child(root, "get", 1, `const m = await store.materialize(await store.get(${JSON.stringify(snap.id)}));`);
    assert.equal(await nextLine(), "midway");
    // While the build runs, a sweep removes neither its chunks nor its work.
    await store.chunks.put(Buffer.from("an orphan chunk"));
    const during = await store.sweep();
    assert.equal(during.chunksDeferred, true);
    assert.equal((await readdir(join(root, "tmp"))).length, 1, "the build in progress");
    proc.kill("SIGKILL");
    await once(proc, "exit");
    assert.deepEqual(await readdir(join(root, "templates")), []);
    const after = await store.sweep();
    assert.equal(after.chunksRemoved, 1, "only the orphan");
    for (const sub of ["templates", "busy", "holds", "tmp", "chunks/tmp"]) assert.deepEqual(await readdir(join(root, sub)), [], sub);
    const m = await store.materialize(snap);
    assert.ok((await readFile(m.parts.ram!)).equals(parts.ramBytes));
    await m.release();
  });
});
