import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile, readFile, stat, chmod, open } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { SnapshotMismatchError } from "@mvm/protocol";
import { CHUNK_SIZE, ChunkStore } from "./chunks.js";
import { blobCounts, materialize, storeFile, verifyBlob } from "./blobs.js";

let dir: string;
let store: ChunkStore;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-blobs-"));
  store = await ChunkStore.open(join(dir, "chunks"));
});
after(() => rm(dir, { recursive: true, force: true }));

/** A file of 3 chunks and a tail: data, zeros, data, short data tail. */
async function sampleFile(name: string): Promise<{ path: string; bytes: Buffer }> {
  const bytes = Buffer.concat([randomBytes(CHUNK_SIZE), Buffer.alloc(CHUNK_SIZE), randomBytes(CHUNK_SIZE), randomBytes(12345)]);
  const path = join(dir, name);
  await writeFile(path, bytes);
  return { path, bytes };
}

describe("blobs", () => {
  it("round-trips a file through chunks, eliding the zero chunk and leaving it a hole", async () => {
    const { path, bytes } = await sampleFile("a");
    const blob = await storeFile(store, path);
    assert.equal(blob.sizeBytes, bytes.length);
    assert.equal(blob.chunks.length, 4);
    assert.equal(blob.chunks[1], null);
    assert.deepEqual(blobCounts(blob), { chunks: 4, zeroChunks: 1, storedBytes: 2 * CHUNK_SIZE + 12345 });
    const out = join(dir, "a.out");
    await materialize(store, blob, out);
    assert.ok((await readFile(out)).equals(bytes));
    // The zero chunk is a hole: fewer blocks than the file's size.
    const st = await stat(out);
    assert.ok(st.blocks * 512 < st.size, `${st.blocks * 512} allocated bytes for ${st.size}`);
    await verifyBlob(store, blob);
  });

  it("stores an identical second file without new chunks (dedup)", async () => {
    const { path } = await sampleFile("b");
    const first = await storeFile(store, path);
    const before = [];
    for await (const id of store.list()) before.push(id);
    const again = await storeFile(store, path);
    const after = [];
    for await (const id of store.list()) after.push(id);
    assert.deepEqual(again, first);
    assert.equal(after.length, before.length);
  });

  it("fails closed and leaves no partial file when a chunk was tampered with", async () => {
    const { path } = await sampleFile("c");
    const blob = await storeFile(store, path);
    const victim = store.pathOf(blob.chunks[2]!);
    await chmod(victim, 0o644);
    const fh = await open(victim, "r+");
    await fh.write(Buffer.from([0xff]), 0, 1, 777);
    await fh.close();
    const out = join(dir, "c.out");
    await assert.rejects(materialize(store, blob, out), SnapshotMismatchError);
    assert.equal(existsSync(out), false);
    await assert.rejects(verifyBlob(store, blob), SnapshotMismatchError);
  });

  it("refuses a blob reference whose chunk list does not match its size", async () => {
    await assert.rejects(materialize(store, { sizeBytes: CHUNK_SIZE * 2, chunks: [null] }, join(dir, "d.out")), /malformed/);
  });
});
