import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  CONTROL_STREAM,
  FRAME_HEADER_BYTES,
  FRAME_VERSION,
  FrameDecoder,
  FrameError,
  FrameKind,
  MAX_CONTROL_PAYLOAD,
  MAX_DATA_PAYLOAD,
  MAX_FRAME_BYTES,
  MAX_STREAM_ID,
  checkHeader,
  decodeCredit,
  encodeCredit,
  encodeFrame,
  type Frame,
} from "./frame.js";

/** A header with arbitrary field values, for frames the encoder refuses to build. */
function rawHeader(version: number, kind: number, reserved: number, stream: number, length: number): Buffer {
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt8(version, 0);
  h.writeUInt8(kind, 1);
  h.writeUInt16BE(reserved, 2);
  h.writeUInt32BE(stream, 4);
  h.writeUInt32BE(length, 8);
  return h;
}

function decodeAll(bytes: Uint8Array): Frame[] {
  const d = new FrameDecoder();
  const frames = d.push(bytes);
  d.end();
  return frames;
}

function plain(f: Frame): { kind: number; stream: number; payload: string } {
  return { kind: f.kind, stream: f.stream, payload: Buffer.from(f.payload).toString("hex") };
}

function filled(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe("encodeFrame", () => {
  it("writes the documented header layout", () => {
    const f = encodeFrame(FrameKind.Data, 0x0a0b0c0d, Buffer.from("xyz"));
    assert.equal(f.toString("hex"), "01020000" + "0a0b0c0d" + "00000003" + Buffer.from("xyz").toString("hex"));
    assert.equal(f.length, FRAME_HEADER_BYTES + 3);
  });

  it("round-trips every kind", () => {
    const frames: Frame[] = [
      { kind: FrameKind.Control, stream: CONTROL_STREAM, payload: Buffer.from('{"t":"hello","version":1}') },
      { kind: FrameKind.Data, stream: 1, payload: filled(1000, 7) },
      { kind: FrameKind.Data, stream: MAX_STREAM_ID, payload: new Uint8Array(0) },
      { kind: FrameKind.End, stream: 42, payload: new Uint8Array(0) },
      { kind: FrameKind.Credit, stream: 3, payload: Buffer.from([0, 1, 0, 0]) },
    ];
    const wire = Buffer.concat(frames.map((f) => encodeFrame(f.kind, f.stream, f.payload)));
    assert.deepEqual(decodeAll(wire).map(plain), frames.map(plain));
  });

  it("defaults to an empty payload", () => {
    assert.equal(encodeFrame(FrameKind.End, 9).length, FRAME_HEADER_BYTES);
  });

  it("rejects stream ids that do not fit a u32", () => {
    for (const stream of [-1, 1.5, MAX_STREAM_ID + 1, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => encodeFrame(FrameKind.Data, stream, Buffer.from("a")), FrameError, `stream ${stream}`);
    }
  });

  it("rejects a kind on the wrong stream", () => {
    assert.throws(() => encodeFrame(FrameKind.Control, 1, Buffer.from("{}")), FrameError);
    for (const kind of [FrameKind.Data, FrameKind.End, FrameKind.Credit]) {
      const payload = kind === FrameKind.Credit ? Buffer.alloc(4, 1) : new Uint8Array(0);
      assert.throws(() => encodeFrame(kind, CONTROL_STREAM, payload), FrameError, `kind ${kind}`);
    }
  });

  it("rejects unknown kinds", () => {
    for (const kind of [0, 5, 255]) {
      assert.throws(() => encodeFrame(kind as FrameKind, 1), FrameError, `kind ${kind}`);
    }
  });

  it("accepts payloads exactly at each limit and rejects one byte more", () => {
    assert.equal(encodeFrame(FrameKind.Control, 0, Buffer.alloc(MAX_CONTROL_PAYLOAD)).length, FRAME_HEADER_BYTES + MAX_CONTROL_PAYLOAD);
    assert.throws(() => encodeFrame(FrameKind.Control, 0, Buffer.alloc(MAX_CONTROL_PAYLOAD + 1)), FrameError);
    assert.equal(encodeFrame(FrameKind.Data, 1, Buffer.alloc(MAX_DATA_PAYLOAD)).length, MAX_FRAME_BYTES);
    assert.throws(() => encodeFrame(FrameKind.Data, 1, Buffer.alloc(MAX_DATA_PAYLOAD + 1)), FrameError);
    assert.throws(() => encodeFrame(FrameKind.End, 1, Buffer.alloc(1)), FrameError);
    for (const n of [0, 3, 5]) assert.throws(() => encodeFrame(FrameKind.Credit, 1, Buffer.alloc(n)), FrameError, `credit of ${n} bytes`);
  });
});

describe("encodeCredit / decodeCredit", () => {
  it("round-trips the smallest and largest grants", () => {
    for (const n of [1, 65536, 0xffff_ffff]) {
      const [frame] = decodeAll(encodeCredit(7, n));
      assert.ok(frame);
      assert.equal(frame.kind, FrameKind.Credit);
      assert.equal(frame.stream, 7);
      assert.equal(decodeCredit(frame), n);
    }
  });

  it("refuses to encode a grant that is not a positive u32", () => {
    for (const n of [0, -1, 1.5, 0x1_0000_0000, Number.NaN]) {
      assert.throws(() => encodeCredit(1, n), FrameError, `grant ${n}`);
    }
  });

  it("rejects a zero grant read off the wire", () => {
    const [frame] = decodeAll(encodeFrame(FrameKind.Credit, 1, Buffer.alloc(4)));
    assert.ok(frame);
    assert.throws(() => decodeCredit(frame), FrameError);
  });
});

describe("checkHeader", () => {
  it("names the field that is wrong", () => {
    assert.throws(() => checkHeader(2, FrameKind.Data, 0, 1, 0), /version 2/);
    assert.throws(() => checkHeader(FRAME_VERSION, 9, 0, 1, 0), /unknown kind 9/);
    assert.throws(() => checkHeader(FRAME_VERSION, FrameKind.Data, 4, 1, 0), /reserved/);
    assert.throws(() => checkHeader(FRAME_VERSION, FrameKind.Data, 0, 0, 0), /on stream 0/);
    assert.throws(() => checkHeader(FRAME_VERSION, FrameKind.Data, 0, 1, MAX_DATA_PAYLOAD + 1), /payload of 262145 bytes/);
  });
});

describe("FrameDecoder", () => {
  const violations: [string, Buffer][] = [
    ["version 0", rawHeader(0, FrameKind.Data, 0, 1, 0)],
    ["version 2", rawHeader(2, FrameKind.Data, 0, 1, 0)],
    ["version 255", rawHeader(255, FrameKind.Data, 0, 1, 0)],
    ["kind 0", rawHeader(1, 0, 0, 1, 0)],
    ["kind 5", rawHeader(1, 5, 0, 1, 0)],
    ["kind 255", rawHeader(1, 255, 0, 1, 0)],
    ["reserved 1", rawHeader(1, FrameKind.Data, 1, 1, 0)],
    ["reserved 0x8000", rawHeader(1, FrameKind.Data, 0x8000, 1, 0)],
    ["reserved 0xffff", rawHeader(1, FrameKind.End, 0xffff, 1, 0)],
    ["control on stream 1", rawHeader(1, FrameKind.Control, 0, 1, 2)],
    ["control on stream 0xffffffff", rawHeader(1, FrameKind.Control, 0, MAX_STREAM_ID, 2)],
    ["data on stream 0", rawHeader(1, FrameKind.Data, 0, 0, 1)],
    ["end on stream 0", rawHeader(1, FrameKind.End, 0, 0, 0)],
    ["credit on stream 0", rawHeader(1, FrameKind.Credit, 0, 0, 4)],
    ["end with a payload", rawHeader(1, FrameKind.End, 0, 1, 1)],
    ["credit of 0 bytes", rawHeader(1, FrameKind.Credit, 0, 1, 0)],
    ["credit of 3 bytes", rawHeader(1, FrameKind.Credit, 0, 1, 3)],
    ["credit of 5 bytes", rawHeader(1, FrameKind.Credit, 0, 1, 5)],
    ["control one byte over", rawHeader(1, FrameKind.Control, 0, 0, MAX_CONTROL_PAYLOAD + 1)],
    ["data one byte over", rawHeader(1, FrameKind.Data, 0, 1, MAX_DATA_PAYLOAD + 1)],
    ["data of 4 GiB", rawHeader(1, FrameKind.Data, 0, 1, 0xffff_ffff)],
  ];
  for (const [name, header] of violations) {
    it(`rejects a header with ${name} before reading its payload`, () => {
      const d = new FrameDecoder();
      // The header alone must be enough: the decoder may not wait for (or buffer) the payload.
      assert.throws(() => d.push(header), FrameError);
      assert.equal(d.bufferedBytes, 0);
    });
  }

  it("decodes frames delivered one byte at a time", () => {
    const frames: Frame[] = [
      { kind: FrameKind.Control, stream: 0, payload: Buffer.from('{"t":"req"}') },
      { kind: FrameKind.Data, stream: 5, payload: filled(300, 1) },
      { kind: FrameKind.Data, stream: 5, payload: new Uint8Array(0) },
      { kind: FrameKind.End, stream: 5, payload: new Uint8Array(0) },
      { kind: FrameKind.Credit, stream: 6, payload: Buffer.from([0, 0, 0x10, 0]) },
    ];
    const wire = Buffer.concat(frames.map((f) => encodeFrame(f.kind, f.stream, f.payload)));
    const d = new FrameDecoder();
    const out: Frame[] = [];
    for (let i = 0; i < wire.length; i++) {
      out.push(...d.push(wire.subarray(i, i + 1)));
      assert.ok(d.bufferedBytes < FRAME_HEADER_BYTES + 300);
    }
    d.end();
    assert.deepEqual(out.map(plain), frames.map(plain));
  });

  it("decodes many frames from one chunk", () => {
    const one = encodeFrame(FrameKind.Data, 2, Buffer.from("ab"));
    const frames = decodeAll(Buffer.concat(Array.from({ length: 100 }, () => one)));
    assert.equal(frames.length, 100);
  });

  it("decodes payloads exactly at each limit", () => {
    const control = encodeFrame(FrameKind.Control, 0, filled(MAX_CONTROL_PAYLOAD, 3));
    const data = encodeFrame(FrameKind.Data, 1, filled(MAX_DATA_PAYLOAD, 4));
    const frames = decodeAll(Buffer.concat([control, data]));
    assert.deepEqual(frames.map((f) => f.payload.byteLength), [MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD]);
    assert.ok(Buffer.from(frames[1]!.payload).equals(filled(MAX_DATA_PAYLOAD, 4)));
  });

  it("holds at most one frame's payload while waiting, and nothing after it completes", () => {
    const wire = encodeFrame(FrameKind.Data, 1, filled(MAX_DATA_PAYLOAD, 9));
    const d = new FrameDecoder();
    assert.deepEqual(d.push(wire.subarray(0, 5)), []);
    assert.equal(d.bufferedBytes, 5);
    assert.deepEqual(d.push(wire.subarray(5, wire.length - 1)), []);
    assert.equal(d.bufferedBytes, MAX_DATA_PAYLOAD - 1);
    assert.ok(d.bufferedBytes <= MAX_FRAME_BYTES);
    assert.equal(d.push(wire.subarray(wire.length - 1)).length, 1);
    assert.equal(d.bufferedBytes, 0);
  });

  it("returns payloads that do not alias the input", () => {
    const wire = encodeFrame(FrameKind.Data, 1, Buffer.from("abcd"));
    const [frame] = new FrameDecoder().push(wire);
    wire.fill(0);
    assert.equal(Buffer.from(frame!.payload).toString(), "abcd");
  });

  it("throws at end() when a header is incomplete", () => {
    const d = new FrameDecoder();
    d.push(encodeFrame(FrameKind.End, 1).subarray(0, 5));
    assert.throws(() => d.end(), /Truncated frame: 5 bytes pending/);
  });

  it("throws at end() when a payload is incomplete", () => {
    const d = new FrameDecoder();
    d.push(encodeFrame(FrameKind.Data, 1, Buffer.from("hello")).subarray(0, FRAME_HEADER_BYTES + 2));
    assert.throws(() => d.end(), FrameError);
  });

  it("throws at end() when only a header of a non-empty frame arrived", () => {
    const d = new FrameDecoder();
    d.push(encodeFrame(FrameKind.Data, 1, Buffer.from("hello")).subarray(0, FRAME_HEADER_BYTES));
    assert.equal(d.bufferedBytes, 0);
    assert.throws(() => d.end(), FrameError);
  });

  it("accepts end() on a frame boundary and on empty input", () => {
    const d = new FrameDecoder();
    d.end();
    const e = new FrameDecoder();
    e.push(encodeFrame(FrameKind.End, 1));
    e.end();
  });

  it("stays failed after an error", () => {
    const d = new FrameDecoder();
    let first: unknown;
    try {
      d.push(Buffer.concat([encodeFrame(FrameKind.End, 1), rawHeader(9, 1, 0, 0, 0)]));
    } catch (err) {
      first = err;
    }
    assert.ok(first instanceof FrameError);
    assert.equal(d.bufferedBytes, 0);
    assert.throws(() => d.push(encodeFrame(FrameKind.End, 1)), (err) => err === first);
    assert.throws(() => d.end(), (err) => err === first);
  });

  it("accepts an empty chunk", () => {
    assert.deepEqual(new FrameDecoder().push(new Uint8Array(0)), []);
  });

  it("decodes from a view into a larger buffer", () => {
    const wire = encodeFrame(FrameKind.Data, 3, Buffer.from("view"));
    const backing = Buffer.concat([Buffer.from("junk"), wire, Buffer.from("more")]);
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 4, wire.length);
    const [frame] = decodeAll(view);
    assert.equal(Buffer.from(frame!.payload).toString(), "view");
  });
});
