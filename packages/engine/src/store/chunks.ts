/**
 * The chunk store: fixed 2 MiB chunks named by their BLAKE3-256 hash.
 *
 * `<dir>/blake3/<first 2 hex>/<64 hex>` holds one chunk, root-owned 0444. A chunk is hashed
 * before it is written, written atomically (`writeFileAtomic`: temp file, fsync, rename) into
 * place, so a visible chunk always holds the bytes its name says. Every read for use hashes the
 * bytes again: a chunk that is missing, is not a regular file, is a symlink, is too large or
 * hashes to another name fails closed with `SnapshotMismatchError`. An all-zero chunk is never
 * stored: its id is `null` wherever a list of chunks names it.
 */
import { constants as fsc } from "node:fs";
import { mkdir, open, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { IHasher } from "hash-wasm";
import { InvalidArgumentError, SnapshotMismatchError } from "@mvm/protocol";
import { writeFileAtomic } from "./atomic.js";
import { isAlive, parseOwnerTag } from "./lock.js";

/** Size of every chunk but a blob's last, in bytes. */
export const CHUNK_SIZE = 2 * 1024 * 1024;

declare const chunkIdBrand: unique symbol;
/** 64 lowercase hex digits: the BLAKE3-256 of a chunk's bytes. */
export type ChunkId = string & { readonly [chunkIdBrand]: true };

const CHUNK_ID = /^[0-9a-f]{64}$/;

/** Checks untrusted text is a chunk id. */
export function isChunkId(value: unknown): value is ChunkId {
  return typeof value === "string" && CHUNK_ID.test(value);
}

const ZEROS = new Uint8Array(CHUNK_SIZE);

/** True when every byte is zero (such a chunk is elided, not stored). */
export function isZero(bytes: Uint8Array): boolean {
  for (let offset = 0; offset < bytes.byteLength; offset += CHUNK_SIZE) {
    const piece = bytes.subarray(offset, Math.min(bytes.byteLength, offset + CHUNK_SIZE));
    // Buffer.compare is a memcmp: an order of magnitude faster than a loop in JavaScript.
    if (Buffer.compare(piece, ZEROS.subarray(0, piece.byteLength)) !== 0) return false;
  }
  return true;
}

let hasher: Promise<IHasher> | undefined;

/** BLAKE3-256 of `bytes`, as 64 hex digits. One WebAssembly hasher serves the process. */
export async function blake3Hex(bytes: Uint8Array): Promise<string> {
  // Loaded on first use: most engine starts hash nothing.
  const h = await (hasher ??= import("hash-wasm").then((m) => m.createBLAKE3(256)));
  // init/update/digest run synchronously: no other call can interleave with them.
  h.init();
  h.update(bytes);
  return h.digest("hex");
}

export class ChunkStore {
  readonly dir: string;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens (creating when absent) the chunk store at `dir`, 0700. */
  static async open(dir: string): Promise<ChunkStore> {
    await mkdir(join(dir, "blake3"), { recursive: true, mode: 0o700 });
    await mkdir(join(dir, "tmp"), { recursive: true, mode: 0o700 });
    return new ChunkStore(dir);
  }

  /** Where chunk `id` lives. */
  pathOf(id: ChunkId): string {
    if (!isChunkId(id)) throw new InvalidArgumentError(`Invalid chunk id: ${JSON.stringify(String(id).slice(0, 80))}`);
    return join(this.dir, "blake3", id.slice(0, 2), id);
  }

  /**
   * Stores one chunk (at most `CHUNK_SIZE` bytes) and returns its id, or `null` for an all-zero
   * chunk, which is not stored. With `expected`, bytes that hash to another id are refused
   * (`SnapshotMismatchError`) and nothing is written. A chunk already present is checked, and
   * replaced when it does not verify.
   */
  async put(bytes: Uint8Array, expected?: ChunkId | null): Promise<ChunkId | null> {
    if (bytes.byteLength > CHUNK_SIZE) throw new InvalidArgumentError(`Chunk of ${bytes.byteLength} bytes is over the ${CHUNK_SIZE}-byte chunk size`);
    if (isZero(bytes)) {
      if (expected !== undefined && expected !== null) throw new SnapshotMismatchError(`Chunk ${expected} arrived as all zeros`);
      return null;
    }
    const id = (await blake3Hex(bytes)) as ChunkId;
    if (expected !== undefined && expected !== id) {
      throw new SnapshotMismatchError(`Chunk ${expected === null ? "(all zeros)" : expected} does not match its bytes (BLAKE3 ${id})`);
    }
    const path = this.pathOf(id);
    if (await this.#verifies(id)) return id;
    await mkdir(join(this.dir, "blake3", id.slice(0, 2)), { recursive: true, mode: 0o700 });
    await writeFileAtomic(path, bytes, 0o444, { tempDir: join(this.dir, "tmp") });
    return id;
  }

  /**
   * Reads chunk `id` for use and checks its hash.
   * @throws SnapshotMismatchError when it is missing, not a regular file, a symlink, too large or
   *   corrupt.
   */
  async get(id: ChunkId): Promise<Buffer> {
    const path = this.pathOf(id);
    let handle;
    try {
      handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === "ENOENT" ? "is missing" : code === "ELOOP" ? "is a symlink" : `cannot be opened (${code ?? "error"})`;
      throw new SnapshotMismatchError(`Chunk ${id} ${why}`, { cause: err });
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new SnapshotMismatchError(`Chunk ${id} is not a regular file`);
      if (st.size === 0 || st.size > CHUNK_SIZE) throw new SnapshotMismatchError(`Chunk ${id} has ${st.size} bytes, not 1..${CHUNK_SIZE}`);
      const bytes = Buffer.allocUnsafe(st.size);
      const { bytesRead } = await handle.read(bytes, 0, st.size, 0);
      if (bytesRead !== st.size) throw new SnapshotMismatchError(`Chunk ${id} changed size while it was read`);
      const actual = await blake3Hex(bytes);
      if (actual !== id) throw new SnapshotMismatchError(`Chunk ${id} is corrupt: its bytes hash to ${actual}`);
      return bytes;
    } finally {
      await handle.close();
    }
  }

  /** True when chunk `id` is present and verifies. */
  async has(id: ChunkId): Promise<boolean> {
    return this.#verifies(id);
  }

  async #verifies(id: ChunkId): Promise<boolean> {
    try {
      await this.get(id);
      return true;
    } catch (err) {
      if (err instanceof SnapshotMismatchError) return false;
      throw err;
    }
  }

  /** Every stored chunk id (names that are not chunk ids are skipped). */
  async *list(): AsyncGenerator<ChunkId> {
    const base = join(this.dir, "blake3");
    for (const prefix of await readdir(base)) {
      if (!/^[0-9a-f]{2}$/.test(prefix)) continue;
      for (const name of await readdir(join(base, prefix))) if (isChunkId(name) && name.startsWith(prefix)) yield name;
    }
  }

  /** Removes chunk `id`; absent is fine. */
  async remove(id: ChunkId): Promise<void> {
    await rm(this.pathOf(id), { force: true });
  }

  /**
   * Removes every chunk that `keep` does not hold (the chunks of every live manifest), and temp
   * files whose writer is gone. Returns how many chunks went.
   */
  async sweep(keep: ReadonlySet<string>): Promise<number> {
    let removed = 0;
    for await (const id of this.list()) {
      if (keep.has(id)) continue;
      await this.remove(id);
      removed++;
    }
    await this.sweepTemp();
    return removed;
  }

  /** Removes temp files whose writer is gone (those of live writers stay). */
  async sweepTemp(): Promise<void> {
    for (const name of await readdir(join(this.dir, "tmp"))) {
      const owner = parseOwnerTag(name);
      if (owner === undefined || !(await isAlive(owner))) await rm(join(this.dir, "tmp", name), { force: true });
    }
  }
}
