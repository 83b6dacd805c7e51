/**
 * readFile and writeFile: file contents streamed over data streams, memory bounded by the
 * stream window whatever the file size.
 */
import { randomBytes } from "node:crypto";
import { constants, unlinkSync } from "node:fs";
import { mkdir, open, rename, unlink, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import {
  AbortedError,
  ErrorCode,
  InvalidArgumentError,
  MvmError,
  type RequestOf,
  type ResultOf,
} from "@mvm/protocol";
import { assertSandboxPath, fsError, quote, toErrorBody, type ErrorBody } from "./errors.js";
import { MAX_CHUNK_BYTES, type InboundSink, type InboundStream, type OutboundSource, type OutboundStream } from "./link.js";
import type { RequestContext } from "./context.js";

const READ_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;
const TEMP_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_NOCTTY;

async function step<T>(work: Promise<T>, action: string, path: string): Promise<T> {
  try {
    return await work;
  } catch (err) {
    throw err instanceof MvmError ? err : fsError(err, action, path);
  }
}

/**
 * Opens a regular file, answers with its size at open, then streams exactly that many bytes
 * (reading only as the host's credit allows) and ends the stream.
 */
export async function readFile(req: RequestOf<"readFile">, ctx: RequestContext): Promise<ResultOf<"readFile">> {
  assertSandboxPath(req.path);
  const reader = new FileReader(req.path);
  const stream = ctx.link.openOutbound(req.stream, reader);
  let fh: FileHandle | undefined;
  let size: number;
  try {
    fh = await step(open(req.path, READ_FLAGS), "Cannot open", req.path);
    const st = await step(fh.stat(), "Cannot stat", req.path);
    if (!st.isFile()) throw new InvalidArgumentError(`Cannot read ${quote(req.path)}: not a regular file`);
    size = st.size;
  } catch (err) {
    stream.close();
    await fh?.close().catch(() => undefined);
    throw err;
  }
  const handle = fh;
  ctx.afterResponse(() => void reader.run(handle, size, stream));
  return { size };
}

class FileReader implements OutboundSource {
  #wake: (() => void) | undefined;

  constructor(private readonly path: string) {}

  writable(): void {
    this.#wake?.();
  }

  abort(_error: ErrorBody): void {
    this.#wake?.();
  }

  async run(fh: FileHandle, size: number, stream: OutboundStream): Promise<void> {
    const buf = Buffer.allocUnsafe(MAX_CHUNK_BYTES);
    let offset = 0;
    try {
      while (offset < size && stream.open) {
        const room = stream.room;
        if (room <= 0) {
          await new Promise<void>((resolve) => (this.#wake = resolve));
          this.#wake = undefined;
          continue;
        }
        const want = Math.min(MAX_CHUNK_BYTES, room, size - offset);
        const { bytesRead } = await fh.read(buf, 0, want, offset);
        if (bytesRead === 0) {
          stream.abort({
            code: ErrorCode.Internal,
            message: `File ${quote(this.path)} shrank while being read: got ${offset} of ${size} bytes`,
          });
          return;
        }
        stream.write(buf.subarray(0, bytesRead));
        offset += bytesRead;
      }
      stream.end();
    } catch (err) {
      stream.abort(toErrorBody(fsError(err, "Cannot read", this.path)));
    } finally {
      await fh.close().catch(() => undefined);
    }
  }
}

/**
 * Streams host data into a temporary file (created O_EXCL beside the target), then renames it
 * over the target on END. On any failure the temporary file is removed and the stream's
 * remaining frames are discarded.
 */
export async function writeFile(req: RequestOf<"writeFile">, ctx: RequestContext): Promise<ResultOf<"writeFile">> {
  assertSandboxPath(req.path);
  if (req.path === "/") throw new InvalidArgumentError(`Cannot write ${quote(req.path)}: is a directory`);
  const writer = new FileWriter(req.path);
  const stream = ctx.link.openInbound(req.stream, writer);
  writer.stream = stream;
  const dir = dirname(req.path);
  let temp: string | undefined;
  let fh: FileHandle | undefined;
  let forget: (() => void) | undefined;
  try {
    if (req.createParents) await step(mkdir(dir, { recursive: true }), "Cannot create parent directory", dir);
    const candidate = join(dir, `.mvm-upload-${randomBytes(8).toString("hex")}.tmp`);
    fh = await step(open(candidate, TEMP_FLAGS, req.mode), "Cannot write", req.path);
    temp = candidate;
    forget = ctx.onExit(() => unlinkSync(candidate));
    await step(fh.chmod(req.mode), "Cannot set the mode of", req.path);
    const bytes = await writer.run(fh);
    const closing = fh;
    fh = undefined;
    await step(closing.close(), "Cannot write", req.path);
    await step(rename(candidate, req.path), "Cannot replace", req.path);
    temp = undefined;
    return { bytes };
  } catch (err) {
    stream.close();
    writer.fail(err);
    await fh?.close().catch(() => undefined);
    if (temp !== undefined) await unlink(temp).catch(() => undefined);
    throw err;
  } finally {
    forget?.();
  }
}

class FileWriter implements InboundSink {
  stream: InboundStream | undefined;
  readonly #queue: Buffer[] = [];
  #fh: FileHandle | undefined;
  #ended = false;
  #writing = false;
  #failure: unknown;
  #bytes = 0;
  #settle: { resolve: (bytes: number) => void; reject: (err: unknown) => void } | undefined;

  constructor(private readonly path: string) {}

  data(chunk: Buffer): void {
    if (this.#failure !== undefined) return;
    this.#queue.push(chunk);
    void this.#pump();
  }

  end(): void {
    this.#ended = true;
    void this.#pump();
  }

  abort(error: ErrorBody): void {
    this.fail(new AbortedError(`Upload to ${quote(this.path)} aborted by the host: ${error.message}`));
  }

  /** Records the first failure and rejects the pending run(). */
  fail(err: unknown): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    this.#queue.length = 0;
    this.#settle?.reject(err);
  }

  /** Writes everything queued and arriving until END; resolves with the byte count. */
  run(fh: FileHandle): Promise<number> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    this.#fh = fh;
    const done = new Promise<number>((resolve, reject) => (this.#settle = { resolve, reject }));
    void this.#pump();
    return done;
  }

  async #pump(): Promise<void> {
    const fh = this.#fh;
    if (!fh || this.#writing || this.#failure !== undefined) return;
    this.#writing = true;
    try {
      for (let chunk = this.#queue.shift(); chunk; chunk = this.#queue.shift()) {
        for (let at = 0; at < chunk.length; ) {
          const { bytesWritten } = await fh.write(chunk, at, chunk.length - at, null);
          at += bytesWritten;
        }
        if (this.#failure !== undefined) return;
        this.#bytes += chunk.length;
        this.stream?.consumed(chunk.length);
      }
    } catch (err) {
      this.fail(fsError(err, "Cannot write", this.path));
      return;
    } finally {
      this.#writing = false;
    }
    if (this.#ended && this.#failure === undefined) this.#settle?.resolve(this.#bytes);
  }
}

