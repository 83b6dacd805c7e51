/**
 * Frame codec for the host-agent channel (protocol v1). Pure: no I/O.
 *
 * Every frame is a fixed 12-byte header followed by a payload:
 *
 * ```
 *  0        1        2                 4                                 8                                 12
 *  +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
 *  | version|  kind  |  reserved (0)   |          stream id (u32 BE)       |      payload length (u32 BE)      |
 *  +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
 *  | payload (length bytes) ...
 * ```
 *
 * The header is validated before any payload byte is buffered, so a peer can never make the
 * decoder hold more than {@link MAX_FRAME_BYTES}.
 */

export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 12;

/** Frame kinds. The numeric values are on the wire. */
export const FrameKind = {
  /** A JSON control message; only on stream 0. */
  Control: 1,
  /** Raw bytes of a data stream (stdin, stdout, stderr, file contents); stream id >= 1. */
  Data: 2,
  /** End of a data stream; empty payload. */
  End: 3,
  /** Flow-control credit for a data stream: payload is a u32 BE byte count. */
  Credit: 4,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** Largest control payload (UTF-8 JSON), in bytes. */
export const MAX_CONTROL_PAYLOAD = 64 * 1024;
/** Largest data payload, in bytes. */
export const MAX_DATA_PAYLOAD = 256 * 1024;
/** Largest frame on the wire, header included. */
export const MAX_FRAME_BYTES = FRAME_HEADER_BYTES + MAX_DATA_PAYLOAD;
/** Credit each data stream starts with, in bytes, in each direction. */
export const INITIAL_STREAM_WINDOW = 1024 * 1024;
/** Largest stream id the host allocates. */
export const MAX_STREAM_ID = 0xffff_ffff;

export const CONTROL_STREAM = 0;

export interface Frame {
  readonly kind: FrameKind;
  readonly stream: number;
  readonly payload: Uint8Array;
}

/** Thrown by the codec for any frame that breaks the format. The session that sees it must end. */
export class FrameError extends Error {
  override readonly name = "FrameError";
}

function payloadLimit(kind: number): number | undefined {
  switch (kind) {
    case FrameKind.Control:
      return MAX_CONTROL_PAYLOAD;
    case FrameKind.Data:
      return MAX_DATA_PAYLOAD;
    case FrameKind.End:
      return 0;
    case FrameKind.Credit:
      return 4;
    default:
      return undefined;
  }
}

/** Checks a header's fields; throws FrameError naming the first bad one. */
export function checkHeader(version: number, kind: number, reserved: number, stream: number, length: number): void {
  if (version !== FRAME_VERSION) throw new FrameError(`Bad frame: version ${version}, expected ${FRAME_VERSION}`);
  const limit = payloadLimit(kind);
  if (limit === undefined) throw new FrameError(`Bad frame: unknown kind ${kind}`);
  if (reserved !== 0) throw new FrameError(`Bad frame: reserved bits set (${reserved})`);
  if (kind === FrameKind.Control ? stream !== CONTROL_STREAM : stream === CONTROL_STREAM) {
    throw new FrameError(`Bad frame: kind ${kind} on stream ${stream}`);
  }
  if (kind === FrameKind.Credit ? length !== 4 : length > limit) {
    throw new FrameError(`Bad frame: payload of ${length} bytes for kind ${kind} (limit ${limit})`);
  }
}

/** Encodes one frame. Throws FrameError if it would break the format. */
export function encodeFrame(kind: FrameKind, stream: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  if (!Number.isInteger(stream) || stream < 0 || stream > MAX_STREAM_ID) {
    throw new FrameError(`Bad frame: stream id ${stream}`);
  }
  checkHeader(FRAME_VERSION, kind, 0, stream, payload.byteLength);
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.byteLength);
  out.writeUInt8(FRAME_VERSION, 0);
  out.writeUInt8(kind, 1);
  out.writeUInt16BE(0, 2);
  out.writeUInt32BE(stream, 4);
  out.writeUInt32BE(payload.byteLength, 8);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

export function encodeCredit(stream: number, bytes: number): Buffer {
  if (!Number.isInteger(bytes) || bytes <= 0 || bytes > 0xffff_ffff) throw new FrameError(`Bad credit: ${bytes}`);
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(bytes, 0);
  return encodeFrame(FrameKind.Credit, stream, p);
}

export function decodeCredit(frame: Frame): number {
  const n = Buffer.from(frame.payload.buffer, frame.payload.byteOffset, frame.payload.byteLength).readUInt32BE(0);
  if (n === 0) throw new FrameError("Bad credit: zero");
  return n;
}

/**
 * Incremental decoder. Feed it chunks as they arrive; it returns whole frames.
 * After it throws once, it stays failed: the caller must end the session.
 *
 * Each payload is copied once, into a buffer of exactly its length (never a shared pool) filled as
 * its bytes arrive:
 * payloads never alias the input.
 */
export class FrameDecoder {
  /** Header bytes received so far, when a header straddles chunks. */
  readonly #headerBytes = Buffer.alloc(FRAME_HEADER_BYTES);
  #headerFill = 0;
  #need: { kind: FrameKind; stream: number; length: number; payload: Buffer; filled: number } | undefined;
  #failed: FrameError | undefined;

  /** Bytes held waiting for the rest of a frame; never more than MAX_FRAME_BYTES. */
  get bufferedBytes(): number {
    return this.#headerFill + (this.#need?.filled ?? 0);
  }

  push(chunk: Uint8Array): Frame[] {
    if (this.#failed) throw this.#failed;
    try {
      return this.#push(chunk);
    } catch (err) {
      this.#failed = err instanceof FrameError ? err : new FrameError(String(err));
      this.#headerFill = 0;
      this.#need = undefined;
      throw this.#failed;
    }
  }

  /** Call at end of input: throws if a partial frame is pending. */
  end(): void {
    if (this.#failed) throw this.#failed;
    if (this.#headerFill > 0 || this.#need) {
      this.#failed = new FrameError(`Truncated frame: ${this.bufferedBytes} bytes pending at end of stream`);
      throw this.#failed;
    }
  }

  #push(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    const input = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let at = 0;
    while (at < input.length) {
      const need = this.#need;
      if (need !== undefined) {
        const n = Math.min(need.length - need.filled, input.length - at);
        input.copy(need.payload, need.filled, at, at + n);
        need.filled += n;
        at += n;
        if (need.filled < need.length) break;
        this.#need = undefined;
        frames.push({ kind: need.kind, stream: need.stream, payload: new Uint8Array(need.payload.buffer, 0, need.length) });
        continue;
      }
      let h: Buffer;
      let o: number;
      if (this.#headerFill === 0 && input.length - at >= FRAME_HEADER_BYTES) {
        h = input;
        o = at;
        at += FRAME_HEADER_BYTES;
      } else {
        const n = Math.min(FRAME_HEADER_BYTES - this.#headerFill, input.length - at);
        input.copy(this.#headerBytes, this.#headerFill, at, at + n);
        this.#headerFill += n;
        at += n;
        if (this.#headerFill < FRAME_HEADER_BYTES) break;
        this.#headerFill = 0;
        h = this.#headerBytes;
        o = 0;
      }
      const version = h.readUInt8(o);
      const kind = h.readUInt8(o + 1);
      const reserved = h.readUInt16BE(o + 2);
      const stream = h.readUInt32BE(o + 4);
      const length = h.readUInt32BE(o + 8);
      checkHeader(version, kind, reserved, stream, length);
      if (length === 0) frames.push({ kind: kind as FrameKind, stream, payload: new Uint8Array(0) });
      else this.#need = { kind: kind as FrameKind, stream, length, payload: Buffer.allocUnsafeSlow(length), filled: 0 };
    }
    return frames;
  }
}
