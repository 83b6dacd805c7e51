/**
 * Metadata operations: listDir, stat, mkdir, remove, rename. Symlinks are never followed for
 * metadata (lstat); answers are cut to fit one control frame.
 */
import type { Dirent, Stats } from "node:fs";
import { lstat, mkdir as mkdirp, opendir, rename as mv, rm, rmdir, unlink } from "node:fs/promises";
import { basename, join } from "node:path";
import {
  InvalidArgumentError,
  MAX_CONTROL_PAYLOAD,
  MAX_DIR_ENTRIES,
  MvmError,
  type FileInfo,
  type RequestOf,
  type ResultOf,
} from "@mvm/protocol";
import { assertSandboxPath, errnoOf, fsError, quote } from "./errors.js";

/** Entries are stat'ed this many at a time. */
const STAT_BATCH = 64;
/** Bytes of a listDir answer reserved for everything but the entries. */
const LIST_OVERHEAD_BYTES = 256;

/** The FileInfo of a path's lstat result. */
export function fileInfo(name: string, st: Stats): FileInfo {
  const type = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : "other";
  return { name, type, size: Math.max(0, st.size), mode: st.mode & 0o7777, mtimeMs: Number.isFinite(st.mtimeMs) ? st.mtimeMs : 0 };
}

/** The name used in FileInfo for a path ("/" for the root). */
export function nameOf(path: string): string {
  return path === "/" ? "/" : basename(path);
}

async function guard<T>(work: Promise<T>, action: string, path: string): Promise<T> {
  try {
    return await work;
  } catch (err) {
    throw err instanceof MvmError ? err : fsError(err, action, path);
  }
}

/**
 * Lists a directory: at most MAX_DIR_ENTRIES entries and no more than fit in one control frame,
 * sorted by name; `truncated` says whether any were left out. Reads the directory incrementally.
 */
export async function listDir(req: RequestOf<"listDir">): Promise<ResultOf<"listDir">> {
  assertSandboxPath(req.path);
  const dir = await guard(opendir(req.path, { bufferSize: STAT_BATCH }), "Cannot list", req.path);
  const after = req.after === undefined ? undefined : Buffer.from(req.after);
  const names: Buffer[] = [];
  try {
    for (;;) {
      const d = await dir.read();
      if (!d) break;
      const name = Buffer.from(d.name);
      if (after && Buffer.compare(name, after) <= 0) continue;
      if (names.length >= MAX_NAMES_SCANNED) throw tooManyEntries(req.path);
      names.push(name);
    }
  } catch (err) {
    throw err instanceof MvmError ? err : fsError(err, "Cannot list", req.path);
  } finally {
    await dir.close().catch(() => undefined);
  }
  names.sort(Buffer.compare);
  const entries: FileInfo[] = [];
  let budget = MAX_CONTROL_PAYLOAD - LIST_OVERHEAD_BYTES;
  let next = 0;
  while (next < names.length) {
    const batch = names.slice(next, next + STAT_BATCH).map((n) => n.toString());
    const infos = await Promise.all(batch.map((name) => statEntry(req.path, name)));
    let full = false;
    for (const info of infos) {
      if (info) {
        const size = Buffer.byteLength(JSON.stringify(info)) + 1;
        if (entries.length >= MAX_DIR_ENTRIES || size > budget) {
          full = true;
          break;
        }
        budget -= size;
        entries.push(info);
      }
      next += 1;
    }
    if (full) break;
  }
  return { entries, truncated: next < names.length };
}

/** Most names one listDir scans; past it the directory is refused rather than held in memory. */
const MAX_NAMES_SCANNED = 1_000_000;

function tooManyEntries(path: string): MvmError {
  return new InvalidArgumentError(`Cannot list "${path}": more than ${MAX_NAMES_SCANNED} entries`);
}

/** lstat of one directory entry; undefined if it vanished meanwhile. */
async function statEntry(dir: string, name: string): Promise<FileInfo | undefined> {
  try {
    return fileInfo(name, await lstat(join(dir, name)));
  } catch (err) {
    if (errnoOf(err) === "ENOENT") return undefined;
    throw fsError(err, "Cannot stat", join(dir, name));
  }
}

export async function stat(req: RequestOf<"stat">): Promise<ResultOf<"stat">> {
  assertSandboxPath(req.path);
  return fileInfo(nameOf(req.path), await guard(lstat(req.path), "Cannot stat", req.path));
}

/** Creates a directory; with `recursive`, parents too and an existing directory is success. */
export async function mkdir(req: RequestOf<"mkdir">): Promise<ResultOf<"mkdir">> {
  assertSandboxPath(req.path);
  await guard(mkdirp(req.path, { recursive: req.recursive }), "Cannot create directory", req.path);
  return {};
}

/** Removes a file, symlink or (empty, unless recursive) directory. Refuses "/". */
export async function remove(req: RequestOf<"remove">): Promise<ResultOf<"remove">> {
  assertSandboxPath(req.path);
  if (req.path === "/") throw new InvalidArgumentError(`Refusing to remove ${quote(req.path)}`);
  const st = await guard(lstat(req.path), "Cannot remove", req.path);
  if (req.recursive) await guard(rm(req.path, { recursive: true, force: false, maxRetries: 2 }), "Cannot remove", req.path);
  else if (st.isDirectory()) await guard(rmdir(req.path), "Cannot remove", req.path);
  else await guard(unlink(req.path), "Cannot remove", req.path);
  return {};
}

export async function rename(req: RequestOf<"rename">): Promise<ResultOf<"rename">> {
  assertSandboxPath(req.from);
  assertSandboxPath(req.to);
  if (req.from === "/" || req.to === "/") throw new InvalidArgumentError(`Cannot rename ${quote(req.from)} to ${quote(req.to)}`);
  await guard(mv(req.from, req.to), `Cannot rename ${quote(req.from)} to`, req.to);
  return {};
}
