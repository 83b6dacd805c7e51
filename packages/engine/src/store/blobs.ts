/**
 * Blobs in the chunk store: a file cut into `CHUNK_SIZE` pieces, each stored by BLAKE3 (all-zero
 * pieces elided), and put back together as a sparse file whose every stored piece was verified.
 */
import { constants as fsc } from "node:fs";
import { open, unlink } from "node:fs/promises";
import { z } from "zod";
import { InvalidArgumentError, SnapshotMismatchError } from "@mvm/protocol";
import { CHUNK_SIZE, isChunkId, type ChunkId, type ChunkStore } from "./chunks.js";

/** Largest blob a manifest may describe: 256 GiB. */
export const MAX_BLOB_BYTES = 256 * 1024 * 1024 * 1024;

/** One blob as a manifest lists it: its size and one entry per chunk (`null`: all zeros). */
export const BlobRefSchema = z
  .strictObject({
    sizeBytes: z.number().int().min(0).max(MAX_BLOB_BYTES),
    chunks: z.array(z.string().refine(isChunkId, "not a chunk id").nullable()).max(MAX_BLOB_BYTES / CHUNK_SIZE),
  })
  .refine((b) => b.chunks.length === chunkCount(b.sizeBytes), "the chunk list does not match the size");
export type BlobRef = { readonly sizeBytes: number; readonly chunks: readonly (ChunkId | null)[] };

/** How many chunks a blob of `sizeBytes` has. */
export function chunkCount(sizeBytes: number): number {
  return Math.ceil(sizeBytes / CHUNK_SIZE);
}

/** Length of chunk `index` of a blob of `sizeBytes`. */
export function chunkLength(sizeBytes: number, index: number): number {
  return Math.min(CHUNK_SIZE, sizeBytes - index * CHUNK_SIZE);
}

export interface BlobCounts {
  /** Chunks the blob has. */
  readonly chunks: number;
  /** Of them, all-zero chunks (not stored). */
  readonly zeroChunks: number;
  /** Bytes of the non-zero chunks. */
  readonly storedBytes: number;
}

/** What a blob costs in the store. */
export function blobCounts(blob: BlobRef): BlobCounts {
  let zeroChunks = 0;
  let storedBytes = 0;
  blob.chunks.forEach((id, i) => {
    if (id === null) zeroChunks++;
    else storedBytes += chunkLength(blob.sizeBytes, i);
  });
  return { chunks: blob.chunks.length, zeroChunks, storedBytes };
}

/**
 * Cuts the file at `path` (or the open descriptor's file) into chunks and stores them.
 * @throws InvalidArgumentError when it is not a regular file.
 */
export async function storeFile(store: ChunkStore, path: string, options: { signal?: AbortSignal } = {}): Promise<BlobRef> {
  const handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`Cannot store ${JSON.stringify(path)}: not a regular file`);
    if (st.size > MAX_BLOB_BYTES) throw new InvalidArgumentError(`Cannot store ${JSON.stringify(path)}: ${st.size} bytes is over ${MAX_BLOB_BYTES}`);
    const chunks: (ChunkId | null)[] = [];
    // Two buffers: the next chunk is read while this one is hashed and written.
    const buffers = [Buffer.allocUnsafe(CHUNK_SIZE), Buffer.allocUnsafe(CHUNK_SIZE)] as const;
    const readChunk = async (i: number): Promise<Buffer> => {
      const buffer = buffers[i % 2]!;
      const length = chunkLength(st.size, i);
      let filled = 0;
      while (filled < length) {
        const { bytesRead } = await handle.read(buffer, filled, length - filled, i * CHUNK_SIZE + filled);
        if (bytesRead === 0) throw new InvalidArgumentError(`Cannot store ${JSON.stringify(path)}: it shrank while it was read`);
        filled += bytesRead;
      }
      return buffer.subarray(0, length);
    };
    const count = chunkCount(st.size);
    let next: Promise<Buffer> | undefined = count > 0 ? prefetch(readChunk(0)) : undefined;
    try {
      for (let i = 0; i < count; i++) {
        options.signal?.throwIfAborted();
        const bytes: Buffer = await next!;
        next = i + 1 < count ? prefetch(readChunk(i + 1)) : undefined;
        chunks.push(await store.put(bytes));
      }
    } finally {
      await next?.catch(() => undefined);
    }
    return { sizeBytes: st.size, chunks };
  } finally {
    await handle.close();
  }
}

/**
 * Writes the blob to a new file at `dest` (created with O_EXCL, `mode`): a sparse file of the
 * blob's size with every stored chunk read back, verified and written at its offset. On any
 * failure the partial file is removed.
 * @throws SnapshotMismatchError when a chunk is missing, corrupt or of the wrong length.
 */
export async function materialize(store: ChunkStore, blob: BlobRef, dest: string, options: { mode?: number; signal?: AbortSignal } = {}): Promise<void> {
  const parsed = BlobRefSchema.safeParse(blob);
  if (!parsed.success) throw new SnapshotMismatchError(`Blob reference for ${JSON.stringify(dest)} is malformed`, { cause: parsed.error });
  const handle = await open(dest, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, options.mode ?? 0o600);
  try {
    try {
      await handle.truncate(blob.sizeBytes);
      // The next stored chunk is read and verified while this one is written.
      const stored = [...blob.chunks.entries()].filter((e): e is [number, ChunkId] => e[1] !== null);
      let next: Promise<Buffer> | undefined = stored.length > 0 ? prefetch(store.get(stored[0]![1])) : undefined;
      try {
        for (const [k, [i, id]] of stored.entries()) {
          options.signal?.throwIfAborted();
          const bytes: Buffer = await next!;
          next = k + 1 < stored.length ? prefetch(store.get(stored[k + 1]![1])) : undefined;
          const expected = chunkLength(blob.sizeBytes, i);
          if (bytes.byteLength !== expected) throw new SnapshotMismatchError(`Chunk ${i} (${id}) has ${bytes.byteLength} bytes, the blob needs ${expected}`);
          let written = 0;
          while (written < expected) written += (await handle.write(bytes, written, expected - written, i * CHUNK_SIZE + written)).bytesWritten;
        }
      } finally {
        await next?.catch(() => undefined);
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    await unlink(dest).catch(() => undefined);
    throw err;
  }
}

/**
 * Marks a promise started ahead of its use as handled: if it rejects before it is awaited (while
 * the previous chunk is still being written) that is not an unhandled rejection; awaiting it
 * later still throws.
 */
function prefetch<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** Reads and verifies every stored chunk of a blob, writing nothing. */
export async function verifyBlob(store: ChunkStore, blob: BlobRef): Promise<void> {
  for (const [i, id] of blob.chunks.entries()) {
    if (id === null) continue;
    const bytes = await store.get(id);
    if (bytes.byteLength !== chunkLength(blob.sizeBytes, i)) throw new SnapshotMismatchError(`Chunk ${i} (${id}) has the wrong length`);
  }
}
