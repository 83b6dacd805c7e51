/**
 * Reattach (docs/TERMINALS.md): each running process keeps a bounded backlog of its latest
 * output (after redaction), and any client can attach to it: the backlog first, then live
 * output, then the exit. The process's first caller keeps the back-pressure (its handler holds
 * the workload); an attached client never slows the workload: it gets a queue of at most
 * MAX_ATTACH_LAG_BYTES, and one that falls further behind is detached with TransportError.
 */
import { AbortedError, NotFoundError, TransportError, type ExecHandlers, type ExitInfo, isPromiseLike } from "@mvm/protocol";

/** Output an attached client may have waiting before it is detached, in bytes (1 MiB past the backlog it started with). */
export const MAX_ATTACH_LAG_BYTES = 1024 * 1024;

type StreamName = "stdout" | "stderr";
interface Piece {
  readonly stream: StreamName;
  readonly bytes: Uint8Array;
}

/** One attached client: a queue delivered one chunk at a time, in order. */
class Attachment {
  readonly #queue: Piece[] = [];
  #queued = 0;
  #pumping = false;
  #failed: Error | undefined;
  #idle: Array<() => void> = [];

  constructor(
    private readonly handlers: ExecHandlers,
    private readonly limitBytes: number,
    private readonly onFail: (error: Error) => void,
  ) {}

  push(piece: Piece): void {
    if (this.#failed !== undefined) return;
    if (this.#queued + piece.bytes.byteLength > this.limitBytes) {
      this.fail(new TransportError(`Attached client fell more than ${this.limitBytes} bytes behind the process's output; attach again`));
      return;
    }
    this.#queue.push(piece);
    this.#queued += piece.bytes.byteLength;
    if (!this.#pumping) void this.#pump();
  }

  fail(error: Error): void {
    if (this.#failed !== undefined) return;
    this.#failed = error;
    this.#queue.length = 0;
    this.#queued = 0;
    this.onFail(error);
    this.#wake();
  }

  /** Resolves once every queued chunk was handed over; rejects if the attachment failed. */
  drained(): Promise<void> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    if (!this.#pumping && this.#queue.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#idle.push(() => (this.#failed !== undefined ? reject(this.#failed) : resolve()));
    });
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      while (this.#queue.length > 0 && this.#failed === undefined) {
        const piece = this.#queue.shift()!;
        try {
          const handler = piece.stream === "stdout" ? this.handlers.onStdout : this.handlers.onStderr;
          const r = handler?.call(this.handlers, piece.bytes);
          if (isPromiseLike(r)) await r;
        } catch (err) {
          this.fail(err instanceof Error ? err : new Error(String(err)));
        }
        this.#queued -= piece.bytes.byteLength;
      }
    } finally {
      this.#pumping = false;
      this.#wake();
    }
  }

  #wake(): void {
    for (const f of this.#idle.splice(0)) f();
  }
}

/** The output record of one running process. */
export class ProcessOutput {
  readonly #backlog: Piece[] = [];
  #backlogBytes = 0;
  readonly #attached = new Set<Attachment>();
  #exit: Promise<ExitInfo> | undefined;

  /** pid inside the sandbox, once the process started. */
  pid = 0;

  constructor(private readonly backlogBytes: number) {}

  /** Records a chunk the process wrote (already redacted) and copies it to every attached client. */
  record(stream: StreamName, chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    const piece = { stream, bytes: Uint8Array.from(chunk) };
    for (const a of this.#attached) a.push(piece);
    if (this.backlogBytes === 0) return;
    const kept = piece.bytes.byteLength > this.backlogBytes ? { stream, bytes: piece.bytes.subarray(piece.bytes.byteLength - this.backlogBytes) } : piece;
    this.#backlog.push(kept);
    this.#backlogBytes += kept.bytes.byteLength;
    while (this.#backlogBytes > this.backlogBytes) {
      const head = this.#backlog[0]!;
      const over = this.#backlogBytes - this.backlogBytes;
      if (head.bytes.byteLength <= over) {
        this.#backlog.shift();
        this.#backlogBytes -= head.bytes.byteLength;
      } else {
        this.#backlog[0] = { stream: head.stream, bytes: head.bytes.subarray(over) };
        this.#backlogBytes -= over;
      }
    }
  }

  /** The exit the process's first caller gets (with its receipt). */
  setExit(exit: Promise<ExitInfo>): void {
    this.#exit = exit;
  }

  /**
   * Attaches a client: it gets the backlog, then live output; the returned promise settles with
   * the exit once everything was handed over. Aborting `signal` detaches it (AbortedError); the
   * process runs on.
   */
  attach(handlers: ExecHandlers, signal: AbortSignal | undefined): Promise<ExitInfo> {
    const exit = this.#exit;
    if (exit === undefined) return Promise.reject(new NotFoundError(`Process ${this.pid} is not ready to attach to`));
    let fail!: (error: Error) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    failed.catch(() => {});
    const attachment = new Attachment(handlers, this.#backlogBytes + MAX_ATTACH_LAG_BYTES, (error) => {
      this.#attached.delete(attachment);
      fail(error);
    });
    for (const piece of this.#backlog) attachment.push(piece);
    this.#attached.add(attachment);
    const detach = (): void => attachment.fail(new AbortedError(`Attachment to process ${this.pid} was ended by its caller`, { cause: signal?.reason }));
    if (signal?.aborted) detach();
    else signal?.addEventListener("abort", detach, { once: true });
    // Every chunk recorded before the exit is already queued: the exit follows the last of them.
    const delivered = exit.then(
      async (info) => {
        await attachment.drained();
        return info;
      },
      async (err: unknown) => {
        await attachment.drained().catch(() => {});
        throw err;
      },
    );
    return Promise.race([delivered, failed]).finally(() => {
      signal?.removeEventListener("abort", detach);
      this.#attached.delete(attachment);
    });
  }
}
