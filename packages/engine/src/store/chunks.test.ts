import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile, symlink, mkdir, readFile, chmod, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { SnapshotMismatchError } from "@mvm/protocol";
import { CHUNK_SIZE, ChunkStore, blake3Hex, isZero, type ChunkId } from "./chunks.js";

let dir: string;
let store: ChunkStore;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-chunks-"));
  store = await ChunkStore.open(dir);
});
after(() => rm(dir, { recursive: true, force: true }));

describe("chunk store", () => {
  it("names a chunk by its BLAKE3-256 (the published test vector for empty input and 'abc')", async () => {
    assert.equal(await blake3Hex(new Uint8Array()), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    assert.equal(await blake3Hex(Buffer.from("abc")), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  });

  it("stores non-zero chunks once, elides all-zero ones, and reads back exactly what went in", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 4096 }), async (bytes) => {
        const id = await store.put(bytes);
        if (isZero(bytes)) return assert.equal(id, null);
        assert.ok(id !== null);
        assert.deepEqual(new Uint8Array(await store.get(id)), bytes);
        assert.equal(await store.put(bytes), id);
      }),
      { numRuns: 200 },
    );
    assert.equal(await store.put(new Uint8Array(CHUNK_SIZE)), null);
  });

  it("refuses bytes that do not hash to the expected id, writing nothing", async () => {
    const good = Buffer.from("the expected bytes");
    const id = (await blake3Hex(good)) as ChunkId;
    await assert.rejects(store.put(Buffer.from("other bytes"), id), SnapshotMismatchError);
    assert.equal(await store.has(id), false);
    await assert.rejects(store.put(Buffer.alloc(16), id), /all zeros/);
    assert.equal(await store.put(good, id), id);
  });

  it("fails closed on a corrupt, missing, symlinked, oversized or non-file chunk", async () => {
    const id = (await store.put(Buffer.from("a chunk to damage")))!;
    const path = store.pathOf(id);
    await chmod(path, 0o644);
    const bytes = await readFile(path);
    bytes[3] = bytes[3]! ^ 0x01;
    await writeFile(path, bytes);
    await assert.rejects(store.get(id), (e: unknown) => e instanceof SnapshotMismatchError && /corrupt/.test(e.message));

    await unlink(path);
    await assert.rejects(store.get(id), /is missing/);

    await writeFile(join(dir, "target"), "a chunk to damage");
    await symlink(join(dir, "target"), path);
    await assert.rejects(store.get(id), /symlink/);
    await unlink(path);

    await mkdir(path);
    await assert.rejects(store.get(id), /not a regular file/);
    await rm(path, { recursive: true });

    await writeFile(path, Buffer.alloc(CHUNK_SIZE + 1, 1));
    await assert.rejects(store.get(id), /bytes, not/);
    await unlink(path);

    // A damaged chunk is replaced by the next put of the right bytes.
    assert.equal(await store.put(Buffer.from("a chunk to damage")), id);
    assert.equal((await store.get(id)).toString(), "a chunk to damage");
  });

  it("sweeps every chunk no manifest keeps, and none that one does", async () => {
    const d = await mkdtemp(join(tmpdir(), "mvm-sweep-"));
    try {
      const s = await ChunkStore.open(d);
      const kept = (await s.put(Buffer.from("kept")))!;
      const dropped = (await s.put(Buffer.from("dropped")))!;
      await writeFile(join(d, "tmp", "999999999-1-abcdef.chunk"), "a dead writer's temp file");
      assert.equal(await s.sweep(new Set([kept])), 1);
      assert.equal(await s.has(kept), true);
      assert.equal(await s.has(dropped), false);
      const ids = [];
      for await (const id of s.list()) ids.push(id);
      assert.deepEqual(ids, [kept]);
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });
});
