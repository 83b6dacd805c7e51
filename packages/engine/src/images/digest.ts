/**
 * The image digest: sha256 over the canonical manifest of a normalized tree.
 *
 * The manifest is `canonicalJson({ version: 1, entries })` where `entries` lists every path
 * below the root (the root itself excluded), sorted by the bytes of their UTF-8 encoding:
 *
 *   { path: "usr/bin/env", type: "file", mode: 0o755, size: 43200, sha256: "<hex>" }
 *   { path: "usr", type: "dir", mode: 0o755 }
 *   { path: "bin", type: "symlink", mode: 0o777, target: "usr/bin" }
 *
 * `path` is relative, `/`-separated, without a leading `./`; `mode` is `st_mode & 0o7777`.
 * Ownership and timestamps are not part of the digest. Any other file type (device, FIFO, socket)
 * makes the tree invalid. Imported and built images use this one definition, and `verify`
 * recomputes it from the stored tree.
 */
import { createHash } from "node:crypto";
import { constants as fsc } from "node:fs";
import { lstat, open, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { AbortedError, canonicalJson, type Sha256Digest } from "@mvm/protocol";

export const MANIFEST_VERSION = 1;

export type ManifestEntry =
  | { path: string; type: "dir"; mode: number }
  | { path: string; type: "file"; mode: number; size: number; sha256: string }
  | { path: string; type: "symlink"; mode: number; target: string };

export interface Manifest {
  version: typeof MANIFEST_VERSION;
  entries: ManifestEntry[];
}

export interface TreeDigest {
  digest: Sha256Digest;
  /** The exact bytes hashed into `digest` (stored as manifest.json). */
  manifestBytes: Buffer;
  /** Sum of regular-file sizes, counted once per path. */
  sizeBytes: number;
  entryCount: number;
}

/** The tree holds something the manifest cannot describe, or changed while it was read. */
export class InvalidTreeError extends Error {
  override readonly name = "InvalidTreeError";
}

const READ_FLAGS = fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK;
const HASH_CONCURRENCY = 4;
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** sha256 digest of manifest bytes, in `sha256:<hex>` form. */
export function digestOf(manifestBytes: Uint8Array): Sha256Digest {
  return `sha256:${createHash("sha256").update(manifestBytes).digest("hex")}` as Sha256Digest;
}

/** Serializes a manifest canonically (the bytes that are hashed). */
export function encodeManifest(entries: ManifestEntry[]): Buffer {
  const sorted = entries
    .map((entry) => ({ key: Buffer.from(entry.path), entry }))
    .sort((a, b) => Buffer.compare(a.key, b.key))
    .map(({ entry }) => entry);
  const manifest: Manifest = { version: MANIFEST_VERSION, entries: sorted };
  return Buffer.from(canonicalJson(manifest));
}

/**
 * Walks `root` without following symlinks and computes its manifest and digest.
 * @throws InvalidTreeError on special files, non-UTF-8 names or a tree that changes underneath.
 */
export async function hashTree(root: string, signal?: AbortSignal): Promise<TreeDigest> {
  const rootStat = await lstat(root);
  if (!rootStat.isDirectory()) throw new InvalidTreeError(`Image root ${JSON.stringify(root)} is not a directory`);
  const entries: ManifestEntry[] = [];
  const files: { entry: Extract<ManifestEntry, { type: "file" }>; abs: string; ino: number }[] = [];
  const stack: string[] = [""];
  while (stack.length > 0) {
    const rel = stack.pop() as string;
    const dirAbs = rel === "" ? root : join(root, rel);
    for (const raw of await readdir(dirAbs, { encoding: "buffer" })) {
      checkAbort(signal);
      let name: string;
      try {
        name = utf8.decode(raw);
      } catch (cause) {
        throw new InvalidTreeError(`Entry in ${JSON.stringify(rel || "/")} has a name that is not UTF-8`, { cause });
      }
      const path = rel === "" ? name : `${rel}/${name}`;
      const abs = join(root, path);
      const st = await lstat(abs);
      const mode = st.mode & 0o7777;
      if (st.isDirectory()) {
        entries.push({ path, type: "dir", mode });
        stack.push(path);
      } else if (st.isFile()) {
        const entry = { path, type: "file" as const, mode, size: st.size, sha256: "" };
        entries.push(entry);
        files.push({ entry, abs, ino: st.ino });
      } else if (st.isSymbolicLink()) {
        entries.push({ path, type: "symlink", mode, target: await readlink(abs) });
      } else {
        throw new InvalidTreeError(`Entry ${JSON.stringify(path)} is a device node, FIFO or socket`);
      }
    }
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < files.length) {
      const item = files[next++];
      if (item === undefined) break;
      checkAbort(signal);
      item.entry.sha256 = await hashFile(item.abs, item.entry.size, item.ino);
    }
  };
  await Promise.all(Array.from({ length: HASH_CONCURRENCY }, worker));
  const manifestBytes = encodeManifest(entries);
  const sizeBytes = files.reduce((sum, f) => sum + f.entry.size, 0);
  return { digest: digestOf(manifestBytes), manifestBytes, sizeBytes, entryCount: entries.length };
}

async function hashFile(abs: string, size: number, ino: number): Promise<string> {
  const handle = await open(abs, READ_FLAGS);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.ino !== ino || st.size !== size) {
      throw new InvalidTreeError(`File ${JSON.stringify(abs)} changed while it was hashed`);
    }
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(size, 1)));
    let total = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      total += bytesRead;
    }
    if (total !== size) throw new InvalidTreeError(`File ${JSON.stringify(abs)} changed while it was hashed`);
    return hash.digest("hex");
  } finally {
    await handle.close();
  }
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError("Image hashing aborted", { cause: signal.reason });
}
