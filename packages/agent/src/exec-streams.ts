/**
 * Moving bytes between a child's pipes and the channel: OutputPump forwards stdout/stderr under
 * the host's credit and the output cap; StdinSink writes host data into the child's stdin.
 */
import type { Readable, Writable } from "node:stream";
import { errnoOf, logError, type ErrorBody } from "./errors.js";
import type { InboundSink, InboundStream, OutboundSource, OutboundStream } from "./link.js";

/** Bytes read ahead of the host's credit per output stream before the pipe is paused. */
export const READ_AHEAD_BYTES = 256 * 1024;

/**
 * Reads one child pipe and forwards it on an outbound stream. Past `capBytes` it keeps draining
 * and drops the bytes, so the cap never blocks the child; when the host's credit is used up it
 * pauses the pipe, so the child blocks instead of the agent buffering.
 */
export class OutputPump implements OutboundSource {
  /** Bytes the child wrote to the pipe. */
  produced = 0;
  /** True once bytes were dropped: past the cap, or after the host aborted the stream. */
  truncated = false;
  #forwarded = 0;
  readonly #pending: Buffer[] = [];
  #pendingBytes = 0;
  #pipe: Readable | undefined;
  #paused = false;
  #eof = false;
  #discard = false;
  #done = false;
  stream: OutboundStream | undefined;

  constructor(
    private readonly capBytes: number,
    private readonly onDone: () => void,
  ) {}

  /** True once the pipe is closed (EOF, error or forced). */
  get eof(): boolean {
    return this.#eof;
  }

  /** True once the pipe is closed and everything forwarded (END sent or the host aborted). */
  get done(): boolean {
    return this.#done;
  }

  attach(pipe: Readable): void {
    this.#pipe = pipe;
    pipe.on("data", (chunk: Buffer) => this.#onData(chunk));
    pipe.on("end", () => this.#onEof());
    pipe.on("close", () => this.#onEof());
    pipe.on("error", (err) => {
      // A terminal's master reads EIO once the last descriptor of its slave side is closed: its end.
      if (errnoOf(err) !== "EIO") logError("child output pipe failed", err);
      this.#onEof();
    });
  }

  /** Stops reading the pipe now; what is already read is still forwarded. */
  forceClose(): void {
    this.#pipe?.destroy();
    this.#onEof();
  }

  writable(): void {
    this.#flush();
  }

  abort(_error: ErrorBody): void {
    this.#discard = true;
    if (this.#pendingBytes > 0) this.truncated = true;
    this.#pending.length = 0;
    this.#pendingBytes = 0;
    this.#flush();
  }

  #onData(chunk: Buffer): void {
    this.produced += chunk.length;
    if (this.#discard) {
      // The host aborted the stream: what it did not get is reported as truncated.
      if (chunk.length > 0) this.truncated = true;
      return;
    }
    const take = Math.min(chunk.length, Math.max(0, this.capBytes - this.#forwarded));
    if (take < chunk.length) this.truncated = true;
    if (take > 0) {
      this.#forwarded += take;
      this.#pending.push(take === chunk.length ? chunk : chunk.subarray(0, take));
      this.#pendingBytes += take;
    }
    this.#flush();
  }

  #onEof(): void {
    if (this.#eof) return;
    this.#eof = true;
    this.#flush();
  }

  #flush(): void {
    const stream = this.stream;
    while (stream && this.#pending.length > 0) {
      const room = stream.room;
      if (room <= 0) break;
      const head = this.#pending[0]!;
      const n = Math.min(room, head.length);
      stream.write(head.subarray(0, n));
      this.#pendingBytes -= n;
      if (n === head.length) this.#pending.shift();
      else this.#pending[0] = head.subarray(n);
    }
    if (this.#pipe && !this.#eof) {
      const full = this.#pendingBytes >= READ_AHEAD_BYTES;
      if (full && !this.#paused) {
        this.#paused = true;
        this.#pipe.pause();
      } else if (!full && this.#paused) {
        this.#paused = false;
        this.#pipe.resume();
      }
    }
    if (this.#eof && this.#pending.length === 0 && !this.#done) {
      this.#done = true;
      stream?.end();
      this.onDone();
    }
  }
}

/**
 * Writes host data into a child's stdin. Credit is granted as each write completes, so the host
 * can never have more than one window in flight. Once the child's stdin is gone (closed by the
 * child, the host aborted, or the process finished) data is dropped and credited at once.
 */
export class StdinSink implements InboundSink {
  #pipe: Writable | undefined;
  readonly #early: Buffer[] = [];
  #endRequested = false;
  #discard = false;
  stream: InboundStream | undefined;

  /** Starts writing to the child's stdin; data that arrived before spawn is written first. */
  attach(pipe: Writable): void {
    this.#pipe = pipe;
    pipe.on("error", () => {
      // EPIPE once the child closes its stdin: the rest is dropped.
      this.#discard = true;
    });
    for (const chunk of this.#early.splice(0)) this.#write(chunk);
    if (this.#endRequested) pipe.end();
  }

  data(chunk: Buffer): void {
    if (this.#pipe) this.#write(chunk);
    else if (this.#discard) this.stream?.consumed(chunk.length);
    else this.#early.push(chunk);
  }

  end(): void {
    this.#endRequested = true;
    this.#pipe?.end();
  }

  abort(_error: ErrorBody): void {
    this.close();
  }

  /** Closes the child's stdin and drops anything still pending. */
  close(): void {
    this.#discard = true;
    this.#early.length = 0;
    this.#pipe?.destroy();
  }

  #write(chunk: Buffer): void {
    const pipe = this.#pipe!;
    if (this.#discard || pipe.destroyed || pipe.writableEnded) {
      this.stream?.consumed(chunk.length);
      return;
    }
    pipe.write(chunk, () => this.stream?.consumed(chunk.length));
  }
}
