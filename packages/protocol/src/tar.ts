/**
 * The tar stream that carries a directory tree between a client and the engine (directory upload
 * and download). Headers are encoded and archives parsed by node-tar (`tar`); the bounds and the
 * path rules are ours, applied to every entry before a caller sees it, so no side trusts the
 * other's archive.
 *
 * ```
 *  one entry:   [pax header "x" (512) + records, padded to 512]   only when a field does not fit ustar
 *               [ustar header (512)]  name 100 | mode 8 | uid 8 | gid 8 | size 12 | mtime 12 |
 *                                     chksum 8 | type 1 | linkname 100 | "ustar\0" "00" | ... | prefix 155
 *               [body: size bytes, padded with zeros to a multiple of 512]
 *  the end:     two zero blocks (1024 bytes); an archive without them is truncated and refused
 * ```
 *
 * The reader accepts what common tools write (ustar, pax "x"/"g", GNU "L"/"K" long names, base-256
 * sizes), uncompressed only, and refuses the rest with InvalidArgumentError: a bad checksum, a
 * compressed stream, a metadata record over 64 KiB, a path that is absolute, holds "..", NUL or
 * bytes that are not UTF-8, more entries or bytes than the caller's limits, a missing end marker.
 * Paths come out relative and normalized ("a/b", never "./a//b/"). Pure: no I/O.
 */
import { Header } from "tar/header";
import { Parser } from "tar/parse";
import { Pax } from "tar/pax";
import type { ReadEntry } from "tar/read-entry";
import { InvalidArgumentError } from "./errors.js";
import { MAX_PATH_LENGTH } from "./limits.js";

/** What one archive entry is. Hard links, devices and FIFOs are `other` (readers skip them). */
export type TarEntryType = "file" | "dir" | "symlink" | "other";

export interface TarEntry {
  /** Relative, normalized path ("a/b.txt"); "." is never an entry. */
  path: string;
  type: TarEntryType;
  /** Permission bits (0..0o777; setuid, setgid and sticky bits are dropped). */
  mode: number;
  /** Body size in bytes (0 unless `file`). */
  size: number;
  /** Modification time, in ms since the epoch. */
  mtimeMs: number;
  /** Target of a symlink. */
  linkTarget?: string;
}

export interface TarLimits {
  /** Most entries in the archive. */
  maxEntries: number;
  /** Most body bytes in the archive, summed over all files. */
  maxBytes: number;
}

/** Most entries one directory transfer carries. */
export const MAX_TREE_ENTRIES = 100_000;
/** Most bytes of file contents one directory transfer carries (64 GiB). */
export const MAX_TREE_BYTES = 64 * 1024 ** 3;

const BLOCK = 512;
/** Largest pax or GNU long-name record accepted, in bytes. */
const MAX_META_BYTES = 64 * 1024;

/** Two zero blocks: the end of an archive. */
export function tarEnd(): Uint8Array {
  return new Uint8Array(2 * BLOCK);
}

/** Zeros that pad a body of `size` bytes to a whole block. */
export function tarPadding(size: number): Uint8Array {
  return new Uint8Array((BLOCK - (size % BLOCK)) % BLOCK);
}

const WRITE_TYPE = { file: "File", dir: "Directory", symlink: "SymbolicLink", other: "File" } as const;

/**
 * The header block(s) of `entry`: a pax record first when the path, link target or size does not
 * fit the ustar fields. The body (for a file) and {@link tarPadding} follow.
 */
export function tarHeader(entry: TarEntry): Uint8Array {
  const fields = {
    path: entry.type === "dir" ? `${entry.path}/` : entry.path,
    mode: entry.mode & 0o777,
    uid: 0,
    gid: 0,
    size: entry.type === "file" ? entry.size : 0,
    mtime: new Date(Math.max(0, Math.floor(entry.mtimeMs / 1000)) * 1000),
    type: WRITE_TYPE[entry.type],
    ...(entry.type === "symlink" && entry.linkTarget !== undefined ? { linkpath: entry.linkTarget } : {}),
  };
  const header = new Header(fields);
  if (!header.encode()) return header.block!;
  const pax = new Pax({ path: fields.path, size: fields.size, ...(fields.linkpath !== undefined ? { linkpath: fields.linkpath } : {}) }).encode();
  return Buffer.concat([pax, header.block!]);
}

/**
 * A relative archive path normalized ("./a//b/" → "a/b"); "" for the archive's root.
 * @throws InvalidArgumentError for an absolute path, "..", NUL or an over-long path
 */
export function normalizeTarPath(raw: string): string {
  if (raw.includes("\0") || raw.length > MAX_PATH_LENGTH) throw new InvalidArgumentError(`Unsafe archive path: ${JSON.stringify(raw.slice(0, 200))}`);
  if (raw.startsWith("/")) throw new InvalidArgumentError(`Unsafe archive path: ${JSON.stringify(raw.slice(0, 200))} is absolute`);
  const parts = raw.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw new InvalidArgumentError(`Unsafe archive path: ${JSON.stringify(raw.slice(0, 200))} contains ".."`);
  return parts.join("/");
}

/** One entry read from an archive; read `body` (once) or leave it, and the reader skips it. */
export interface TarReadEntry {
  entry: TarEntry;
  body: AsyncIterable<Uint8Array>;
}

/** An entry node-tar has parsed, with the body bytes it has passed on so far. */
interface Parsed {
  readonly e: ReadEntry;
  readonly chunks: Buffer[];
  ended: boolean;
  /** The caller moved on: body bytes are dropped as they come. */
  skipped: boolean;
}

/** node-tar's complaint about an archive as our error. */
function archiveError(err: unknown): InvalidArgumentError {
  if (err instanceof InvalidArgumentError) return err;
  const e = err as { message?: string; tarCode?: string };
  const message = String(e.message ?? err);
  if (/checksum/.test(message)) return new InvalidArgumentError("Archive header checksum does not match: not a tar archive, or corrupt", { cause: err });
  if (e.tarCode === "TAR_BAD_ARCHIVE") return new InvalidArgumentError(`Archive is truncated, or not a tar archive: ${message}`, { cause: err });
  return new InvalidArgumentError(`Archive is not a valid tar archive: ${message}`, { cause: err });
}

const ENTRY_TYPE: Partial<Record<string, TarEntryType>> = {
  File: "file",
  OldFile: "file",
  ContiguousFile: "file",
  Directory: "dir",
  SymbolicLink: "symlink",
};

/** node-tar decodes header text as UTF-8, replacing bytes that are not; such a name is refused. */
function utf8Text(s: string, what: string): string {
  if (s.includes("\uFFFD")) throw new InvalidArgumentError(`Archive ${what} is not UTF-8`);
  return s;
}

/**
 * Reads a tar stream entry by entry. The source is read only as the caller asks for entries or
 * body bytes, one chunk at a time, so at most one source chunk is held; a body must be read
 * before the next entry is asked for, or it is skipped.
 * @throws InvalidArgumentError for a malformed or unsafe archive, or one over `limits`
 */
export async function* readTar(source: AsyncIterable<Uint8Array>, limits: TarLimits): AsyncGenerator<TarReadEntry> {
  const it = source[Symbol.asyncIterator]();
  // Decompression is refused: zstd and brotli are off here, and a gzip stream is refused below.
  const parser = new Parser({ strict: true, maxMetaEntrySize: MAX_META_BYTES, zstd: false, brotli: false });
  const parsed: Parsed[] = [];
  let failure: InvalidArgumentError | undefined;
  let sawEndMarker = false;
  let parserDone = false;
  let sourceDone = false;
  let first = true;
  parser.on("entry", (e: ReadEntry) => {
    anyEntry = true;
    const p: Parsed = { e, chunks: [], ended: false, skipped: false };
    parsed.push(p);
    e.on("data", (c: Buffer) => {
      if (!p.skipped) p.chunks.push(c);
    });
    e.on("end", () => {
      p.ended = true;
    });
  });
  parser.on("ignoredEntry", (e: ReadEntry) => {
    if (e.meta) failure ??= new InvalidArgumentError(`Archive metadata record is ${e.size} bytes, over the limit of ${MAX_META_BYTES}`);
  });
  parser.on("eof", () => {
    sawEndMarker = true;
  });
  let anyEntry = false;
  parser.on("error", (err: unknown) => {
    // An archive of only its end marker (an empty tree) is one node-tar calls unrecognized.
    const emptyTree = sawEndMarker && !anyEntry && (err as { tarCode?: string }).tarCode === "TAR_BAD_ARCHIVE" && /Unrecognized archive format/.test(String((err as Error).message));
    if (!emptyTree) failure ??= archiveError(err);
  });
  parser.on("end", () => {
    parserDone = true;
  });

  /** Passes one more source chunk (or the source's end) to the parser. */
  async function feed(): Promise<void> {
    if (sourceDone) throw new InvalidArgumentError("Archive is truncated");
    const next = await it.next();
    if (next.done === true) {
      sourceDone = true;
      parser.end();
    } else if (next.value.length > 0) {
      const chunk = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
      if (first && chunk[0] === 0x1f) throw new InvalidArgumentError("Archive is compressed, or not a tar archive: send it uncompressed");
      first = false;
      parser.write(chunk);
    }
    if (failure !== undefined) throw failure;
  }

  let entries = 0;
  let bytes = 0;
  try {
    for (;;) {
      while (parsed.length === 0 && !parserDone) await feed();
      const p = parsed.shift();
      if (p === undefined) {
        if (!sawEndMarker) throw new InvalidArgumentError("Archive ends without its end marker: it is truncated");
        return;
      }
      const e = p.e;
      entries += 1;
      if (entries > limits.maxEntries) throw new InvalidArgumentError(`Archive has more than ${limits.maxEntries} entries`);
      const path = normalizeTarPath(utf8Text(e.path, "path"));
      const kind: TarEntryType = ENTRY_TYPE[e.type] ?? "other";
      const size = e.size;
      if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`Archive header has an invalid size: ${String(size)}`);
      if (kind === "file") {
        bytes += size;
        if (bytes > limits.maxBytes) throw new InvalidArgumentError(`Archive holds more than ${limits.maxBytes} bytes of files`);
      }
      const mtimeMs = e.mtime?.getTime() ?? 0;
      const entry: TarEntry = {
        path,
        type: kind,
        mode: (e.mode ?? 0) & 0o777,
        size: kind === "file" ? size : 0,
        mtimeMs: Number.isFinite(mtimeMs) ? mtimeMs : 0,
        ...(kind === "symlink" ? { linkTarget: utf8Text(e.linkpath ?? "", "link name") } : {}),
      };
      const current = p;
      async function* body(): AsyncGenerator<Uint8Array> {
        for (;;) {
          const c = current.chunks.shift();
          if (c !== undefined) yield c;
          else if (current.ended || current.skipped) return;
          else await feed();
        }
      }
      if (path !== "") yield { entry, body: body() };
      p.skipped = true;
      p.chunks.length = 0;
      while (!p.ended) await feed();
    }
  } finally {
    if (!sourceDone) await it.return?.();
  }
}
