/**
 * `sandbox.files`: read, write and manage files inside the sandbox. Contents stream both ways;
 * whole-file reads into memory are capped.
 */
import { ReadableStream } from "node:stream/web";
import {
  InvalidArgumentError,
  NotFoundError,
  type CallOptions,
  type DirListingResult,
  type EngineApi,
  type FileInfo,
  type AuditReceiptRef,
  MAX_TREE_ENTRIES,
  isSandboxPath,
  tarEnd,
  tarHeader,
  tarPadding,
  type TreeOptions,
  type TreeWriteResult,
} from "@mvm/protocol";
import { callOptions } from "./_internal/call-options.js";
import { extractTarToDir, packLocalDir } from "./local-tree.js";
import { startWatch, type FileWatcher, type WatchOptions } from "./watch.js";

/** Default cap of a read into memory (`text` or `bytes`), in bytes (64 MiB). */
export const DEFAULT_MAX_READ_BYTES = 64 * 1024 * 1024;

export interface ReadOptions extends CallOptions {
  /**
   * `text`: a string decoded as UTF-8. `bytes`: a Uint8Array. `stream`: a ReadableStream that
   * pulls from the sandbox only as fast as it is read.
   * @default "text"
   */
  format?: "text" | "bytes" | "stream";
  /** Largest file read into memory (`text`, `bytes`), in bytes; larger files throw before any byte is read. @default 67108864 (64 MiB) */
  maxBytes?: number;
}

export interface WriteOptions extends CallOptions {
  /** Permission bits of a new file. @default 0o644 */
  mode?: number;
  /** Create missing parent directories. @default true */
  createParents?: boolean;
}

/** What {@link Files.write} accepts: text (written as UTF-8), bytes, or a stream of byte chunks. */
export type WriteData = string | Uint8Array | AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>;

export interface WriteResult {
  path: string;
  /** Bytes written. */
  bytes: number;
  /** The plan of the sandbox and the audit entry recording this write. */
  receipt?: AuditReceiptRef;
}

/** One file of {@link Files.writeMany}. */
export interface ManyFile {
  /** Absolute, normalized path in the sandbox. */
  path: string;
  /** Contents: text (written as UTF-8) or bytes. */
  data: string | Uint8Array;
  /** Permission bits. @default 0o644 */
  mode?: number;
}

/** Files of one sandbox. Paths are absolute and normalized (no `..`). */
export class Files {
  readonly #engine: EngineApi;
  readonly #sandboxId: string;

  /** @internal Built by Sandbox. */
  constructor(engine: EngineApi, sandboxId: string) {
    this.#engine = engine;
    this.#sandboxId = sandboxId;
  }

  /**
   * Reads a file.
   * @throws NotFoundError when it does not exist
   * @throws InvalidArgumentError when a `text`/`bytes` read is over `maxBytes`
   * @example
   * const text = await sb.files.read("/work/a.txt");
   * const bytes = await sb.files.read("/work/a.bin", { format: "bytes" });
   * const stream = await sb.files.read("/work/big.tar", { format: "stream" });
   */
  read(path: string, options?: ReadOptions & { format?: "text" }): Promise<string>;
  read(path: string, options: ReadOptions & { format: "bytes" }): Promise<Uint8Array>;
  read(path: string, options: ReadOptions & { format: "stream" }): Promise<ReadableStream<Uint8Array>>;
  async read(path: string, options: ReadOptions = {}): Promise<string | Uint8Array | ReadableStream<Uint8Array>> {
    const format = options.format ?? "text";
    const maxBytes = options.maxBytes ?? DEFAULT_MAX_READ_BYTES;
    const file = await this.#engine.readFile(this.#sandboxId, path, callOptions(options));
    const iterator = file.body[Symbol.asyncIterator]();
    if (format === "stream") return toReadableStream(iterator);
    if (file.size > maxBytes) {
      await iterator.return?.();
      throw new InvalidArgumentError(`File "${path}" is ${file.size} bytes, over the read limit of ${maxBytes}`, {
        hint: 'Read it with { format: "stream" }, or raise maxBytes',
      });
    }
    const bytes = new Uint8Array(file.size);
    let at = 0;
    for (;;) {
      const next = await iterator.next();
      if (next.done === true) break;
      if (at + next.value.byteLength > file.size) {
        await iterator.return?.();
        throw new InvalidArgumentError(`File "${path}" grew past its announced ${file.size} bytes while being read`);
      }
      bytes.set(next.value, at);
      at += next.value.byteLength;
    }
    const data = at === file.size ? bytes : bytes.subarray(0, at);
    return format === "bytes" ? data : new TextDecoder("utf-8").decode(data);
  }

  /**
   * Writes a file, replacing it when it exists. Streams are read only as fast as the sandbox
   * takes them.
   * @example
   * await sb.files.write("/work/a.txt", "hi");
   * await sb.files.write("/work/big.bin", createReadStream("big.bin"));
   */
  async write(path: string, data: WriteData, options: WriteOptions = {}): Promise<WriteResult> {
    const opts: WriteOptions = callOptions(options);
    if (options.mode !== undefined) opts.mode = options.mode;
    if (options.createParents !== undefined) opts.createParents = options.createParents;
    const { bytes, receipt } = await this.#engine.writeFile(this.#sandboxId, path, toSource(data), opts);
    return receipt ? { path, bytes, receipt } : { path, bytes };
  }

  /**
   * Lists a directory. `truncated` is true when it holds more entries than the engine returns.
   * @example
   * const { entries } = await sb.files.list("/work");
   */
  list(path: string, options?: CallOptions): Promise<DirListingResult> {
    return this.#engine.listDir(this.#sandboxId, path, options);
  }

  /**
   * Describes a file or directory (symlinks are not followed); `size` in bytes, `mtimeMs` in ms since the epoch.
   * @throws NotFoundError
   * @example
   * const { size, type } = await sb.files.stat("/work/a.txt");
   */
  stat(path: string, options?: CallOptions): Promise<FileInfo> {
    return this.#engine.stat(this.#sandboxId, path, options);
  }

  /**
   * True when something exists at `path`.
   * @example
   * if (!(await sb.files.exists("/work/out"))) await sb.files.mkdir("/work/out");
   */
  async exists(path: string, options?: CallOptions): Promise<boolean> {
    try {
      await this.#engine.stat(this.#sandboxId, path, options);
      return true;
    } catch (err) {
      if (err instanceof NotFoundError) return false;
      throw err;
    }
  }

  /**
   * Creates a directory.
   * @param options.recursive create missing parents, and succeed when it exists. @default true
   * @example
   * await sb.files.mkdir("/work/a/b/c");
   */
  mkdir(path: string, options: CallOptions & { recursive?: boolean } = {}): Promise<void> {
    return this.#engine.mkdir(this.#sandboxId, path, options.recursive ?? true, callOptions(options));
  }

  /**
   * Removes a file, or a directory (`recursive` for a non-empty one).
   * @param options.recursive @default false
   * @example
   * await sb.files.remove("/work/build", { recursive: true });
   */
  remove(path: string, options: CallOptions & { recursive?: boolean } = {}): Promise<void> {
    return this.#engine.remove(this.#sandboxId, path, options.recursive ?? false, callOptions(options));
  }

  /**
   * Renames (moves) a file or directory inside the sandbox.
   * @example
   * await sb.files.rename("/work/out.tmp", "/work/out.json");
   */
  rename(from: string, to: string, options?: CallOptions): Promise<void> {
    return this.#engine.rename(this.#sandboxId, from, to, options);
  }

  /**
   * Watches a directory for changes (inotify, through a watcher process in the sandbox that runs as
   * the workload's user). Resolves once watching; iterate the result for events, and close it (or
   * leave the loop) to stop. Events not read yet are kept up to `maxQueuedEvents`; past that they
   * are dropped and one `overflow` event says how many.
   * @throws NotFoundError when `path` does not exist; InvalidArgumentError when it is not a directory
   * @example
   * await using watcher = await sb.files.watch("/work", { recursive: true });
   * for await (const event of watcher) {
   *   if (event.type === "create" && event.path.endsWith(".done")) break;
   * }
   */
  watch(path: string, options: WatchOptions = {}): Promise<FileWatcher> {
    return startWatch(this.#engine, this.#sandboxId, path, options);
  }

  /**
   * Writes many files in one call (one tar stream on the wire), creating parent directories.
   * Each file is audited like {@link Files.write}.
   * @throws InvalidArgumentError for a path that is not absolute and normalized, or a bad mode
   * @example
   * await sb.files.writeMany([
   *   { path: "/work/a.py", data: "print(1)" },
   *   { path: "/work/run.sh", data: "#!/bin/sh\necho hi\n", mode: 0o755 },
   * ]);
   */
  async writeMany(files: readonly ManyFile[], options: CallOptions = {}): Promise<TreeWriteResult> {
    if (files.length > MAX_TREE_ENTRIES) throw new InvalidArgumentError(`Cannot write ${files.length} files in one call: the limit is ${MAX_TREE_ENTRIES}`);
    const encoded = files.map((f) => {
      if (typeof f.path !== "string" || !isSandboxPath(f.path) || f.path === "/") {
        throw new InvalidArgumentError(`Invalid sandbox path: ${JSON.stringify(String(f.path).slice(0, 200))}`, { hint: "Paths are absolute, without '.' or '..' segments" });
      }
      const mode = f.mode ?? 0o644;
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new InvalidArgumentError(`Invalid file mode for "${f.path}": ${JSON.stringify(mode)}`);
      const data = typeof f.data === "string" ? new TextEncoder().encode(f.data) : f.data;
      if (!(data instanceof Uint8Array)) throw new InvalidArgumentError(`File data for "${f.path}" must be a string or Uint8Array`);
      return { path: f.path.slice(1), data, mode };
    });
    async function* tar(): AsyncGenerator<Uint8Array> {
      const now = Date.now();
      for (const f of encoded) {
        yield tarHeader({ path: f.path, type: "file", mode: f.mode, size: f.data.byteLength, mtimeMs: now });
        yield f.data;
        yield tarPadding(f.data.byteLength);
      }
      yield tarEnd();
    }
    return this.#engine.writeTree(this.#sandboxId, "/", tar(), callOptions(options));
  }

  /**
   * Unpacks a tar archive (a stream or bytes) into the directory `path`, made when missing. Only
   * files and directories are written; links and special files are counted in `skipped`.
   * @throws InvalidArgumentError for an unsafe or malformed archive (absolute paths, "..", truncated)
   * @example
   * await sb.files.writeTar("/work/src", createReadStream("src.tar"));
   */
  writeTar(path: string, tar: WriteData, options: TreeOptions = {}): Promise<TreeWriteResult> {
    const source = toSource(tar);
    return this.#engine.writeTree(this.#sandboxId, path, source instanceof Uint8Array ? once(source) : source, treeOptions(options));
  }

  /**
   * The directory `path` and everything under it as a tar stream (files and directories; links
   * are left out), read from the sandbox only as fast as it is consumed.
   * @throws NotFoundError when `path` does not exist; InvalidArgumentError when it is not a directory
   * @example
   * await pipeline(Readable.fromWeb(await sb.files.readTar("/work/out")), createWriteStream("out.tar"));
   */
  async readTar(path: string, options: TreeOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const tar = await this.#engine.readTree(this.#sandboxId, path, treeOptions(options));
    return toReadableStream(tar[Symbol.asyncIterator]());
  }

  /**
   * Copies the local directory `localDir` into the sandbox directory `path` (symlinks are not
   * followed and not copied).
   * @example
   * await sb.files.uploadDir("./project", "/work/project");
   */
  uploadDir(localDir: string, path: string, options: TreeOptions = {}): Promise<TreeWriteResult> {
    return this.#engine.writeTree(this.#sandboxId, path, packLocalDir(localDir, options).tar, treeOptions(options));
  }

  /**
   * Copies the sandbox directory `path` into the local directory `localDir` (made when missing).
   * Path-safe: nothing lands outside `localDir` or passes through a symlink there, whatever the
   * sandbox sends.
   * @example
   * await sb.files.downloadDir("/work/out", "./out");
   */
  async downloadDir(path: string, localDir: string, options: TreeOptions = {}): Promise<TreeWriteResult> {
    const tar = await this.#engine.readTree(this.#sandboxId, path, treeOptions(options));
    return extractTarToDir(tar, localDir, options);
  }
}

function treeOptions(options: TreeOptions): TreeOptions {
  const out: TreeOptions = callOptions(options);
  if (options.maxEntries !== undefined) out.maxEntries = options.maxEntries;
  if (options.maxBytes !== undefined) out.maxBytes = options.maxBytes;
  return out;
}

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data;
}

/** A pull-based stream: the next chunk is fetched only when the reader asks for it. */
function toReadableStream(iterator: AsyncIterator<Uint8Array>): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const next = await iterator.next();
        if (next.done === true) controller.close();
        else controller.enqueue(next.value);
      },
      async cancel() {
        await iterator.return?.();
      },
    },
    { highWaterMark: 0 },
  );
}

function toSource(data: WriteData): Uint8Array | AsyncIterable<Uint8Array> {
  if (typeof data === "string") return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ReadableStream) return fromReadableStream(data);
  if (data !== null && typeof data === "object" && Symbol.asyncIterator in data) return data;
  throw new InvalidArgumentError(`File data must be a string, Uint8Array, async iterable or ReadableStream, not "${typeof data}"`);
}

async function* fromReadableStream(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  let finished = false;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) {
        finished = true;
        return;
      }
      yield next.value;
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
