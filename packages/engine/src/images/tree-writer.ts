/**
 * The one place that writes an image tree. Tar extraction and directory import both feed it, so
 * both obey the same rules:
 *
 * - entry paths are relative, without `..`; `.` and empty components are ignored;
 * - a parent component must be a real directory: the writer never follows a symlink already in the
 *   tree (`a -> /etc` then `a/passwd` is refused);
 * - a relative symlink target must stay inside the root when resolved from the link's directory
 *   (absolute targets are allowed: they resolve inside the sandbox root);
 * - a hard link must name a regular file already written, reached through real directories;
 * - device nodes, FIFOs and sockets are dropped (counted in {@link TreeWriter.dropped});
 * - setuid, setgid (and, on files, sticky) bits are cleared; directories get at least `u+rwx`;
 * - ownership is never taken from the source: everything belongs to the writing process
 *   (root:root when the engine runs as root);
 * - image layers (OCI) are applied in order: {@link TreeWriter.startLayer} begins one,
 *   {@link TreeWriter.whiteout} and {@link TreeWriter.opaque} remove what lower layers wrote,
 *   never what the current layer wrote, and never through a symlink.
 *
 * The tree must be private to the writer (a fresh directory under the store's tmp dir): the rules
 * are checked with lstat before each write and nobody else changes the tree in between.
 */
import { constants as fsc } from "node:fs";
import { lstat, link, mkdir, open, readdir, rm, symlink, unlink, lutimes, type FileHandle } from "node:fs/promises";
import { posix } from "node:path";
import { AbortedError, InvalidArgumentError } from "@mvm/protocol";
import { quote } from "./ref.js";

export interface TreeWriterLimits {
  /** Most entries (of any kind) one image may hold. @default 1_000_000 */
  maxEntries?: number;
  /** Most bytes of regular-file content one image may hold. @default 64 GiB */
  maxBytes?: number;
}

const DEFAULT_MAX_ENTRIES = 1_000_000;
const DEFAULT_MAX_BYTES = 64 * 1024 ** 3;
const MAX_LINK_TARGET_BYTES = 4095;
/** Name prefix of an OCI whiteout entry. */
export const WHITEOUT_PREFIX = ".wh.";
/** Name of an OCI opaque-directory marker. */
export const WHITEOUT_OPAQUE = ".wh..wh..opq";

const FILE_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
const DIR_FLAGS = fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW;

/** Mode bits kept on regular files: permissions only. */
export function normalizeFileMode(mode: number): number {
  return mode & 0o777;
}
/** Mode bits kept on directories: permissions and sticky, plus owner rwx. */
export function normalizeDirMode(mode: number): number {
  return (mode & 0o1777) | 0o700;
}

interface PendingDir {
  mode: number;
  mtime: Date | undefined;
}

export class TreeWriter {
  /** Entries dropped because they were device nodes, FIFOs or sockets. */
  dropped = 0;
  /** Bytes of regular-file content written so far. */
  bytesWritten = 0;

  readonly #root: string;
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  readonly #signal: AbortSignal | undefined;
  #entries = 0;
  /** Relative paths known to be real directories in the tree. */
  readonly #dirs = new Set<string>();
  /** Directories whose final mode and mtime are applied by finish(). */
  readonly #pending = new Map<string, PendingDir>();
  /** Paths (and their parents) written by the current layer: whiteouts never remove these. */
  #layerTouched = new Set<string>();

  /** @param root an existing, empty, private directory: the image's `/`. */
  constructor(root: string, limits: TreeWriterLimits = {}, signal?: AbortSignal) {
    this.#root = root;
    this.#maxEntries = limits.maxEntries ?? DEFAULT_MAX_ENTRIES;
    this.#maxBytes = limits.maxBytes ?? DEFAULT_MAX_BYTES;
    this.#signal = signal;
  }

  async directory(rawPath: string, mode: number, mtime?: Date): Promise<void> {
    const parts = this.#begin(rawPath);
    if (parts.length === 0) return; // the root keeps 0755
    this.#touch(parts);
    const rel = parts.join("/");
    const abs = await this.#prepareParents(parts, rawPath);
    const existing = await lstatOrUndefined(abs);
    if (existing?.isDirectory() !== true) {
      if (existing) await this.#removeExisting(rel, abs);
      await mkdir(abs, 0o700);
    }
    this.#dirs.add(rel);
    this.#pending.set(rel, { mode: normalizeDirMode(mode), mtime });
  }

  /**
   * Writes a regular file from `data`, which must yield exactly `size` bytes.
   * The content is never written through an existing path: the old entry is removed first and the
   * file is created with O_EXCL|O_NOFOLLOW.
   */
  async file(rawPath: string, mode: number, data: AsyncIterable<Uint8Array>, size: number, mtime?: Date): Promise<void> {
    const parts = this.#begin(rawPath);
    if (parts.length === 0) throw unsafe(rawPath, "a file cannot replace the image root");
    this.#touch(parts);
    if (this.bytesWritten + size > this.#maxBytes) {
      throw new InvalidArgumentError(`Cannot import entry ${quote(rawPath)}: the image would exceed ${this.#maxBytes} bytes`);
    }
    const abs = await this.#prepareLeaf(parts, rawPath);
    const handle = await open(abs, FILE_FLAGS, 0o600);
    try {
      let written = 0;
      for await (const chunk of data) {
        this.#checkAbort();
        written += chunk.byteLength;
        if (written > size) throw unsafe(rawPath, `content is longer than the declared ${size} bytes`);
        await writeAll(handle, chunk);
      }
      if (written !== size) throw unsafe(rawPath, `content is ${written} bytes, ${size} declared`);
      this.bytesWritten += written;
      await handle.chmod(normalizeFileMode(mode));
      if (mtime) await handle.utimes(mtime, mtime);
    } finally {
      await handle.close();
    }
  }

  async symlink(rawPath: string, target: string, mtime?: Date): Promise<void> {
    const parts = this.#begin(rawPath);
    if (parts.length === 0) throw unsafe(rawPath, "a symbolic link cannot replace the image root");
    this.#touch(parts);
    if (target.length === 0 || target.includes("\0") || Buffer.byteLength(target) > MAX_LINK_TARGET_BYTES) {
      throw unsafe(rawPath, `symbolic link target ${quote(target)} is empty, too long or contains NUL`);
    }
    if (!target.startsWith("/")) {
      const resolved = posix.normalize(posix.join(parts.slice(0, -1).join("/") || ".", target));
      if (resolved === ".." || resolved.startsWith("../")) {
        throw unsafe(rawPath, `symbolic link target ${quote(target)} leaves the image root`);
      }
    }
    const abs = await this.#prepareLeaf(parts, rawPath);
    await symlink(target, abs);
    if (mtime) await lutimes(abs, mtime, mtime);
  }

  /** Links `rawPath` to the regular file already written at `rawTarget` (an image-relative path). */
  async hardlink(rawPath: string, rawTarget: string): Promise<void> {
    const parts = this.#begin(rawPath);
    if (parts.length === 0) throw unsafe(rawPath, "a hard link cannot replace the image root");
    this.#touch(parts);
    const targetParts = splitEntryPath(rawTarget, rawPath, "hard link target");
    if (targetParts.length === 0) throw unsafe(rawPath, "hard link target is the image root");
    const targetAbs = await this.#existingFile(targetParts, rawPath, rawTarget);
    if (targetParts.join("/") === parts.join("/")) return;
    const abs = await this.#prepareLeaf(parts, rawPath);
    await link(targetAbs, abs);
  }

  /** Begins the next image layer: whiteouts from now on may remove anything written before. */
  startLayer(): void {
    this.#layerTouched = new Set();
  }

  /**
   * Applies a whiteout entry `DIR/.wh.NAME`: removes `DIR/NAME` (and everything below it) when a
   * lower layer wrote it. A missing target is not an error; a target of `.`, `..` or empty, or a
   * parent that is not a real directory, is refused.
   */
  async whiteout(rawPath: string): Promise<void> {
    const parts = this.#begin(rawPath);
    const marker = parts.at(-1) ?? "";
    const name = marker.slice(WHITEOUT_PREFIX.length);
    if (!marker.startsWith(WHITEOUT_PREFIX) || name === "" || name === "." || name === ".." || name === WHITEOUT_OPAQUE.slice(WHITEOUT_PREFIX.length)) {
      throw unsafe(rawPath, `whiteout ${quote(marker)} names no entry it may remove`);
    }
    const target = [...parts.slice(0, -1), name];
    const rel = target.join("/");
    if (this.#layerTouched.has(rel)) return;
    const abs = await this.#existingParent(target, rawPath);
    if (abs === undefined || (await lstatOrUndefined(abs)) === undefined) return;
    await this.#removeExisting(rel, abs);
  }

  /**
   * Applies an opaque marker `DIR/.wh..wh..opq`: removes every entry of DIR that a lower layer
   * wrote, keeping DIR itself and what the current layer put in it.
   */
  async opaque(rawPath: string): Promise<void> {
    const parts = this.#begin(rawPath);
    if (parts.at(-1) !== WHITEOUT_OPAQUE) throw unsafe(rawPath, "not an opaque whiteout");
    const dirParts = parts.slice(0, -1);
    const dirRel = dirParts.join("/");
    let dirAbs = this.#root;
    if (dirParts.length > 0) {
      const abs = await this.#existingParent(dirParts, rawPath);
      const st = abs === undefined ? undefined : await lstatOrUndefined(abs);
      if (abs === undefined || st === undefined) return;
      if (!st.isDirectory()) throw unsafe(rawPath, `${quote(dirRel)} is not a directory`);
      dirAbs = abs;
    }
    for (const child of await readdir(dirAbs)) {
      const rel = dirRel === "" ? child : `${dirRel}/${child}`;
      if (this.#layerTouched.has(rel)) continue;
      await this.#removeExisting(rel, posix.join(dirAbs, child));
    }
  }

  /** Records a device node, FIFO or socket that was not written. */
  drop(rawPath: string): void {
    this.#begin(rawPath);
    this.dropped += 1;
  }

  /** Makes a top-level entry a real directory (keeping an existing one): backends mount over these. */
  async mountPoint(name: string): Promise<void> {
    const [part] = splitEntryPath(name, name, "path");
    const abs = posix.join(this.#root, part!);
    const st = await lstatOrUndefined(abs);
    if (st?.isDirectory()) return;
    if (st) await rm(abs, { recursive: true, force: true });
    await mkdir(abs, 0o755);
    this.#dirs.add(part!);
  }

  /** Applies directory modes and mtimes (deepest first, never through a symlink) and the root's 0755. */
  async finish(): Promise<void> {
    const dirs = [...this.#pending.entries()].sort((a, b) => depth(b[0]) - depth(a[0]));
    for (const [rel, { mode, mtime }] of dirs) {
      this.#checkAbort();
      const handle = await open(posix.join(this.#root, rel), DIR_FLAGS);
      try {
        await handle.chmod(mode);
        if (mtime) await handle.utimes(mtime, mtime);
      } finally {
        await handle.close();
      }
    }
    const root = await open(this.#root, DIR_FLAGS);
    try {
      await root.chmod(0o755);
    } finally {
      await root.close();
    }
  }

  #begin(rawPath: string): string[] {
    this.#checkAbort();
    this.#entries += 1;
    if (this.#entries > this.#maxEntries) {
      throw new InvalidArgumentError(`Cannot import entry ${quote(rawPath)}: the image would exceed ${this.#maxEntries} entries`);
    }
    return splitEntryPath(rawPath, rawPath, "path");
  }

  #touch(parts: readonly string[]): void {
    for (let i = 1; i <= parts.length; i++) this.#layerTouched.add(parts.slice(0, i).join("/"));
  }

  /**
   * The absolute path of `parts` when every parent exists as a real directory; undefined when a
   * parent is missing. A parent that is a symlink or not a directory is refused.
   */
  async #existingParent(parts: readonly string[], rawPath: string): Promise<string | undefined> {
    for (let i = 1; i < parts.length; i++) {
      const rel = parts.slice(0, i).join("/");
      if (this.#dirs.has(rel)) continue;
      const st = await lstatOrUndefined(posix.join(this.#root, rel));
      if (st === undefined) return undefined;
      if (!st.isDirectory()) throw unsafe(rawPath, `${quote(rel)} is ${st.isSymbolicLink() ? "a symbolic link" : "not a directory"}; nothing is removed through it`);
    }
    return posix.join(this.#root, ...parts);
  }

  #checkAbort(): void {
    if (this.#signal?.aborted) throw new AbortedError("Image import aborted", { cause: this.#signal.reason });
  }

  /** Makes every parent of `parts` a real directory (creating missing ones); returns the leaf's absolute path. */
  async #prepareParents(parts: readonly string[], rawPath: string): Promise<string> {
    for (let i = 1; i < parts.length; i++) {
      const rel = parts.slice(0, i).join("/");
      if (this.#dirs.has(rel)) continue;
      const abs = posix.join(this.#root, rel);
      const st = await lstatOrUndefined(abs);
      if (st === undefined) {
        await mkdir(abs, 0o700);
        this.#pending.set(rel, { mode: 0o755, mtime: undefined });
      } else if (!st.isDirectory()) {
        throw unsafe(rawPath, `${quote(rel)} is ${st.isSymbolicLink() ? "a symbolic link" : "not a directory"}; nothing is written through it`);
      }
      this.#dirs.add(rel);
    }
    return posix.join(this.#root, ...parts);
  }

  /** Prepares parents and removes whatever is at the leaf so a new non-directory can be created. */
  async #prepareLeaf(parts: readonly string[], rawPath: string): Promise<string> {
    const abs = await this.#prepareParents(parts, rawPath);
    if (await lstatOrUndefined(abs)) await this.#removeExisting(parts.join("/"), abs);
    return abs;
  }

  /** Removes an entry (a directory with everything below it) and forgets what was known about it. */
  async #removeExisting(rel: string, abs: string): Promise<void> {
    const st = await lstat(abs);
    if (st.isDirectory()) {
      await rm(abs, { recursive: true, force: true });
      const prefix = rel + "/";
      for (const key of [...this.#dirs]) if (key === rel || key.startsWith(prefix)) this.#dirs.delete(key);
      for (const key of [...this.#pending.keys()]) if (key === rel || key.startsWith(prefix)) this.#pending.delete(key);
    } else {
      await unlink(abs);
    }
  }

  /** Resolves an existing regular file through real directories only. */
  async #existingFile(parts: readonly string[], rawPath: string, rawTarget: string): Promise<string> {
    for (let i = 1; i < parts.length; i++) {
      const rel = parts.slice(0, i).join("/");
      if (this.#dirs.has(rel)) continue;
      const st = await lstatOrUndefined(posix.join(this.#root, rel));
      if (st?.isDirectory() !== true) {
        throw unsafe(rawPath, `hard link target ${quote(rawTarget)} is not reachable through directories of the image`);
      }
    }
    const abs = posix.join(this.#root, ...parts);
    const st = await lstatOrUndefined(abs);
    if (st?.isFile() !== true) {
      throw unsafe(rawPath, `hard link target ${quote(rawTarget)} is not a regular file already in the image`);
    }
    return abs;
  }
}

/**
 * Splits an archive path into components. `.` and empty components are dropped; absolute paths
 * and `..` are refused. Returns [] for the root itself.
 */
export function splitEntryPath(raw: string, entry: string, what: string): string[] {
  if (raw.includes("\0")) throw unsafe(entry, `${what} contains NUL`);
  if (raw.startsWith("/")) throw unsafe(entry, `${what} ${quote(raw)} is absolute`);
  const parts = raw.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw unsafe(entry, `${what} ${quote(raw)} contains ".."`);
  return parts;
}

function unsafe(entry: string, detail: string): InvalidArgumentError {
  return new InvalidArgumentError(`Cannot import entry ${quote(entry)}: ${detail}`);
}

function depth(rel: string): number {
  let n = 0;
  for (const c of rel) if (c === "/") n++;
  return n;
}

async function lstatOrUndefined(path: string) {
  try {
    return await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

async function writeAll(handle: FileHandle, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.byteLength - offset);
    offset += bytesWritten;
  }
}
