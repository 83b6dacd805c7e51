/**
 * Property-based tests of the frame decoder. The oracle is a whole-buffer reference decoder
 * written from docs/PROTOCOL.md, independent of frame.ts: the incremental decoder, fed the same
 * bytes cut at arbitrary points, must agree with it frame for frame, fail exactly when it fails,
 * fail only with FrameError, and never hold more than MAX_FRAME_BYTES.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameError,
  FrameKind,
  MAX_CONTROL_PAYLOAD,
  MAX_DATA_PAYLOAD,
  MAX_FRAME_BYTES,
  MAX_STREAM_ID,
  encodeFrame,
  type Frame,
} from "./frame.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 300);

interface RefFrame {
  kind: number;
  stream: number;
  payload: Buffer;
}

/** The header rules of docs/PROTOCOL.md section 1.3, applied to a whole buffer at once. */
function referenceDecode(bytes: Buffer): { frames: RefFrame[]; ok: boolean } {
  const limits: Record<number, [number, number]> = { 1: [0, 65536], 2: [0, 262144], 3: [0, 0], 4: [4, 4] };
  const frames: RefFrame[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    if (bytes.length - pos < 12) return { frames, ok: false };
    const version = bytes[pos]!;
    const kind = bytes[pos + 1]!;
    const reserved = bytes.readUInt16BE(pos + 2);
    const stream = bytes.readUInt32BE(pos + 4);
    const length = bytes.readUInt32BE(pos + 8);
    const limit = limits[kind];
    if (version !== 1 || !limit || reserved !== 0) return { frames, ok: false };
    if ((kind === 1) !== (stream === 0)) return { frames, ok: false };
    if (length < limit[0] || length > limit[1]) return { frames, ok: false };
    if (bytes.length - pos - 12 < length) return { frames, ok: false };
    frames.push({ kind, stream, payload: bytes.subarray(pos + 12, pos + 12 + length) });
    pos += 12 + length;
  }
  return { frames, ok: true };
}

function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, bytes.length]) {
    chunks.push(bytes.subarray(prev, p));
    prev = p;
  }
  return chunks;
}

/** Feeds chunks; checks the decoder's own invariants as it goes. */
function runDecoder(chunks: Buffer[]): { frames: Frame[]; error: FrameError | undefined } {
  const d = new FrameDecoder();
  const frames: Frame[] = [];
  let error: FrameError | undefined;
  for (const chunk of chunks) {
    try {
      frames.push(...d.push(chunk));
    } catch (err) {
      assert.ok(err instanceof FrameError, `push threw ${String(err)}`);
      error = err;
    }
    assert.ok(d.bufferedBytes >= 0 && d.bufferedBytes <= MAX_FRAME_BYTES, `bufferedBytes ${d.bufferedBytes}`);
    if (error) break;
  }
  if (!error) {
    try {
      d.end();
    } catch (err) {
      assert.ok(err instanceof FrameError, `end threw ${String(err)}`);
      error = err;
    }
  }
  if (error) {
    const failed = error;
    assert.throws(() => d.push(encodeFrame(FrameKind.End, 1)), (err) => err === failed, "decoder did not stay failed");
    assert.throws(() => d.end(), (err) => err === failed);
  }
  return { frames, error };
}

function sameFrame(a: Frame, b: RefFrame): boolean {
  return a.kind === b.kind && a.stream === b.stream && Buffer.from(a.payload).equals(b.payload);
}

/** The decoder agrees with the reference: same frames when valid; a FrameError and a prefix of them when not. */
function checkAgainstReference(bytes: Buffer, cuts: number[]): void {
  const ref = referenceDecode(bytes);
  const got = runDecoder(split(bytes, cuts));
  if (ref.ok) {
    assert.equal(got.error, undefined, `unexpected ${String(got.error)}`);
    assert.equal(got.frames.length, ref.frames.length);
  } else {
    assert.ok(got.error, "decoder accepted a stream the reference rejects");
    assert.ok(got.frames.length <= ref.frames.length);
  }
  got.frames.forEach((f, i) => assert.ok(sameFrame(f, ref.frames[i]!), `frame ${i} differs`));
}

/** A payload: usually short and random, sometimes exactly at or near the limit (cheap to build). */
function payload(max: number): fc.Arbitrary<Buffer> {
  return fc.oneof(
    { weight: 12, arbitrary: fc.uint8Array({ maxLength: 48 }).map((a) => Buffer.from(a)) },
    {
      weight: 1,
      arbitrary: fc
        .record({ length: fc.constantFrom(max, max - 1, 4096), seed: fc.integer({ min: 0, max: 255 }) })
        .map(({ length, seed }) => Buffer.alloc(length, seed)),
    },
  );
}

const streamId = fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: MAX_STREAM_ID }));

const validFrame: fc.Arbitrary<RefFrame> = fc.oneof(
  payload(MAX_CONTROL_PAYLOAD).map((p) => ({ kind: FrameKind.Control, stream: 0, payload: p })),
  fc.record({ kind: fc.constant(FrameKind.Data), stream: streamId, payload: payload(MAX_DATA_PAYLOAD) }),
  fc.record({ kind: fc.constant(FrameKind.End), stream: streamId, payload: fc.constant(Buffer.alloc(0)) }),
  fc.record({
    kind: fc.constant(FrameKind.Credit),
    stream: streamId,
    payload: fc.integer({ min: 1, max: 0xffff_ffff }).map((n) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(n);
      return b;
    }),
  }),
);

const validStream = fc.array(validFrame, { maxLength: 12 }).map((frames) => ({
  frames,
  bytes: Buffer.concat(frames.map((f) => encodeFrame(f.kind as FrameKind, f.stream, f.payload))),
}));

const cuts = fc.array(fc.nat(), { maxLength: 24 });

/** Header fields drawn from boundary values, so random headers often pass some checks but not all. */
const headerish = fc
  .record({
    version: fc.constantFrom(1, 1, 1, 0, 2, 255),
    kind: fc.oneof(fc.constantFrom(1, 2, 3, 4), fc.integer({ min: 0, max: 255 })),
    reserved: fc.constantFrom(0, 0, 0, 0, 1, 0x8000, 0xffff),
    stream: fc.constantFrom(0, 0, 1, 2, MAX_STREAM_ID),
    length: fc.oneof(
      fc.integer({ min: 0, max: 40 }),
      fc.constantFrom(4, MAX_CONTROL_PAYLOAD, MAX_CONTROL_PAYLOAD + 1, MAX_DATA_PAYLOAD, MAX_DATA_PAYLOAD + 1, 0xffff_ffff),
    ),
    body: fc.uint8Array({ maxLength: 48 }),
  })
  .map((h) => {
    const head = Buffer.alloc(FRAME_HEADER_BYTES);
    head.writeUInt8(h.version, 0);
    head.writeUInt8(h.kind, 1);
    head.writeUInt16BE(h.reserved, 2);
    head.writeUInt32BE(h.stream, 4);
    head.writeUInt32BE(h.length, 8);
    return Buffer.concat([head, h.body]);
  });

type Mutation =
  | { op: "flip"; pos: number; mask: number }
  | { op: "insert"; pos: number; byte: number }
  | { op: "delete"; pos: number }
  | { op: "truncate"; pos: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant("flip" as const), pos: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ op: fc.constant("insert" as const), pos: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant("delete" as const), pos: fc.nat() }),
  fc.record({ op: fc.constant("truncate" as const), pos: fc.nat() }),
);

function mutate(bytes: Buffer, mutations: Mutation[]): Buffer {
  let b = Buffer.from(bytes);
  for (const m of mutations) {
    const pos = m.pos % (b.length + 1);
    switch (m.op) {
      case "flip":
        if (pos < b.length) b[pos] = b[pos]! ^ m.mask;
        break;
      case "insert":
        b = Buffer.concat([b.subarray(0, pos), Buffer.from([m.byte]), b.subarray(pos)]);
        break;
      case "delete":
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos + 1)]);
        break;
      case "truncate":
        b = b.subarray(0, pos);
        break;
    }
  }
  return b;
}

describe("FrameDecoder properties", () => {
  it("the reference decoder rejects what the documented rules reject", () => {
    // Guards the oracle itself: if it accepted everything, the properties below could not fail.
    assert.equal(referenceDecode(Buffer.from([2, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])).ok, false);
    assert.equal(referenceDecode(Buffer.from([1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])).ok, false);
    assert.equal(referenceDecode(Buffer.from([1, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0])).ok, false);
    assert.equal(referenceDecode(Buffer.from([1, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0])).ok, false);
    assert.equal(referenceDecode(encodeFrame(FrameKind.End, 1)).ok, true);
  });

  it("(a) valid frames cut at random boundaries decode to the same frames", () => {
    fc.assert(
      fc.property(validStream, cuts, ({ frames, bytes }, at) => {
        const got = runDecoder(split(bytes, at));
        assert.equal(got.error, undefined);
        assert.equal(got.frames.length, frames.length);
        got.frames.forEach((f, i) => assert.ok(sameFrame(f, frames[i]!), `frame ${i} differs`));
      }),
      { numRuns: RUNS },
    );
  });

  it("(b) random bytes yield valid frames or a FrameError, never more than MAX_FRAME_BYTES held", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), cuts, (bytes, at) => checkAgainstReference(Buffer.from(bytes), at)),
      { numRuns: RUNS },
    );
  });

  it("(b) random headers built from boundary values agree with the reference", () => {
    fc.assert(
      fc.property(fc.array(headerish, { maxLength: 8 }), cuts, (parts, at) => checkAgainstReference(Buffer.concat(parts), at)),
      { numRuns: RUNS * 3 },
    );
  });

  it("(c) valid streams with bytes flipped, inserted, deleted or cut agree with the reference", () => {
    fc.assert(
      fc.property(validStream, fc.array(mutation, { minLength: 1, maxLength: 4 }), cuts, ({ bytes }, ms, at) =>
        checkAgainstReference(mutate(bytes, ms), at),
      ),
      { numRuns: RUNS * 3 },
    );
  });

  it("(c) a valid prefix followed by garbage agrees with the reference", () => {
    fc.assert(
      fc.property(validStream, fc.uint8Array({ minLength: 1, maxLength: 64 }), cuts, ({ bytes }, junk, at) =>
        checkAgainstReference(Buffer.concat([bytes, junk]), at),
      ),
      { numRuns: RUNS },
    );
  });
});
