/**
 * The relay channel: many TCP-like byte streams multiplexed over one byte channel between the
 * agent (role "guest") and the host's egress gateway (role "host"). Pure: node:stream only. The
 * frame format and its diagram are in relay-frame.ts.
 *
 * Each direction of a stream has a credit window: a sender never sends Data beyond it, and the
 * receiver grants credit back as its reader consumes. A side that receives Reset answers with
 * Reset unless it already sent End or Reset, so both sides learn when a stream is finished and
 * forget it. Any violation is fatal to the whole channel.
 */
import { EventEmitter } from "node:events";
import { Duplex, type Readable, type Writable } from "node:stream";
import {
  RELAY_INITIAL_WINDOW,
  RELAY_MAX_DATA_PAYLOAD,
  RELAY_MAX_STREAM_ID,
  RELAY_MAX_STREAMS,
  RelayFrameDecoder,
  RelayFrameKind,
  RelayProtocolError,
  RelayStreamResetError,
  encodeRelayFrame,
  encodeRelayHeader,
  encodeU32,
  relayStreamOpener,
  sanitizeResetReason,
  type RelayFrame,
  type RelayRole,
} from "./relay-frame.js";

export {
  RELAY_FRAME_HEADER_BYTES,
  RELAY_INITIAL_WINDOW,
  RELAY_MAX_DATA_PAYLOAD,
  RELAY_MAX_RESET_REASON,
  RELAY_MAX_STREAMS,
  RelayFrameDecoder,
  RelayFrameKind,
  RelayProtocolError,
  RelayStreamResetError,
  encodeRelayFrame,
  sanitizeResetReason,
} from "./relay-frame.js";
export type { RelayFrame, RelayRole } from "./relay-frame.js";

/** Bytes queued on the output before the mux decides the peer has stopped reading. */
const MAX_OUTPUT_BACKLOG_BYTES = 8 * 1024 * 1024;
/** Payloads from this size on are written after their header rather than copied into one buffer. */
const UNCOPIED_PAYLOAD_BYTES = 4096;

/** One frame as written: a whole frame, or a header and the payload that follows it. */
type OutFrame = Buffer | readonly [Buffer, Buffer];

export interface RelayMuxOptions {
  /** Which end this is: the guest opens odd ids without a port, the host even ids with one. */
  readonly role: RelayRole;
  /** Limit on unfinished streams opened by each side; both ends must agree. @default 1024 */
  readonly maxStreams?: number;
  /** Initial credit per stream and direction, in bytes; both ends must agree. @default 262144 */
  readonly windowBytes?: number;
}

export interface RelayStreamInfo {
  readonly id: number;
  /** The guest port a host-opened stream is for. */
  readonly port?: number;
}

export type RelayStream = Duplex & { readonly relayId: number };

/**
 * Multiplexes relay streams over `input`/`output`. Emits "stream" (stream, info) for each stream
 * the peer opens, "error" (RelayProtocolError or a channel error) when the channel fails, and
 * "close" once. On close the mux ends `output` and stops reading `input`; the owner closes the
 * underlying channel. A buffer written to a stream is passed to `output` by reference (a payload
 * of 4 KiB or more follows its header as a separate write), so a writer must not change it
 * afterwards; `input` chunks must not change after they are read either (a chunk that is exactly
 * one frame becomes that frame's payload).
 *
 * @example
 * const mux = new RelayMux(socket, socket, { role: "guest" });
 * tcpSocket.pipe(mux.open()).pipe(tcpSocket);
 */
export class RelayMux extends EventEmitter {
  readonly #input: Readable;
  readonly #output: Writable;
  readonly #role: RelayRole;
  readonly #maxStreams: number;
  readonly #window: number;
  readonly #decoder: RelayFrameDecoder;
  readonly #streams = new Map<number, StreamState>();
  #nextLocalId: number;
  #lastPeerId = 0;
  #localCount = 0;
  #peerCount = 0;
  #outputBlocked = false;
  /** Frames kept back while held (see `hold`), in order. */
  #held: OutFrame[] | undefined;
  #closed = false;
  readonly #onData = (chunk: Buffer): void => this.#receive(chunk);
  readonly #onEnd = (): void => {
    try {
      this.#decoder.end();
      this.#shutdown(new Error("The relay channel closed"), undefined);
    } catch (err) {
      this.#shutdown(err as Error, err as Error);
    }
  };
  readonly #onError = (err: Error): void => this.#shutdown(err, err);
  readonly #onDrain = (): void => {
    if (this.#held !== undefined) return;
    this.#outputBlocked = false;
    for (const s of [...this.#streams.values()]) {
      if (this.#outputBlocked || this.#closed) break;
      s.stream.pump();
      // Move it to the back so the next drain serves the streams this one may have starved.
      if (this.#streams.delete(s.id)) this.#streams.set(s.id, s);
    }
  };

  constructor(input: Readable, output: Writable, options: RelayMuxOptions) {
    super();
    this.#input = input;
    this.#output = output;
    this.#role = options.role;
    this.#maxStreams = options.maxStreams ?? RELAY_MAX_STREAMS;
    this.#window = options.windowBytes ?? RELAY_INITIAL_WINDOW;
    if (!Number.isInteger(this.#window) || this.#window < 1 || this.#window > 0xffff_ffff) {
      // Credit travels as a u32.
      throw new RangeError(`Relay window of ${this.#window} bytes is out of range`);
    }
    this.#decoder = new RelayFrameDecoder(this.#role === "host" ? "guest" : "host");
    this.#nextLocalId = this.#role === "guest" ? 1 : 2;
    input.on("data", this.#onData);
    input.on("end", this.#onEnd);
    input.on("error", this.#onError);
    output.on("drain", this.#onDrain);
    output.on("error", this.#onError);
  }

  /** Streams not yet finished in both directions, opened by either side. */
  get openStreams(): number {
    return this.#streams.size;
  }

  /** guest: opens an outbound stream (no port). host: opens a stream to guest port `port`. */
  open(port?: number): RelayStream {
    if (this.#closed) throw new Error("Cannot open a relay stream: the relay channel is closed");
    if (this.#role === "guest" ? port !== undefined : !(Number.isInteger(port) && port! >= 1 && port! <= 65535)) {
      throw new RangeError(`Cannot open a relay stream as ${this.#role}: port ${String(port)} is not allowed`);
    }
    if (this.#localCount >= this.#maxStreams) throw new Error(`Cannot open a relay stream: ${this.#localCount} streams are open (limit ${this.#maxStreams})`);
    const id = this.#nextLocalId;
    if (id > RELAY_MAX_STREAM_ID) throw new Error("Cannot open a relay stream: stream ids are exhausted");
    this.#nextLocalId += 2;
    this.#send(RelayFrameKind.Open, id, port === undefined ? undefined : Buffer.from([port >> 8, port & 0xff]));
    return this.#add(id).stream;
  }

  /**
   * Stops writing at a frame boundary: from now on frames are kept back (streams' data waits, as
   * for a full output) until `release`. Resolves once everything written before has left this
   * process's buffers. Reading goes on. Used before a VM is saved, so a restored copy's guest holds
   * no half-delivered frame of this host's.
   */
  async hold(): Promise<void> {
    this.#held ??= [];
    this.#outputBlocked = true;
    while (!this.#closed && this.#output.writableLength > 0) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#output.off("drain", done);
          this.#output.off("close", done);
          resolve();
        };
        this.#output.once("drain", done);
        this.#output.once("close", done);
      });
    }
  }

  /** Writes what `hold` kept back and lets the streams send again. */
  release(): void {
    const held = this.#held;
    if (held === undefined) return;
    this.#held = undefined;
    this.#outputBlocked = false;
    for (const frame of held) {
      if (this.#closed) return;
      this.#write(frame);
    }
    if (!this.#outputBlocked) this.#onDrain();
  }

  /** Destroys every stream with `reason`, ends the output and stops reading the input. */
  close(reason = "The relay was closed"): void {
    this.#shutdown(new Error(reason), undefined);
  }

  /** What a stream may ask of its mux; kept off the public surface. */
  readonly #link: MuxLink = {
    send: (kind, id, payload) => {
      if (!this.#closed) this.#send(kind, id, payload);
    },
    blocked: () => this.#outputBlocked || this.#closed,
    settle: (s) => {
      if (!s.sendClosed || !s.recvClosed || !this.#streams.has(s.id)) return;
      this.#streams.delete(s.id);
      if (relayStreamOpener(s.id) === this.#role) this.#localCount--;
      else this.#peerCount--;
    },
  };

  #send(kind: RelayFrameKind, id: number, payload?: Buffer): void {
    if (this.#closed) return;
    const frame: OutFrame =
      payload !== undefined && payload.length >= UNCOPIED_PAYLOAD_BYTES ? [encodeRelayHeader(kind, id, payload.length), payload] : encodeRelayFrame(kind, id, payload);
    if (this.#held !== undefined) {
      this.#held.push(frame);
      return;
    }
    this.#write(frame);
  }

  #write(frame: OutFrame): void {
    let ok: boolean;
    if (Buffer.isBuffer(frame)) ok = this.#output.write(frame);
    else {
      // Corked, the two writes reach the output together (one writev), never split by another frame.
      this.#output.cork();
      this.#output.write(frame[0]);
      ok = this.#output.write(frame[1]);
      this.#output.uncork();
    }
    if (!ok) this.#outputBlocked = true;
    if (this.#output.writableLength > MAX_OUTPUT_BACKLOG_BYTES) {
      const err = new RelayProtocolError(`The relay peer stopped reading: ${this.#output.writableLength} bytes queued`);
      this.#shutdown(err, err);
    }
  }

  #add(id: number): StreamState {
    const s: StreamState = { id, sendClosed: false, recvClosed: false, recvCredit: this.#window, stream: undefined! };
    s.stream = new RelayDuplex(this.#link, s, this.#window);
    this.#streams.set(id, s);
    if (relayStreamOpener(id) === this.#role) this.#localCount++;
    else this.#peerCount++;
    return s;
  }

  #receive(chunk: Buffer): void {
    try {
      for (const frame of this.#decoder.push(chunk)) {
        if (this.#closed) return;
        this.#handle(frame);
      }
    } catch (err) {
      const e = err instanceof RelayProtocolError ? err : new RelayProtocolError(`Relay frame handling failed: ${String(err)}`, { cause: err });
      this.#shutdown(e, e);
    }
  }

  #handle({ kind, stream: id, payload }: RelayFrame): void {
    const s = this.#streams.get(id);
    const violation = (what: string): RelayProtocolError => new RelayProtocolError(`Relay stream ${id}: ${what}`);
    if (kind === RelayFrameKind.Open) {
      if (id <= this.#lastPeerId) throw violation(`Open of an id not above ${this.#lastPeerId}`);
      if (this.#peerCount >= this.#maxStreams) throw violation(`more than ${this.#maxStreams} open streams`);
      this.#lastPeerId = id;
      const state = this.#add(id);
      const info: RelayStreamInfo = payload.length === 2 ? { id, port: payload.readUInt16BE(0) } : { id };
      if (info.port === 0) throw violation("Open for port 0");
      if (this.listenerCount("stream") === 0) state.stream.destroy(new Error("Nothing accepts relay streams"));
      else this.emit("stream", state.stream, info);
      return;
    }
    if (s === undefined) {
      const opened = relayStreamOpener(id) === this.#role ? id < this.#nextLocalId : id <= this.#lastPeerId;
      // Credit and Reset may trail a stream both sides already finished.
      if (opened && (kind === RelayFrameKind.Credit || kind === RelayFrameKind.Reset)) return;
      throw violation(`kind ${kind} on a stream that is ${opened ? "finished" : "not open"}`);
    }
    switch (kind) {
      case RelayFrameKind.Data:
        if (s.recvClosed) throw violation("Data after End");
        if (payload.length > s.recvCredit) throw violation(`Data of ${payload.length} bytes beyond credit of ${s.recvCredit}`);
        s.recvCredit -= payload.length;
        s.stream.deliver(payload);
        return;
      case RelayFrameKind.End:
        if (s.recvClosed) throw violation("End after End");
        s.recvClosed = true;
        s.stream.deliver(null);
        this.#link.settle(s);
        return;
      case RelayFrameKind.Reset: {
        s.recvClosed = true;
        if (!s.sendClosed) {
          s.sendClosed = true;
          this.#send(RelayFrameKind.Reset, id);
        }
        this.#link.settle(s);
        s.stream.destroy(new RelayStreamResetError(id, sanitizeResetReason(payload.toString("latin1"))));
        return;
      }
      case RelayFrameKind.Credit: {
        const n = payload.readUInt32BE(0);
        if (n === 0) throw violation("zero credit");
        s.stream.addCredit(n);
        return;
      }
    }
  }

  #shutdown(err: Error, fatal: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#input.off("data", this.#onData);
    this.#input.off("end", this.#onEnd);
    this.#input.off("error", this.#onError);
    this.#output.off("drain", this.#onDrain);
    this.#output.off("error", this.#onError);
    // Errors arriving on the channel after the mux is gone must not crash the process.
    this.#input.on("error", () => {});
    this.#output.on("error", () => {});
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    for (const s of streams) s.stream.destroy(err);
    if (fatal) this.#output.destroy();
    else this.#output.end();
    this.#input.pause();
    if (fatal) this.emit("error", fatal);
    this.emit("close");
  }
}

interface MuxLink {
  send(kind: RelayFrameKind, id: number, payload?: Buffer): void;
  /** True while Data must wait: the output is full or the mux is closed. */
  blocked(): boolean;
  /** Forgets a stream once both directions are finished. */
  settle(s: StreamState): void;
}

interface StreamState {
  readonly id: number;
  /** We sent End or Reset. */
  sendClosed: boolean;
  /** We received End or Reset. */
  recvClosed: boolean;
  /** Data bytes the peer may still send. */
  recvCredit: number;
  stream: RelayDuplex;
}

/** One relay stream: writes become Data within the peer's credit; reads grant credit back. */
class RelayDuplex extends Duplex {
  readonly relayId: number;
  #sendCredit: number;
  #pumping = false;
  #delivered = 0;
  #granted = 0;
  #pending: { chunk: Buffer; callback: (err?: Error | null) => void } | undefined;

  constructor(private readonly link: MuxLink, private readonly state: StreamState, private readonly window: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: Math.max(1, Math.floor(window / 4)), writableHighWaterMark: RELAY_MAX_DATA_PAYLOAD });
    this.relayId = state.id;
    this.#sendCredit = window;
  }

  /** Hands received bytes (or null for End) to the reader, unless this side was destroyed. */
  deliver(chunk: Buffer | null): void {
    if (chunk !== null) this.#delivered += chunk.length;
    if (!this.destroyed) this.push(chunk);
  }

  addCredit(bytes: number): void {
    this.#sendCredit += bytes;
    this.pump();
  }

  /** Sends as much of the pending write as credit and the output allow. */
  pump(): void {
    const p = this.#pending;
    // A send can deliver Credit back synchronously (in-process peers); the outer loop sees it.
    if (p === undefined || this.destroyed || this.#pumping) return;
    this.#pumping = true;
    try {
      while (p.chunk.length > 0 && this.#sendCredit > 0 && !this.link.blocked() && !this.destroyed) {
        const n = Math.min(p.chunk.length, this.#sendCredit, RELAY_MAX_DATA_PAYLOAD);
        this.#sendCredit -= n;
        const piece = p.chunk.subarray(0, n);
        p.chunk = p.chunk.subarray(n);
        this.link.send(RelayFrameKind.Data, this.relayId, piece);
      }
    } finally {
      this.#pumping = false;
    }
    if (p.chunk.length === 0 && this.#pending === p) {
      this.#pending = undefined;
      p.callback();
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.state.sendClosed) return callback(new Error(`Relay stream ${this.relayId} is closed`));
    this.#pending = { chunk, callback };
    this.pump();
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (!this.state.sendClosed) {
      this.state.sendClosed = true;
      this.link.send(RelayFrameKind.End, this.relayId);
      this.link.settle(this.state);
    }
    callback();
  }

  /** Grants credit from here rather than _read: Readable calls _read before it removes the bytes it returns. */
  override read(size?: number): unknown {
    const out: unknown = super.read(size);
    // Consumed bytes not yet granted back; grant in batches of half a window.
    const owed = this.#delivered - this.readableLength - this.#granted;
    if (owed >= Math.max(1, Math.floor(this.window / 2)) && !this.state.recvClosed && !this.destroyed) {
      this.#granted += owed;
      this.state.recvCredit += owed;
      this.link.send(RelayFrameKind.Credit, this.relayId, encodeU32(owed));
    }
    return out;
  }

  override _read(): void {
    // Data arrives when the peer sends it; credit is granted in read().
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const p = this.#pending;
    this.#pending = undefined;
    // Reset also after our End: it tells the peer to stop sending to a reader that is gone.
    if (!this.state.sendClosed || !this.state.recvClosed) {
      this.state.sendClosed = true;
      const reason = err === null ? "" : sanitizeResetReason(err.message);
      this.link.send(RelayFrameKind.Reset, this.relayId, Buffer.from(reason, "latin1"));
      this.link.settle(this.state);
    }
    p?.callback(err);
    callback(err);
  }
}
