/**
 * The tar stream that carries a directory tree between a client and the engine (directory upload
 * and download), written and read here with bounds, so no side trusts the other's archive.
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
 * sizes) and refuses the rest with InvalidArgumentError: a bad checksum, a path that is absolute,
 * holds "..", NUL or non-UTF-8, more entries or bytes than the caller's limits. Paths come out
 * relative and normalized ("a/b", never "./a//b/"). Pure: no I/O.
 */
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
const utf8 = new TextDecoder("utf-8", { fatal: true });
const enc = new TextEncoder();

/** Two zero blocks: the end of an archive. */
export function tarEnd(): Uint8Array {
  return new Uint8Array(2 * BLOCK);
}

/** Zeros that pad a body of `size` bytes to a whole block. */
export function tarPadding(size: number): Uint8Array {
  return new Uint8Array((BLOCK - (size % BLOCK)) % BLOCK);
}

/**
 * The header block(s) of `entry`: a pax record first when the path, link target or size does not
 * fit the ustar fields. The body (for a file) and {@link tarPadding} follow.
 */
export function tarHeader(entry: TarEntry): Uint8Array {
  const path = entry.type === "dir" ? `${entry.path}/` : entry.path;
  const pax: string[] = [];
  const pathBytes = enc.encode(path);
  const split = splitUstarName(pathBytes);
  if (split === undefined || !isAscii(path)) pax.push(paxRecord("path", path));
  const link = entry.linkTarget ?? "";
  if (enc.encode(link).length > 100 || !isAscii(link)) pax.push(paxRecord("linkpath", link));
  if (entry.size >= 8 ** 11) pax.push(paxRecord("size", String(entry.size)));
  const main = ustarBlock({
    name: split?.name ?? asciiFallback(path).slice(-99),
    prefix: split?.prefix ?? "",
    mode: entry.mode & 0o777,
    size: entry.size < 8 ** 11 ? entry.size : 0,
    mtime: Math.max(0, Math.floor(entry.mtimeMs / 1000)),
    type: entry.type === "file" ? "0" : entry.type === "dir" ? "5" : entry.type === "symlink" ? "2" : "0",
    link: isAscii(link) && link.length <= 100 ? link : "",
  });
  if (pax.length === 0) return main;
  const body = enc.encode(pax.join(""));
  const head = ustarBlock({ name: "PaxHeader", prefix: "", mode: 0o644, size: body.length, mtime: 0, type: "x", link: "" });
  const out = new Uint8Array(head.length + body.length + tarPadding(body.length).length + main.length);
  out.set(head, 0);
  out.set(body, BLOCK);
  out.set(main, out.length - BLOCK);
  return out;
}

function isAscii(s: string): boolean {
  return /^[\x20-\x7e]*$/.test(s);
}

function asciiFallback(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, "_");
}

function splitUstarName(bytes: Uint8Array): { name: string; prefix: string } | undefined {
  const s = new TextDecoder().decode(bytes);
  if (bytes.length <= 100) return { name: s, prefix: "" };
  for (let i = s.indexOf("/"); i !== -1; i = s.indexOf("/", i + 1)) {
    if (i <= 155 && s.length - i - 1 <= 100 && s.length - i - 1 > 0) return { name: s.slice(i + 1), prefix: s.slice(0, i) };
  }
  return undefined;
}

/** One pax record "LEN key=value\n", where LEN counts the whole record including its own digits. */
function paxRecord(key: string, value: string): string {
  const rest = enc.encode(` ${key}=${value}\n`).length;
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return `${len} ${key}=${value}\n`;
}

function ustarBlock(f: { name: string; prefix: string; mode: number; size: number; mtime: number; type: string; link: string }): Uint8Array {
  const b = new Uint8Array(BLOCK);
  const put = (at: number, len: number, s: string): void => {
    b.set(enc.encode(s).subarray(0, len), at);
  };
  const octal = (at: number, len: number, n: number): void => put(at, len, `${n.toString(8).padStart(len - 1, "0")}\0`);
  put(0, 100, f.name);
  octal(100, 8, f.mode);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, f.size);
  octal(136, 12, Math.min(f.mtime, 8 ** 11 - 1));
  b.fill(0x20, 148, 156);
  put(156, 1, f.type);
  put(157, 100, f.link);
  put(257, 6, "ustar\0");
  put(263, 2, "00");
  put(345, 155, f.prefix);
  let sum = 0;
  for (const x of b) sum += x;
  put(148, 8, `${sum.toString(8).padStart(6, "0")}\0 `);
  return b;
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

/** Exact-length reads over a chunk stream, holding at most one chunk beyond what was asked. */
class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  #buf: Uint8Array = new Uint8Array(0);
  #done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async #fill(): Promise<boolean> {
    if (this.#done) return false;
    const next = await this.#it.next();
    if (next.done === true) {
      this.#done = true;
      return false;
    }
    this.#buf = this.#buf.length === 0 ? next.value : concat(this.#buf, next.value);
    return true;
  }

  /** Exactly `n` bytes (n is small: a header or a record), or undefined at a clean end. */
  async exact(n: number): Promise<Uint8Array | undefined> {
    while (this.#buf.length < n) {
      if (!(await this.#fill())) {
        if (this.#buf.length === 0) return undefined;
        throw new InvalidArgumentError("Archive is truncated");
      }
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Up to `max` bytes as they arrive (at least 1). */
  async some(max: number): Promise<Uint8Array> {
    if (this.#buf.length === 0 && !(await this.#fill())) throw new InvalidArgumentError("Archive is truncated");
    const n = Math.min(max, this.#buf.length);
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  async close(): Promise<void> {
    if (!this.#done) await this.#it.return?.();
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function field(b: Uint8Array, at: number, len: number): Uint8Array {
  const s = b.subarray(at, at + len);
  const nul = s.indexOf(0);
  return nul === -1 ? s : s.subarray(0, nul);
}

function text(b: Uint8Array, what: string): string {
  try {
    return utf8.decode(b);
  } catch (cause) {
    throw new InvalidArgumentError(`Archive ${what} is not UTF-8`, { cause });
  }
}

function number(b: Uint8Array, at: number, len: number, what: string): number {
  const s = b.subarray(at, at + len);
  if (s[0] !== undefined && (s[0] & 0x80) !== 0) {
    if (s[0] !== 0x80) throw new InvalidArgumentError(`Archive header has a negative or huge ${what}`);
    let n = 0;
    for (const x of s.subarray(1)) n = n * 256 + x;
    if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`Archive header has a huge ${what}`);
    return n;
  }
  const str = new TextDecoder().decode(field(b, at, len)).trim();
  if (str === "") return 0;
  if (!/^[0-7]+$/.test(str)) throw new InvalidArgumentError(`Archive header has an invalid ${what}: ${JSON.stringify(str.slice(0, 20))}`);
  return parseInt(str, 8);
}

function checksumOk(b: Uint8Array): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (b[i] as number);
  return number(b, 148, 8, "checksum") === sum;
}

function parsePax(body: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  let at = 0;
  while (at < body.length) {
    const sp = body.indexOf(0x20, at);
    if (sp === -1 || sp - at > 20) throw new InvalidArgumentError("Archive has a malformed pax record");
    const len = Number(new TextDecoder().decode(body.subarray(at, sp)));
    if (!Number.isInteger(len) || len <= sp - at + 1 || at + len > body.length || body[at + len - 1] !== 0x0a) {
      throw new InvalidArgumentError("Archive has a malformed pax record");
    }
    const rec = text(body.subarray(sp + 1, at + len - 1), "pax record");
    const eq = rec.indexOf("=");
    if (eq <= 0) throw new InvalidArgumentError("Archive has a malformed pax record");
    out.set(rec.slice(0, eq), rec.slice(eq + 1));
    at += len;
  }
  return out;
}

/** One entry read from an archive; read `body` (once) or leave it, and the reader skips it. */
export interface TarReadEntry {
  entry: TarEntry;
  body: AsyncIterable<Uint8Array>;
}

/**
 * Reads a tar stream entry by entry. Bodies stream (at most one source chunk is held); each must
 * be read before the next entry is asked for, or it is skipped.
 * @throws InvalidArgumentError for a malformed or unsafe archive, or one over `limits`
 */
export async function* readTar(source: AsyncIterable<Uint8Array>, limits: TarLimits): AsyncGenerator<TarReadEntry> {
  const r = new ByteReader(source);
  let entries = 0;
  let bytes = 0;
  let pax = new Map<string, string>();
  let longName: string | undefined;
  let longLink: string | undefined;
  try {
    for (;;) {
      const block = await r.exact(BLOCK);
      if (block === undefined) throw new InvalidArgumentError("Archive ends without its end marker: it is truncated");
      if (block.every((x) => x === 0)) {
        const second = await r.exact(BLOCK);
        if (second === undefined || !second.every((x) => x === 0)) throw new InvalidArgumentError("Archive ends without its end marker: it is truncated");
        return;
      }
      if (!checksumOk(block)) throw new InvalidArgumentError("Archive header checksum does not match: not a tar archive, or corrupt");
      const type = String.fromCharCode(block[156] ?? 0);
      let size = number(block, 124, 12, "size");
      if (type === "x" || type === "g" || type === "L" || type === "K") {
        if (size > MAX_META_BYTES) throw new InvalidArgumentError(`Archive metadata record is ${size} bytes, over the limit of ${MAX_META_BYTES}`);
        const body = (await r.exact(size + tarPadding(size).length)) ?? new Uint8Array(0);
        if (body.length < size) throw new InvalidArgumentError("Archive is truncated");
        const content = body.subarray(0, size);
        if (type === "x") pax = parsePax(content);
        else if (type === "g") parsePax(content);
        else if (type === "L") longName = text(field(content, 0, size), "long name");
        else longLink = text(field(content, 0, size), "long link name");
        continue;
      }
      entries += 1;
      if (entries > limits.maxEntries) throw new InvalidArgumentError(`Archive has more than ${limits.maxEntries} entries`);
      const paxSize = pax.get("size");
      if (paxSize !== undefined) {
        if (!/^[0-9]{1,16}$/.test(paxSize)) throw new InvalidArgumentError("Archive has an invalid pax size");
        size = Number(paxSize);
      }
      const prefix = text(field(block, 345, 155), "path");
      const name = text(field(block, 0, 100), "path");
      const rawPath = pax.get("path") ?? longName ?? (prefix === "" ? name : `${prefix}/${name}`);
      const linkTarget = pax.get("linkpath") ?? longLink ?? text(field(block, 157, 100), "link name");
      pax = new Map();
      longName = undefined;
      longLink = undefined;
      const path = normalizeTarPath(rawPath);
      const kind: TarEntryType =
        type === "0" || type === "\0" || type === "7" ? "file" : type === "5" ? "dir" : type === "2" ? "symlink" : "other";
      const bodySize = kind === "file" || kind === "other" ? size : 0;
      if (kind === "file") {
        bytes += size;
        if (bytes > limits.maxBytes) throw new InvalidArgumentError(`Archive holds more than ${limits.maxBytes} bytes of files`);
      }
      const entry: TarEntry = {
        path,
        type: kind,
        mode: number(block, 100, 8, "mode") & 0o777,
        size: kind === "file" ? size : 0,
        mtimeMs: number(block, 136, 12, "mtime") * 1000,
        ...(kind === "symlink" ? { linkTarget } : {}),
      };
      let left = bodySize;
      async function* body(): AsyncGenerator<Uint8Array> {
        while (left > 0) {
          const chunk = await r.some(Math.min(left, 256 * 1024));
          left -= chunk.length;
          yield chunk;
        }
      }
      if (path !== "") yield { entry, body: body() };
      while (left > 0) left -= (await r.some(Math.min(left, 256 * 1024))).length;
      const pad = tarPadding(bodySize).length;
      if (pad > 0 && (await r.exact(pad)) === undefined) throw new InvalidArgumentError("Archive is truncated");
    }
  } finally {
    await r.close();
  }
}
