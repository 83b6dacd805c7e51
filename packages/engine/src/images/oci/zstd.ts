/**
 * zstd decompression of layer blobs, streaming, with fzstd (pure JS; Node.js 20 has no zstd).
 *
 * fzstd allocates each frame's window as its header declares it (up to 2 GiB) and moves the whole
 * window once per block. So every byte goes through a frame scanner first, which walks frame
 * headers and block headers (never decoding) and refuses, before fzstd sees the bytes: a window
 * over {@link MAX_ZSTD_WINDOW_BYTES}, a dictionary, a reserved block type or bit, a block over
 * 128 KiB, and anything that is not a zstd or skippable frame. The output is counted against the
 * caller's cap as it is produced.
 */
import { Decompress } from "fzstd";
import { UnsupportedCapabilityError } from "@mvm/protocol";
import { OciImageError } from "./documents.js";

/**
 * Largest window accepted, in bytes (8 MiB): what `zstd -19` and the Go encoders registries
 * use by default; `zstd --long` frames are refused.
 */
export const MAX_ZSTD_WINDOW_BYTES = 8 * 1024 * 1024;
/** Largest block a zstd frame may hold (the format's own limit). */
const MAX_BLOCK_BYTES = 128 * 1024;
const ZSTD_MAGIC = 0xfd2fb528;

type ScanState =
  | { kind: "magic" }
  | { kind: "skippable-size" }
  | { kind: "frame-header"; checksum: boolean }
  | { kind: "block-header"; checksum: boolean }
  | { kind: "skip"; bytes: number; then: "block-header" | "checksum" | "magic"; checksum: boolean };

/** Walks frame and block headers of a zstd stream across chunks; throws at the first refused one. */
export class ZstdFrameScanner {
  #state: ScanState = { kind: "magic" };
  #pending = Buffer.alloc(0);
  readonly #what: string;
  #frames = 0;

  constructor(what: string) {
    this.#what = what;
  }

  /** Scans `chunk` (the next bytes of the stream). */
  push(chunk: Buffer): void {
    let buf = this.#pending.length > 0 ? Buffer.concat([this.#pending, chunk]) : chunk;
    let at = 0;
    for (;;) {
      const s = this.#state;
      if (s.kind === "skip") {
        const n = Math.min(s.bytes, buf.length - at);
        at += n;
        if (n < s.bytes) {
          this.#state = { ...s, bytes: s.bytes - n };
          break;
        }
        this.#state = s.then === "block-header" ? { kind: "block-header", checksum: s.checksum } : s.then === "checksum" ? { kind: "skip", bytes: 4, then: "magic", checksum: false } : { kind: "magic" };
        continue;
      }
      const need = s.kind === "frame-header" ? this.#frameHeaderLength(buf, at) : s.kind === "block-header" ? 3 : 4;
      if (need === undefined || buf.length - at < need) break;
      if (s.kind === "magic") {
        const magic = buf.readUInt32LE(at);
        at += 4;
        this.#frames++;
        if (magic === ZSTD_MAGIC) this.#state = { kind: "frame-header", checksum: false };
        else if ((magic & 0xfffffff0) === 0x184d2a50) this.#state = { kind: "skippable-size" };
        else throw this.#bad("not a zstd frame");
      } else if (s.kind === "skippable-size") {
        const size = buf.readUInt32LE(at);
        at += 4;
        this.#state = { kind: "skip", bytes: size, then: "magic", checksum: false };
      } else if (s.kind === "frame-header") {
        const checksum = this.#frameHeader(buf.subarray(at, at + need));
        at += need;
        this.#state = { kind: "block-header", checksum };
      } else {
        const header = buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16);
        at += 3;
        const last = (header & 1) === 1;
        const type = (header >> 1) & 3;
        const size = header >>> 3;
        if (type === 3) throw this.#bad("a reserved block type");
        if (size > MAX_BLOCK_BYTES) throw this.#bad(`a block of ${size} bytes (at most ${MAX_BLOCK_BYTES})`);
        const body = type === 1 ? 1 : size;
        this.#state = { kind: "skip", bytes: body, then: last ? (s.checksum ? "checksum" : "magic") : "block-header", checksum: s.checksum };
      }
    }
    this.#pending = Buffer.from(buf.subarray(at));
    buf = Buffer.alloc(0);
  }

  /** Checks the stream ended on a frame boundary. */
  end(): void {
    if (this.#state.kind !== "magic" || this.#pending.length > 0 || this.#frames === 0) throw this.#bad("a truncated frame");
  }

  /** Bytes of the frame header starting at `at` (after the magic), once its first byte is there. */
  #frameHeaderLength(buf: Buffer, at: number): number | undefined {
    if (buf.length - at < 1) return undefined;
    const fhd = buf[at]!;
    const singleSegment = (fhd >> 5) & 1;
    const fcsField = fhd >> 6;
    const dictBytes = [0, 1, 2, 4][fhd & 3]!;
    const fcsBytes = fcsField === 0 ? singleSegment : [0, 2, 4, 8][fcsField]!;
    return 1 + (singleSegment ? 0 : 1) + dictBytes + fcsBytes;
  }

  /** Checks a whole frame header; returns whether the frame ends with a checksum. */
  #frameHeader(h: Buffer): boolean {
    const fhd = h[0]!;
    if ((fhd & 0x08) !== 0) throw this.#bad("a reserved frame header bit");
    const singleSegment = ((fhd >> 5) & 1) === 1;
    const fcsField = fhd >> 6;
    const dictBytes = [0, 1, 2, 4][fhd & 3]!;
    let at = 1;
    let window = 0;
    if (!singleSegment) {
      const wd = h[at++]!;
      const base = 2 ** (10 + (wd >> 3));
      window = base + (base / 8) * (wd & 7);
    }
    let dictId = 0;
    for (let i = 0; i < dictBytes; i++) dictId += h[at++]! * 2 ** (8 * i);
    if (dictId !== 0) throw new UnsupportedCapabilityError(`Cannot apply ${this.#what}: its zstd frame needs dictionary ${dictId}, and dictionaries are not supported`);
    if (singleSegment) {
      const fcsBytes = fcsField === 0 ? 1 : [0, 2, 4, 8][fcsField]!;
      let size = 0;
      for (let i = 0; i < fcsBytes; i++) size += h[at + i]! * 2 ** (8 * i);
      window = size + (fcsField === 1 ? 256 : 0);
    }
    if (window > MAX_ZSTD_WINDOW_BYTES) {
      throw new UnsupportedCapabilityError(`Cannot apply ${this.#what}: its zstd window of ${window} bytes is over the ${MAX_ZSTD_WINDOW_BYTES}-byte limit`, {
        hint: "recompress the layer without --long (or use gzip layers)",
      });
    }
    return (fhd & 0x04) !== 0;
  }

  #bad(detail: string): OciImageError {
    return new OciImageError("schema", `Cannot apply ${this.#what}: not readable zstd: ${detail}`);
  }
}

/**
 * The decompressed bytes of the zstd stream `source`, chunk by chunk; at most `maxBytes` in all.
 * @throws OciImageError (`too-large`, `schema`); UnsupportedCapabilityError for a window or
 *   dictionary this decoder refuses.
 */
export async function* zstdDecompress(source: AsyncIterable<Buffer>, maxBytes: number, what: string): AsyncGenerator<Buffer> {
  const scanner = new ZstdFrameScanner(what);
  let out: Buffer[] = [];
  let total = 0;
  const decoder = new Decompress((data) => {
    if (data.length === 0) return;
    total += data.length;
    if (total > maxBytes) throw new OciImageError("too-large", `Cannot apply ${what}: it expands to more than ${maxBytes} bytes`);
    // A block fzstd hands out may be a view of its window, which the next block overwrites.
    out.push(Buffer.from(data));
  });
  const feed = (chunk: Uint8Array, final: boolean): void => {
    try {
      decoder.push(chunk, final);
    } catch (err) {
      if (err instanceof OciImageError) throw err;
      throw new OciImageError("schema", `Cannot apply ${what}: not readable zstd: ${(err as Error).message}`, { cause: err });
    }
  };
  for await (const chunk of source) {
    scanner.push(chunk);
    feed(chunk, false);
    const ready = out;
    out = [];
    yield* ready;
  }
  scanner.end();
  feed(new Uint8Array(0), true);
  yield* out;
}
