/**
 * Collects one agent → host data stream for the test driver: counts, hashes and optionally keeps
 * the bytes, grants credit, and records any breach of the protocol it sees.
 */
import { createHash, type Hash } from "node:crypto";
import { INITIAL_STREAM_WINDOW, encodeCredit } from "@mvm/protocol";

/** What the collector needs from the driver. */
export interface CollectorHost {
  readonly violations: string[];
  send(buf: Uint8Array): void;
}

/** Collects one agent → host stream. */
export class Collector {
  readonly chunks: Buffer[] = [];
  bytes = 0;
  granted = INITIAL_STREAM_WINDOW;
  aborted: { code: string; message: string } | undefined;
  readonly hash: Hash = createHash("sha256");
  #finished = false;
  #done: Promise<void>;
  #resolveDone!: () => void;
  #waiters: Array<{ bytes: number; resolve: () => void }> = [];

  constructor(
    readonly id: number,
    private readonly driver: CollectorHost,
    /** Send CREDIT for every chunk as it arrives. */
    public autoCredit: boolean,
    /** Keep the bytes (otherwise only count and hash them). */
    readonly keep: boolean,
  ) {
    this.#done = new Promise((resolve) => (this.#resolveDone = resolve));
  }

  /** Settles when END or an abort arrives. */
  get finished(): Promise<void> {
    return this.#done;
  }

  get isFinished(): boolean {
    return this.#finished;
  }

  text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }

  /** Grants `n` more bytes of credit. */
  grant(n: number): void {
    this.granted += n;
    this.driver.send(encodeCredit(this.id, n));
  }

  /** Resolves once at least `n` bytes arrived (or the stream finished). */
  waitBytes(n: number): Promise<void> {
    if (this.bytes >= n || this.#finished) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ bytes: n, resolve }));
  }

  onData(payload: Buffer): void {
    if (this.#finished) {
      this.driver.violations.push(`data after end on stream ${this.id}`);
      return;
    }
    this.bytes += payload.length;
    if (this.bytes > this.granted) this.driver.violations.push(`stream ${this.id} exceeded its credit: ${this.bytes} > ${this.granted}`);
    if (payload.length > 64 * 1024) this.driver.violations.push(`stream ${this.id} chunk of ${payload.length} bytes`);
    this.hash.update(payload);
    if (this.keep) this.chunks.push(payload);
    if (this.autoCredit && payload.length > 0) this.grant(payload.length);
    this.#wake();
  }

  finish(abort?: { code: string; message: string }): void {
    if (this.#finished) {
      this.driver.violations.push(`stream ${this.id} finished twice`);
      return;
    }
    this.#finished = true;
    this.aborted = abort;
    this.#wake();
    this.#resolveDone();
  }

  #wake(): void {
    this.#waiters = this.#waiters.filter((w) => {
      if (this.bytes >= w.bytes || this.#finished) w.resolve();
      return !(this.bytes >= w.bytes || this.#finished);
    });
  }
}
