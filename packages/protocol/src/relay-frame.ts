/**
 * Frame codec of the relay channel (see relay-mux.ts for the multiplexer). Pure: no I/O.
 *
 * Every frame is a fixed 12-byte header followed by a payload:
 *
 * ```
 *  0        1        2                 4                                 8                                 12
 *  +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
 *  |  kind  | flags 0|  reserved (0)   |          stream id (u32 BE)       |      payload length (u32 BE)      |
 *  +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
 *  | payload (length bytes) ...
 *
 *  kind 1 Open    guest-opened (odd id): empty; host-opened (even id): u16 BE guest port
 *  kind 2 Data    1..65536 bytes, never beyond the receiver's credit
 *  kind 3 End     empty; the sender will send no more Data (half-close)
 *  kind 4 Reset   empty or a printable-ASCII reason of at most 256 bytes; abort both directions
 *  kind 5 Credit  u32 BE > 0: the receiver may now accept that many more Data bytes
 * ```
 *
 * Ids are nonzero, odd when the guest opens, even when the host opens, strictly increasing per
 * side and never reused. Each direction of a stream starts with a window of credit. A side that
 * receives Reset answers with Reset unless it already sent End or Reset, so both sides learn when
 * a stream is finished and forget it. Any violation is fatal to the whole channel.
 */
export const RELAY_FRAME_HEADER_BYTES = 12;
/** Largest Data payload, in bytes. */
export const RELAY_MAX_DATA_PAYLOAD = 65536;
/** Largest Reset reason, in bytes. */
export const RELAY_MAX_RESET_REASON = 256;
/** Credit each stream starts with, in bytes, in each direction. */
export const RELAY_INITIAL_WINDOW = 256 * 1024;
/** Default limit on streams opened by one side and not yet finished. */
export const RELAY_MAX_STREAMS = 1024;
/** Largest stream id. */
export const RELAY_MAX_STREAM_ID = 0xffff_ffff;

/** Frame kinds; the numeric values are on the wire. */
export const RelayFrameKind = { Open: 1, Data: 2, End: 3, Reset: 4, Credit: 5 } as const;
export type RelayFrameKind = (typeof RelayFrameKind)[keyof typeof RelayFrameKind];
export type RelayRole = "host" | "guest";

export interface RelayFrame {
  readonly kind: RelayFrameKind;
  readonly stream: number;
  readonly payload: Buffer;
}

/** Any breach of the relay frame format or stream rules. The channel that sees it is finished. */
export class RelayProtocolError extends Error {
  override readonly name = "RelayProtocolError";
}

/** A stream the peer aborted; `reason` is the peer's reason, reduced to printable ASCII. */
export class RelayStreamResetError extends Error {
  override readonly name = "RelayStreamResetError";
  constructor(readonly streamId: number, readonly reason: string) {
    super(`Relay stream ${streamId} was reset by the peer${reason === "" ? "" : `: ${reason}`}`);
  }
}

/** Replaces every byte outside printable ASCII with "?" and cuts to RELAY_MAX_RESET_REASON. */
export function sanitizeResetReason(text: string): string {
  return text.slice(0, RELAY_MAX_RESET_REASON).replace(/[^\x20-\x7e]/g, "?");
}

/** Which side opened stream `id`: odd ids are the guest's, even ids the host's. */
export function relayStreamOpener(id: number): RelayRole {
  return id % 2 === 1 ? "guest" : "host";
}

/** Checks a header against the format; `peer` is the role of the side that sent it. */
function checkHeader(peer: RelayRole, kind: number, flags: number, reserved: number, stream: number, length: number): void {
  const bad = (what: string): RelayProtocolError => new RelayProtocolError(`Bad relay frame on stream ${stream}: ${what}`);
  if (flags !== 0 || reserved !== 0) throw bad(`flags ${flags} or reserved ${reserved} not zero`);
  if (stream === 0) throw bad("stream id 0");
  switch (kind) {
    case RelayFrameKind.Open:
      if (relayStreamOpener(stream) !== peer) throw bad(`the ${peer} cannot open an id of this parity`);
      if (length !== (peer === "host" ? 2 : 0)) throw bad(`Open payload of ${length} bytes`);
      return;
    case RelayFrameKind.Data:
      if (length === 0 || length > RELAY_MAX_DATA_PAYLOAD) throw bad(`Data payload of ${length} bytes`);
      return;
    case RelayFrameKind.End:
      if (length !== 0) throw bad(`End payload of ${length} bytes`);
      return;
    case RelayFrameKind.Reset:
      if (length > RELAY_MAX_RESET_REASON) throw bad(`Reset reason of ${length} bytes`);
      return;
    case RelayFrameKind.Credit:
      if (length !== 4) throw bad(`Credit payload of ${length} bytes`);
      return;
    default:
      throw bad(`unknown kind ${kind}`);
  }
}

/** Encodes one frame. Throws RelayProtocolError if it would break the format. */
export function encodeRelayFrame(kind: RelayFrameKind, stream: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  if (!Number.isInteger(stream) || stream < 0 || stream > RELAY_MAX_STREAM_ID) throw new RelayProtocolError(`Bad relay stream id ${stream}`);
  checkHeader(relayStreamOpener(stream), kind, 0, 0, stream, payload.byteLength);
  const out = Buffer.allocUnsafe(RELAY_FRAME_HEADER_BYTES + payload.byteLength);
  out.writeUInt8(kind, 0);
  out.writeUInt8(0, 1);
  out.writeUInt16BE(0, 2);
  out.writeUInt32BE(stream, 4);
  out.writeUInt32BE(payload.byteLength, 8);
  out.set(payload, RELAY_FRAME_HEADER_BYTES);
  return out;
}

/** A u32 BE payload (Credit). */
export function encodeU32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/**
 * Incremental decoder of frames sent by `peer`. Validates each header before buffering its
 * payload, so it never holds more than RELAY_FRAME_HEADER_BYTES + RELAY_MAX_DATA_PAYLOAD bytes.
 * Once it throws it stays failed.
 */
export class RelayFrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #header: { kind: RelayFrameKind; stream: number; length: number } | undefined;
  #failed: RelayProtocolError | undefined;

  constructor(private readonly peer: RelayRole) {}

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.#buffered + (this.#header ? RELAY_FRAME_HEADER_BYTES : 0);
  }

  push(chunk: Uint8Array): RelayFrame[] {
    if (this.#failed) throw this.#failed;
    try {
      return this.#push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    } catch (err) {
      this.#failed = err instanceof RelayProtocolError ? err : new RelayProtocolError(String(err), { cause: err });
      this.#chunks = [];
      this.#buffered = 0;
      this.#header = undefined;
      throw this.#failed;
    }
  }

  /** Call at end of input: throws if part of a frame is pending. */
  end(): void {
    if (this.#failed) throw this.#failed;
    if (this.bufferedBytes > 0) throw (this.#failed = new RelayProtocolError(`Truncated relay frame: ${this.bufferedBytes} bytes pending`));
  }

  #take(n: number): Buffer {
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#buffered);
    this.#chunks = [];
    this.#buffered = 0;
    return all.subarray(0, n);
  }

  #push(input: Buffer): RelayFrame[] {
    const frames: RelayFrame[] = [];
    while (input.length > 0) {
      const want = this.#header ? this.#header.length : RELAY_FRAME_HEADER_BYTES;
      const piece = input.subarray(0, want - this.#buffered);
      input = input.subarray(piece.length);
      this.#chunks.push(piece);
      this.#buffered += piece.length;
      if (this.#buffered < want) break;
      if (this.#header) {
        const { kind, stream, length } = this.#header;
        this.#header = undefined;
        // Copy so a frame never pins a larger socket buffer.
        frames.push({ kind, stream, payload: Buffer.from(this.#take(length)) });
        continue;
      }
      const h = this.#take(RELAY_FRAME_HEADER_BYTES);
      const kind = h.readUInt8(0);
      const stream = h.readUInt32BE(4);
      const length = h.readUInt32BE(8);
      checkHeader(this.peer, kind, h.readUInt8(1), h.readUInt16BE(2), stream, length);
      if (length === 0) frames.push({ kind: kind as RelayFrameKind, stream, payload: Buffer.alloc(0) });
      else this.#header = { kind: kind as RelayFrameKind, stream, length };
    }
    return frames;
  }
}
