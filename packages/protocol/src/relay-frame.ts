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
  const out = Buffer.allocUnsafe(RELAY_FRAME_HEADER_BYTES + payload.byteLength);
  writeRelayHeader(out, kind, stream, payload.byteLength);
  out.set(payload, RELAY_FRAME_HEADER_BYTES);
  return out;
}

/**
 * Encodes only the header of a frame whose `length`-byte payload the caller sends right after it
 * (so a large payload goes out without being copied). Throws RelayProtocolError if the frame
 * would break the format.
 */
export function encodeRelayHeader(kind: RelayFrameKind, stream: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(RELAY_FRAME_HEADER_BYTES);
  writeRelayHeader(out, kind, stream, length);
  return out;
}

function writeRelayHeader(out: Buffer, kind: RelayFrameKind, stream: number, length: number): void {
  if (!Number.isInteger(stream) || stream < 0 || stream > RELAY_MAX_STREAM_ID) throw new RelayProtocolError(`Bad relay stream id ${stream}`);
  checkHeader(relayStreamOpener(stream), kind, 0, 0, stream, length);
  out.writeUInt8(kind, 0);
  out.writeUInt8(0, 1);
  out.writeUInt16BE(0, 2);
  out.writeUInt32BE(stream, 4);
  out.writeUInt32BE(length, 8);
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
 *
 * Each payload is copied at most once: into a buffer of exactly its length (never a shared pool), filled as its bytes
 * arrive. A payload that arrives in one chunk which holds nothing but that frame is handed on as
 * a view of that chunk, uncopied; it pins no more than its own header. Payloads never share
 * memory with a larger input chunk.
 */
export class RelayFrameDecoder {
  /** Header bytes received so far, when a header straddles chunks. */
  readonly #headerBytes = Buffer.alloc(RELAY_FRAME_HEADER_BYTES);
  #headerFill = 0;
  /** The frame whose payload is being received, and where its bytes go. */
  #header: { kind: RelayFrameKind; stream: number; length: number; payload: Buffer; filled: number } | undefined;
  #failed: RelayProtocolError | undefined;

  constructor(private readonly peer: RelayRole) {}

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.#headerFill + (this.#header ? RELAY_FRAME_HEADER_BYTES + this.#header.filled : 0);
  }

  /** Decodes what `chunk` completes. A payload may be a view of `chunk`: do not modify it afterwards. */
  push(chunk: Uint8Array): RelayFrame[] {
    if (this.#failed) throw this.#failed;
    try {
      return this.#push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    } catch (err) {
      this.#failed = err instanceof RelayProtocolError ? err : new RelayProtocolError(String(err), { cause: err });
      this.#headerFill = 0;
      this.#header = undefined;
      throw this.#failed;
    }
  }

  /** Call at end of input: throws if part of a frame is pending. */
  end(): void {
    if (this.#failed) throw this.#failed;
    if (this.bufferedBytes > 0) throw (this.#failed = new RelayProtocolError(`Truncated relay frame: ${this.bufferedBytes} bytes pending`));
  }

  #push(input: Buffer): RelayFrame[] {
    const frames: RelayFrame[] = [];
    let at = 0;
    while (at < input.length) {
      const h = this.#header;
      if (h !== undefined) {
        const n = Math.min(h.length - h.filled, input.length - at);
        input.copy(h.payload, h.filled, at, at + n);
        h.filled += n;
        at += n;
        if (h.filled < h.length) break;
        this.#header = undefined;
        frames.push({ kind: h.kind, stream: h.stream, payload: h.payload });
        continue;
      }
      let header: Buffer;
      let headerStart: number;
      if (this.#headerFill === 0 && input.length - at >= RELAY_FRAME_HEADER_BYTES) {
        header = input;
        headerStart = at;
        at += RELAY_FRAME_HEADER_BYTES;
      } else {
        const n = Math.min(RELAY_FRAME_HEADER_BYTES - this.#headerFill, input.length - at);
        input.copy(this.#headerBytes, this.#headerFill, at, at + n);
        this.#headerFill += n;
        at += n;
        if (this.#headerFill < RELAY_FRAME_HEADER_BYTES) break;
        this.#headerFill = 0;
        header = this.#headerBytes;
        headerStart = 0;
      }
      const kind = header.readUInt8(headerStart);
      const stream = header.readUInt32BE(headerStart + 4);
      const length = header.readUInt32BE(headerStart + 8);
      checkHeader(this.peer, kind, header.readUInt8(headerStart + 1), header.readUInt16BE(headerStart + 2), stream, length);
      if (length === 0) {
        frames.push({ kind: kind as RelayFrameKind, stream, payload: Buffer.alloc(0) });
      } else if (header === input && at + length === input.length && input.buffer.byteLength <= length + RELAY_FRAME_HEADER_BYTES) {
        // The chunk is this one frame: its payload is a view that pins only the frame's own bytes.
        frames.push({ kind: kind as RelayFrameKind, stream, payload: input.subarray(at) });
        at = input.length;
      } else {
        this.#header = { kind: kind as RelayFrameKind, stream, length, payload: Buffer.allocUnsafeSlow(length), filled: 0 };
      }
    }
    return frames;
  }
}
