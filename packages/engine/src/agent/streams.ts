/**
 * Data streams of one agent session, host side: inbound streams (agent → host) with a credit
 * window the host grants as it consumes, and outbound streams (host → agent) that wait for the
 * agent's credit. Nothing here buffers more than one window per stream.
 */
import { INITIAL_STREAM_WINDOW, isPromiseLike, type MvmError } from "@mvm/protocol";

export const CHUNK_BYTES = 64 * 1024;

export interface FrameSink {
  sendData(stream: number, payload: Uint8Array): Promise<void>;
  sendEnd(stream: number): Promise<void>;
  sendCredit(stream: number, bytes: number): void;
}

/** Thrown inside the session when the agent breaks the protocol. */
export class ProtocolViolation extends Error {
  override readonly name = "ProtocolViolation";
}

/**
 * Hands a chunk to a consumer; a returned promise means the consumer has not taken it yet.
 * What it throws or rejects with fails the delivery.
 */
export type ChunkHandler = (chunk: Uint8Array) => unknown;

/**
 * An inbound stream. Bytes are either pushed to a callback or queued for an async iterator; in
 * both cases a chunk's credit goes back to the agent only once the consumer has taken it (the
 * callback returned, or its promise settled; the iterator pulled it), which is the back-pressure.
 * Callback deliveries are serialized, so the queue never holds more than the credit window.
 * `limit` caps the total the agent may send.
 */
export class InboundStream {
  readonly id: number;
  #window = INITIAL_STREAM_WINDOW;
  #received = 0;
  readonly #limit: number;
  readonly #sink: FrameSink;
  readonly #onChunk: ChunkHandler | undefined;
  #queue: Uint8Array[] = [];
  #ended = false;
  #error: MvmError | undefined;
  #wake: (() => void) | undefined;
  /** A callback delivery is in progress (the callback has not returned or its promise is pending). */
  #delivering = false;
  /** What the callback threw; once set, later bytes are credited and dropped. */
  #handlerFailure: { error: unknown } | undefined;
  readonly #onHandlerFailure: ((error: unknown) => void) | undefined;
  readonly done: Promise<void>;
  #resolveDone!: () => void;
  #rejectDone!: (err: MvmError) => void;
  /** Callback streams: settles once the stream ended and every chunk was handed over. */
  readonly delivered: Promise<void>;
  #resolveDelivered!: () => void;
  #rejectDelivered!: (err: unknown) => void;

  constructor(
    id: number,
    sink: FrameSink,
    options: { limit: number; onChunk?: ChunkHandler; onHandlerFailure?: (error: unknown) => void },
  ) {
    this.id = id;
    this.#sink = sink;
    this.#limit = options.limit;
    this.#onChunk = options.onChunk;
    this.#onHandlerFailure = options.onHandlerFailure;
    this.done = new Promise<void>((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    this.done.catch(() => {});
    this.delivered = new Promise<void>((resolve, reject) => {
      this.#resolveDelivered = resolve;
      this.#rejectDelivered = reject;
    });
    this.delivered.catch(() => {});
  }

  get bytes(): number {
    return this.#received;
  }
  get ended(): boolean {
    return this.#ended || this.#error !== undefined;
  }

  onData(payload: Uint8Array): void {
    if (this.ended) return;
    if (payload.byteLength > this.#window) {
      throw new ProtocolViolation(`Agent overran the credit window on stream ${this.id}`);
    }
    this.#window -= payload.byteLength;
    this.#received += payload.byteLength;
    if (this.#received > this.#limit) {
      throw new ProtocolViolation(`Agent sent ${this.#received} bytes on stream ${this.id}, over its limit of ${this.#limit}`);
    }
    this.#queue.push(payload);
    if (this.#onChunk) this.#deliver();
    else this.#wakeUp();
  }

  onEnd(): void {
    if (this.ended) return;
    this.#ended = true;
    this.#resolveDone();
    if (this.#onChunk) this.#deliver();
    this.#wakeUp();
  }

  fail(err: MvmError): void {
    if (this.#error) return;
    if (this.#ended && !this.#onChunk) return;
    this.#error = err;
    this.#queue = [];
    this.#rejectDone(err);
    this.#rejectDelivered(this.#handlerFailure?.error ?? err);
    this.#wakeUp();
  }

  #grant(n: number): void {
    if (n <= 0 || this.ended) return;
    this.#window += n;
    this.#sink.sendCredit(this.id, n);
  }

  /**
   * Hands queued chunks to the callback one at a time. A chunk's credit is returned once the
   * callback is done with it; a callback that returns a promise holds the next chunk (and the
   * credit) until the promise settles.
   */
  #deliver(): void {
    const onChunk = this.#onChunk;
    if (!onChunk || this.#delivering || this.#error) return;
    this.#delivering = true;
    for (;;) {
      const next = this.#queue.shift();
      if (next === undefined) break;
      if (this.#handlerFailure) {
        this.#grant(next.byteLength);
        continue;
      }
      let pending: PromiseLike<unknown> | undefined;
      try {
        const r = onChunk(next);
        if (isPromiseLike(r)) pending = r;
      } catch (error) {
        this.#failHandler(error);
      }
      if (pending === undefined) {
        this.#grant(next.byteLength);
        continue;
      }
      pending.then(
        () => this.#afterAsync(next.byteLength),
        (error: unknown) => {
          this.#failHandler(error);
          this.#afterAsync(next.byteLength);
        },
      );
      return;
    }
    this.#delivering = false;
    if (this.#ended && !this.#error) {
      if (this.#handlerFailure) this.#rejectDelivered(this.#handlerFailure.error);
      else this.#resolveDelivered();
    }
  }

  #afterAsync(bytes: number): void {
    this.#delivering = false;
    if (this.#error) return;
    // The stream may have ended meanwhile: its credit no longer matters, but the window does.
    if (!this.#ended) this.#grant(bytes);
    this.#deliver();
  }

  #failHandler(error: unknown): void {
    if (this.#handlerFailure) return;
    this.#handlerFailure = { error };
    this.#onHandlerFailure?.(error);
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  /** Pulls queued chunks; each pull returns its bytes' credit to the agent. */
  async *chunks(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const next = this.#queue.shift();
      if (next) {
        this.#grant(next.byteLength);
        yield next;
        continue;
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }
}

/** An outbound stream: `write` resolves once the bytes are framed, waiting for credit as needed. */
export class OutboundStream {
  readonly id: number;
  #credit = INITIAL_STREAM_WINDOW;
  #closed = false;
  #error: MvmError | undefined;
  #wake: (() => void) | undefined;
  #tail: Promise<void> = Promise.resolve();
  readonly #sink: FrameSink;

  constructor(id: number, sink: FrameSink) {
    this.id = id;
    this.#sink = sink;
  }

  get closed(): boolean {
    return this.#closed;
  }

  onCredit(n: number): void {
    this.#credit += n;
    if (this.#credit > 0xffff_ffff) throw new ProtocolViolation(`Agent granted too much credit on stream ${this.id}`);
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  fail(err: MvmError): void {
    if (this.#error) return;
    this.#error = err;
    this.#closed = true;
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  /** Writes are serialized: concurrent callers queue in call order. */
  write(data: Uint8Array): Promise<void> {
    const run = this.#tail.then(() => this.#write(data));
    this.#tail = run.catch(() => {});
    return run;
  }

  end(): Promise<void> {
    const run = this.#tail.then(async () => {
      if (this.#error) throw this.#error;
      if (this.#closed) return;
      this.#closed = true;
      await this.#sink.sendEnd(this.id);
    });
    this.#tail = run.catch(() => {});
    return run;
  }

  async #write(data: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < data.byteLength) {
      if (this.#error) throw this.#error;
      if (this.#closed) throw new ProtocolViolation(`Write after end on stream ${this.id}`);
      if (this.#credit <= 0) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
        continue;
      }
      const n = Math.min(CHUNK_BYTES, this.#credit, data.byteLength - offset);
      this.#credit -= n;
      await this.#sink.sendData(this.id, data.subarray(offset, offset + n));
      offset += n;
    }
  }
}
