/**
 * Property-based tests of the relay decoder and multiplexer against arbitrary peer bytes: the
 * decoder fails only with RelayProtocolError, never holds more than one header and one maximal
 * payload, and returns exactly the frames that were encoded; the mux, fed random frame
 * sequences, either keeps going or fails once with RelayProtocolError and closes.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { PassThrough, type Duplex } from "node:stream";
import {
  RELAY_FRAME_HEADER_BYTES,
  RELAY_MAX_DATA_PAYLOAD,
  RelayFrameDecoder,
  RelayMux,
  RelayProtocolError,
  encodeRelayFrame,
  type RelayFrameKind,
} from "./relay-mux.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 300);
const MAX_HELD = RELAY_FRAME_HEADER_BYTES + RELAY_MAX_DATA_PAYLOAD;

/** A header with any field values, followed by up to `length` payload bytes. */
const rawFrame = fc
  .record({
    kind: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 255 })),
    flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 255 })),
    reserved: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })),
    stream: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.nat()),
    length: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.constantFrom(256, 257, RELAY_MAX_DATA_PAYLOAD, RELAY_MAX_DATA_PAYLOAD + 1, 0xffffffff)),
  })
  .map(({ kind, flags, reserved, stream, length }) => {
    const h = Buffer.alloc(RELAY_FRAME_HEADER_BYTES);
    h.writeUInt8(kind, 0);
    h.writeUInt8(flags, 1);
    h.writeUInt16BE(reserved, 2);
    h.writeUInt32BE(stream, 4);
    h.writeUInt32BE(length, 8);
    return Buffer.concat([h, Buffer.alloc(Math.min(length, 70_000), 0x41)]);
  });

/** Frames a guest could legally send in isolation, with small ids so they interact. */
const guestFrame = fc.oneof(
  fc.integer({ min: 0, max: 6 }).map((i) => encodeRelayFrame(1, 2 * i + 1)),
  fc.tuple(fc.integer({ min: 1, max: 13 }), fc.integer({ min: 1, max: 70_000 })).map(([id, n]) =>
    encodeRelayFrame(2, id, Buffer.alloc(Math.min(n, RELAY_MAX_DATA_PAYLOAD), 7)),
  ),
  fc.integer({ min: 1, max: 13 }).map((id) => encodeRelayFrame(3, id)),
  fc.tuple(fc.integer({ min: 1, max: 13 }), fc.string({ maxLength: 40 })).map(([id, r]) => encodeRelayFrame(4, id, Buffer.from(r.slice(0, 40), "latin1"))),
  fc.tuple(fc.integer({ min: 1, max: 13 }), fc.nat()).map(([id, n]) => {
    const p = Buffer.alloc(4);
    p.writeUInt32BE(n, 0);
    return encodeRelayFrame(5 as RelayFrameKind, id, p);
  }),
);

/** Splits `bytes` at the given fractions. */
function cut(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  out.push(bytes.subarray(prev));
  return out;
}

const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 });

describe("RelayFrameDecoder (property)", () => {
  it("fails only with RelayProtocolError and never holds more than one frame", () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(rawFrame, guestFrame, fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b))), { maxLength: 12 }), cuts, (frames, at) => {
        const decoder = new RelayFrameDecoder("guest");
        for (const chunk of cut(Buffer.concat(frames), at)) {
          try {
            decoder.push(chunk);
          } catch (err) {
            assert.ok(err instanceof RelayProtocolError, String(err));
            assert.throws(() => decoder.push(Buffer.alloc(1)), RelayProtocolError);
            return;
          }
          assert.ok(decoder.bufferedBytes <= MAX_HELD, `holds ${decoder.bufferedBytes} bytes`);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it("returns exactly the frames encoded, however the bytes are cut", () => {
    fc.assert(
      fc.property(fc.array(guestFrame, { maxLength: 10 }), cuts, (frames, at) => {
        const decoder = new RelayFrameDecoder("guest");
        const got: Buffer[] = [];
        for (const chunk of cut(Buffer.concat(frames), at)) {
          for (const f of decoder.push(chunk)) got.push(encodeRelayFrame(f.kind, f.stream, f.payload));
        }
        decoder.end();
        assert.deepEqual(got, frames);
      }),
      { numRuns: RUNS },
    );
  });
});

describe("RelayFrameDecoder payload memory (property)", () => {
  it("returns the frames encoded, each payload pinning at most its own frame, whether chunks are views or own buffers", () => {
    fc.assert(
      fc.property(fc.array(guestFrame, { maxLength: 10 }), cuts, fc.boolean(), (frames, at, own) => {
        const decoder = new RelayFrameDecoder("guest");
        const got: Buffer[] = [];
        const chunks = own ? frames.map((f) => Buffer.from(f)) : cut(Buffer.concat(frames), at);
        for (const chunk of chunks) {
          for (const f of decoder.push(chunk)) {
            assert.ok(f.payload.buffer.byteLength <= f.payload.length + RELAY_FRAME_HEADER_BYTES, `a ${f.payload.length}-byte payload pins ${f.payload.buffer.byteLength} bytes`);
            got.push(encodeRelayFrame(f.kind, f.stream, f.payload));
          }
        }
        decoder.end();
        assert.deepEqual(got, frames);
      }),
      { numRuns: RUNS },
    );
  });
});

describe("RelayMux (property)", () => {
  it("survives or fails once with RelayProtocolError on any frame sequence", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.oneof(guestFrame, guestFrame, rawFrame), { maxLength: 16 }), cuts, async (frames, at) => {
        const input = new PassThrough();
        const output = new PassThrough();
        output.resume();
        const host = new RelayMux(input, output, { role: "host", maxStreams: 4, windowBytes: 100_000 });
        const errors: unknown[] = [];
        const streams: Duplex[] = [];
        host.on("error", (err) => errors.push(err));
        host.on("stream", (s: Duplex) => {
          streams.push(s);
          s.on("error", () => {});
          // Read some streams, leave others unread.
          if (streams.length % 2 === 0) s.resume();
        });
        const closed = new Promise<void>((resolve) => host.once("close", () => resolve()));
        for (const chunk of cut(Buffer.concat(frames), at)) input.write(chunk);
        input.end();
        await closed;
        assert.ok(errors.length <= 1);
        for (const err of errors) assert.ok(err instanceof RelayProtocolError, String(err));
        assert.equal(host.openStreams, 0);
        assert.ok(streams.every((s) => s.destroyed));
      }),
      { numRuns: Math.ceil(RUNS / 3) },
    );
  });
});
