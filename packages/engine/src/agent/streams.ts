/**
 * Data streams of one agent session, host side: inbound streams (agent → host) with a credit
 * window the host grants as it consumes, and outbound streams (host → agent) that wait for the
 * agent's credit. Nothing here buffers more than one window per stream.
 */
import { INITIAL_STREAM_WINDOW, type MvmError } from "@mvm/protocol";

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
 * An inbound stream. Bytes are either pushed to a callback (credit returned at once, so the
 * agent's pace is the host's) or queued for an async iterator (credit returned as the consumer
 * pulls, which is the back-pressure). `limit` caps the total the agent may send.
 */
export class InboundStream {
  readonly id: number;
  #window = INITIAL_STREAM_WINDOW;
  #received = 0;
  readonly #limit: number;
  readonly #sink: FrameSink;
  readonly #onChunk: ((chunk: Uint8Array) => void) | undefined;
  #queue: Uint8Array[] = [];
  #ended = false;
  #error: MvmError | undefined;
  #wake: (() => void) | undefined;
  readonly done: Promise<void>;
  #resolveDone!: () => void;
  #rejectDone!: (err: MvmError) => void;

  constructor(id: number, sink: FrameSink, options: { limit: number; onChunk?: (chunk: Uint8Array) => void }) {
    this.id = id;
    this.#sink = sink;
    this.#limit = options.limit;
    this.#onChunk = options.onChunk;
    this.done = new Promise<void>((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    this.done.catch(() => {});
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
    if (this.#onChunk) {
      this.#onChunk(payload);
      this.#grant(payload.byteLength);
    } else {
      this.#queue.push(payload);
      this.#wakeUp();
    }
  }

  onEnd(): void {
    if (this.ended) return;
    this.#ended = true;
    this.#resolveDone();
    this.#wakeUp();
  }

  fail(err: MvmError): void {
    if (this.ended) return;
    this.#error = err;
    this.#queue = [];
    this.#rejectDone(err);
    this.#wakeUp();
  }

  #grant(n: number): void {
    if (n <= 0 || this.ended) return;
    this.#window += n;
    this.#sink.sendCredit(this.id, n);
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
