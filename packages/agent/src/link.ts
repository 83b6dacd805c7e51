/**
 * The agent's side of the channel once the handshake is done: frame output, the table of open
 * data streams and their flow control. Streams are opened by request handlers with ids the host
 * allocated; frames for ids that are not open are discarded by the session.
 *
 * A link can be held (the agent is quiesced for a snapshot: frames are kept, in order, and no
 * stream may send Data) and released again, or detached (its host is gone: every stream is
 * aborted and everything sent on it from then on is dropped).
 */
import type { Writable } from "node:stream";
import {
  FrameKind,
  INITIAL_STREAM_WINDOW,
  InvalidArgumentError,
  encodeControl,
  encodeCredit,
  encodeFrame,
  type AgentToHost,
} from "@mvm/protocol";
import { ProtocolViolation, type ErrorBody } from "./errors.js";

/** Largest DATA payload the agent sends, in bytes. */
export const MAX_CHUNK_BYTES = 64 * 1024;
/** Most credit a sender may hold on one stream, in bytes. */
export const MAX_CREDIT_BYTES = 0xffff_ffff;
/** Bytes queued on the channel output above which the agent stops producing. */
export const OUTPUT_HIGH_WATER_BYTES = 1024 * 1024;

/** Receives what the host sends on an inbound stream (stdin, file upload). */
export interface InboundSink {
  data(chunk: Buffer): void;
  end(): void;
  abort(error: ErrorBody): void;
}

/** Produces what the agent sends on an outbound stream (stdout, stderr, file download). */
export interface OutboundSource {
  /** Room to send may have grown (credit arrived or the channel drained). */
  writable(): void;
  /** The host aborted the stream; nothing more may be sent on it. */
  abort(error: ErrorBody): void;
}

/** A host → agent stream: counts unacknowledged bytes against the window, grants credit. */
export class InboundStream {
  readonly direction = "in";
  #unacked = 0;
  #open = true;

  constructor(
    readonly id: number,
    private readonly link: Link,
    private readonly sink: InboundSink,
  ) {}

  get open(): boolean {
    return this.#open;
  }

  /** Host DATA. Throws ProtocolViolation when the host overruns the window. */
  receive(chunk: Buffer): void {
    this.#unacked += chunk.length;
    if (this.#unacked > INITIAL_STREAM_WINDOW) {
      throw new ProtocolViolation(`Host overran the window of stream ${this.id}: ${this.#unacked} bytes unacknowledged`);
    }
    this.sink.data(chunk);
  }

  receiveEnd(): void {
    this.close();
    this.sink.end();
  }

  receiveAbort(error: ErrorBody): void {
    this.close();
    this.sink.abort(error);
  }

  /** Reports `bytes` as consumed: the host may send that many more. No-op once closed. */
  consumed(bytes: number): void {
    if (!this.#open || bytes <= 0) return;
    this.#unacked -= bytes;
    this.link.sendCredit(this.id, bytes);
  }

  /** Stops accepting frames; later ones for this id are discarded. */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.link.forget(this);
  }
}

/** An agent → host stream: spends the host's credit, never more. */
export class OutboundStream {
  readonly direction = "out";
  #credit = INITIAL_STREAM_WINDOW;
  #open = true;

  constructor(
    readonly id: number,
    private readonly link: Link,
    private readonly source: OutboundSource,
  ) {}

  get open(): boolean {
    return this.#open;
  }

  /** Bytes that may be written now: the remaining credit, or 0 while the channel is congested or the link held. */
  get room(): number {
    return this.#open && !this.link.congested && !this.link.held ? this.#credit : 0;
  }

  /** Sends `chunk` as DATA frames. The caller keeps within `room`. */
  write(chunk: Uint8Array): void {
    if (!this.#open) return;
    if (chunk.length > this.#credit) throw new Error(`Stream ${this.id} has ${this.#credit} bytes of credit, not ${chunk.length}`);
    this.#credit -= chunk.length;
    for (let at = 0; at < chunk.length; at += MAX_CHUNK_BYTES) {
      this.link.sendFrame(encodeFrame(FrameKind.Data, this.id, chunk.subarray(at, at + MAX_CHUNK_BYTES)));
    }
  }

  /** Sends END and closes the stream. */
  end(): void {
    if (!this.#open) return;
    this.link.sendFrame(encodeFrame(FrameKind.End, this.id));
    this.close();
  }

  /** Ends the stream with an error (a StreamAbort control message). */
  abort(error: ErrorBody): void {
    if (!this.#open) return;
    this.link.sendControl({ t: "abort", stream: this.id, error });
    this.close();
  }

  /** Host CREDIT. Throws ProtocolViolation when it takes the credit past the u32 range. */
  receiveCredit(bytes: number): void {
    if (this.#credit + bytes > MAX_CREDIT_BYTES) {
      throw new ProtocolViolation(`Host credit on stream ${this.id} overflows: ${this.#credit} + ${bytes} bytes`);
    }
    this.#credit += bytes;
    this.source.writable();
  }

  receiveAbort(error: ErrorBody): void {
    this.close();
    this.source.abort(error);
  }

  /** Called when the channel drains. */
  wake(): void {
    if (this.#open) this.source.writable();
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.link.forget(this);
  }
}

export type DataStream = InboundStream | OutboundStream;

/** Frame output plus the open-stream table. */
export class Link {
  readonly #output: Writable;
  readonly #streams = new Map<number, DataStream>();
  /** Frames kept while held, in the order they were sent; undefined when not held. */
  #held: Buffer[] | undefined;
  /** Credit granted while held, per stream: one Credit frame each on release. */
  readonly #heldCredit = new Map<number, number>();
  #detached = false;
  readonly #onDrain = (): void => this.#wakeAll();

  constructor(output: Writable) {
    this.#output = output;
    output.on("drain", this.#onDrain);
  }

  /** True while the channel output holds more than OUTPUT_HIGH_WATER_BYTES unsent. */
  get congested(): boolean {
    return this.#output.writableLength >= OUTPUT_HIGH_WATER_BYTES;
  }

  /** True while frames are kept instead of written (see hold). */
  get held(): boolean {
    return this.#held !== undefined;
  }

  sendFrame(frame: Buffer): void {
    if (this.#detached || this.#output.destroyed) return;
    if (this.#held) this.#held.push(frame);
    else this.#output.write(frame);
  }

  /** Grants the host `bytes` more credit on an inbound stream (merged per stream while held). */
  sendCredit(stream: number, bytes: number): void {
    if (this.#held) this.#heldCredit.set(stream, (this.#heldCredit.get(stream) ?? 0) + bytes);
    else this.sendFrame(encodeCredit(stream, bytes));
  }

  /**
   * Stops writing: from now on every frame is kept, in order, and outbound streams have no room,
   * so their sources stop reading (a child blocks on its full pipe). What is kept is bounded by
   * the calls already in flight: at most a response, an exit event, an End or an abort each.
   */
  hold(): void {
    this.#held ??= [];
  }

  /** Writes one frame now, ahead of everything held (the answer to `quiesce`). */
  sendNow(frame: Buffer): void {
    if (this.#detached || this.#output.destroyed) return;
    this.#output.write(frame);
  }

  /** Writes what was held, in order, then lets the streams send again. */
  release(): void {
    const frames = this.#held;
    if (!frames) return;
    this.#held = undefined;
    for (const frame of frames) this.sendFrame(frame);
    for (const [stream, total] of this.#heldCredit) {
      for (let left = total; left > 0; left -= MAX_CREDIT_BYTES) this.sendFrame(encodeCredit(stream, Math.min(left, MAX_CREDIT_BYTES)));
    }
    this.#heldCredit.clear();
    this.#wakeAll();
  }

  /**
   * Cuts the link from its host for good (a restored copy has a new host): drops what was held,
   * aborts every open stream with `error` (sources and sinks stop, children's output is drained
   * and discarded, uploads are removed) and drops every frame sent on this link from now on.
   */
  detach(error: ErrorBody): void {
    if (this.#detached) return;
    this.#detached = true;
    this.#held = undefined;
    this.#heldCredit.clear();
    this.#output.off("drain", this.#onDrain);
    for (const s of [...this.#streams.values()]) s.receiveAbort(error);
    this.#streams.clear();
  }

  #wakeAll(): void {
    for (const s of [...this.#streams.values()]) if (s.direction === "out") s.wake();
  }

  /** Encodes and sends one control message (throws FrameError if it exceeds the control limit). */
  sendControl(message: AgentToHost): void {
    this.sendFrame(encodeFrame(FrameKind.Control, 0, encodeControl(message)));
  }

  /** Ends the output; calls `callback` once everything written has been handed to the OS (or failed). */
  finish(callback: () => void): void {
    this.#held = undefined;
    if (this.#output.destroyed || this.#output.writableFinished) {
      callback();
      return;
    }
    let called = false;
    const once = (): void => {
      if (called) return;
      called = true;
      callback();
    };
    this.#output.once("error", once);
    this.#output.end(once);
  }

  get(id: number): DataStream | undefined {
    return this.#streams.get(id);
  }

  /** Throws InvalidArgumentError unless every id is distinct and not open. */
  checkFree(ids: readonly number[]): void {
    const seen = new Set<number>();
    for (const id of ids) {
      if (seen.has(id)) throw new InvalidArgumentError(`Stream id ${id} is used twice in one request`);
      if (this.#streams.has(id)) throw new InvalidArgumentError(`Stream id ${id} is already open`);
      seen.add(id);
    }
  }

  openInbound(id: number, sink: InboundSink): InboundStream {
    this.checkFree([id]);
    const s = new InboundStream(id, this, sink);
    this.#streams.set(id, s);
    return s;
  }

  openOutbound(id: number, source: OutboundSource): OutboundStream {
    this.checkFree([id]);
    const s = new OutboundStream(id, this, source);
    this.#streams.set(id, s);
    return s;
  }

  /** Removes a closed stream from the table (called by the stream itself). */
  forget(stream: DataStream): void {
    if (this.#streams.get(stream.id) === stream) this.#streams.delete(stream.id);
  }
}
