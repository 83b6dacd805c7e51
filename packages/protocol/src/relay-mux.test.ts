import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Transform, Writable, type Duplex } from "node:stream";
import {
  RELAY_FRAME_HEADER_BYTES,
  RELAY_MAX_DATA_PAYLOAD,
  RelayFrameDecoder,
  RelayFrameKind,
  RelayMux,
  RelayProtocolError,
  RelayStreamResetError,
  encodeRelayFrame,
  type RelayStreamInfo,
} from "./relay-mux.js";
import { encodeRelayHeader } from "./relay-frame.js";

/** Two connected ends of a real Unix socket. */
async function socketPair(): Promise<{ a: Socket; b: Socket; dispose(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "relay-mux-"));
  const path = join(dir, "s");
  const server = createServer();
  server.listen(path);
  await once(server, "listening");
  const accepted = once(server, "connection");
  const a = connect(path);
  const [b] = (await accepted) as [Socket];
  server.close();
  return {
    a,
    b,
    dispose() {
      a.destroy();
      b.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function muxPair(windowBytes?: number) {
  const pair = await socketPair();
  const opts = windowBytes === undefined ? {} : { windowBytes };
  const guest = new RelayMux(pair.a, pair.a, { role: "guest", ...opts });
  const host = new RelayMux(pair.b, pair.b, { role: "host", ...opts });
  return { guest, host, dispose: pair.dispose };
}

function nextStream(mux: RelayMux): Promise<[Duplex, RelayStreamInfo]> {
  return once(mux, "stream") as Promise<[Duplex, RelayStreamInfo]>;
}

/** Reads to the end without destroying the stream (its writable side may still be in use). */
function readAll(stream: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  return new Promise((resolve, reject) => {
    stream.on("data", (chunk: Buffer) => parts.push(chunk));
    stream.once("end", () => resolve(Buffer.concat(parts)));
    stream.once("error", reject);
  });
}

/** Resolves on "close" (events.once would reject on a preceding "error"). */
function closeOf(emitter: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => emitter.once("close", () => resolve()));
}

function sha(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

/** Resolves once `cond` holds, checking after each turn of the event loop. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

function rawHeader(kind: number, flags: number, reserved: number, stream: number, length: number): Buffer {
  const h = Buffer.alloc(RELAY_FRAME_HEADER_BYTES);
  h.writeUInt8(kind, 0);
  h.writeUInt8(flags, 1);
  h.writeUInt16BE(reserved, 2);
  h.writeUInt32BE(stream, 4);
  h.writeUInt32BE(length, 8);
  return h;
}

describe("relay frame format", () => {
  it("lays out the header as documented", () => {
    const f = encodeRelayFrame(RelayFrameKind.Data, 0x01020304, Buffer.from([0xaa, 0xbb]));
    assert.deepEqual([...f], [2, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2, 0xaa, 0xbb]);
    assert.equal(RELAY_FRAME_HEADER_BYTES, 12);
    assert.deepEqual([...encodeRelayFrame(RelayFrameKind.Open, 2, Buffer.from([0x1f, 0x90]))], [1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0x1f, 0x90]);
  });

  it("refuses to encode frames that break the format", () => {
    assert.throws(() => encodeRelayFrame(RelayFrameKind.Data, 0, Buffer.from([1])), RelayProtocolError);
    assert.throws(() => encodeRelayFrame(RelayFrameKind.Data, 1, Buffer.alloc(RELAY_MAX_DATA_PAYLOAD + 1)), RelayProtocolError);
    assert.throws(() => encodeRelayFrame(RelayFrameKind.Open, 1, Buffer.from([0, 80])), RelayProtocolError);
    assert.throws(() => encodeRelayHeader(RelayFrameKind.Data, 1, RELAY_MAX_DATA_PAYLOAD + 1), RelayProtocolError);
    assert.throws(() => encodeRelayHeader(RelayFrameKind.Data, 1, 0), RelayProtocolError);
  });

  it("encodes a header alone exactly as the head of the whole frame", () => {
    const payload = randomBytes(5000);
    assert.deepEqual(Buffer.concat([encodeRelayHeader(RelayFrameKind.Data, 7, payload.length), payload]), encodeRelayFrame(RelayFrameKind.Data, 7, payload));
  });
});

describe("RelayFrameDecoder payload memory", () => {
  const frame = (n: number, fill: number): Buffer => encodeRelayFrame(RelayFrameKind.Data, 1, Buffer.alloc(n, fill));

  it("copies a payload that shares its chunk with other bytes into a buffer of exactly its length", () => {
    const wire = Buffer.concat([frame(10_000, 1), frame(3, 2)]);
    const frames = new RelayFrameDecoder("guest").push(wire);
    assert.deepEqual(frames.map((f) => f.payload.length), [10_000, 3]);
    for (const f of frames) {
      assert.notEqual(f.payload.buffer, wire.buffer, "a payload never pins the larger chunk");
      assert.equal(f.payload.buffer.byteLength, f.payload.length, "no shared pool either");
    }
    wire.fill(0);
    assert.equal(frames[0]!.payload[9_999], 1);
  });

  it("assembles a payload split over many chunks into one buffer of its length", () => {
    const wire = frame(RELAY_MAX_DATA_PAYLOAD, 7);
    const d = new RelayFrameDecoder("guest");
    const out = [];
    for (let at = 0; at < wire.length; at += 1000) out.push(...d.push(Buffer.from(wire.subarray(at, at + 1000))));
    assert.equal(out.length, 1);
    assert.equal(out[0]!.payload.buffer.byteLength, RELAY_MAX_DATA_PAYLOAD);
    assert.ok(out[0]!.payload.every((b) => b === 7));
    assert.equal(d.bufferedBytes, 0);
  });

  it("hands on a payload uncopied only when its chunk holds nothing but that frame", () => {
    const wire = Buffer.from(frame(8192, 3));
    assert.equal(wire.buffer.byteLength, wire.length);
    const [f] = new RelayFrameDecoder("guest").push(wire);
    assert.equal(f!.payload.buffer, wire.buffer);
    assert.equal(f!.payload.length, 8192);
  });
});

describe("RelayMux", () => {
  it("carries 20 MiB each way on a guest-opened stream", async () => {
    const { guest, host, dispose } = await muxPair();
    try {
      const incoming = nextStream(host);
      const up = randomBytes(20 * 1024 * 1024);
      const s = guest.open();
      assert.equal(s.relayId, 1);
      s.end(up);
      const [hs, info] = await incoming;
      assert.deepEqual(info, { id: 1 });
      // Echo back everything through the same stream.
      hs.pipe(hs);
      const back = await readAll(s);
      assert.equal(sha(back), sha(up));
      await until(() => guest.openStreams === 0 && host.openStreams === 0);
    } finally {
      dispose();
    }
  });

  it("hold stops the host's writes at a frame boundary (nothing reaches the peer until release), reading goes on, and release delivers everything in order", async () => {
    const { guest, host, dispose } = await muxPair();
    try {
      const incoming = nextStream(host);
      const s = guest.open();
      s.write("hello");
      const [hs] = await incoming;
      const got: Buffer[] = [];
      s.on("data", (c: Buffer) => got.push(c));
      const up: Buffer[] = [];
      hs.on("data", (c: Buffer) => up.push(c));
      await until(() => Buffer.concat(up).toString() === "hello");
      await host.hold();
      const down = randomBytes(3 * 1024 * 1024);
      hs.write(down);
      hs.end();
      // The guest still reaches the host while the host holds.
      s.write(" again");
      await until(() => Buffer.concat(up).toString() === "hello again");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(Buffer.concat(got).length, 0, "no byte crossed while held");
      host.release();
      await until(() => Buffer.concat(got).length === down.length);
      assert.equal(sha(Buffer.concat(got)), sha(down));
      s.end();
      await until(() => guest.openStreams === 0 && host.openStreams === 0);
    } finally {
      dispose();
    }
  });

  it("carries 20 MiB on a host-opened stream with its port", async () => {
    const { guest, host, dispose } = await muxPair();
    try {
      const incoming = nextStream(guest);
      const s = host.open(8080);
      assert.equal(s.relayId, 2);
      const [gs, info] = await incoming;
      assert.deepEqual(info, { id: 2, port: 8080 });
      const down = randomBytes(20 * 1024 * 1024);
      gs.end(down);
      s.end();
      assert.equal(sha(await readAll(s)), sha(down));
      assert.equal((await readAll(gs)).length, 0);
    } finally {
      dispose();
    }
  });

  it("runs many concurrent streams in both directions with increasing ids", async () => {
    const { guest, host, dispose } = await muxPair(32 * 1024);
    try {
      const echo = (s: Duplex): void => void s.pipe(s);
      host.on("stream", echo);
      guest.on("stream", echo);
      const payloads = Array.from({ length: 100 }, (_, i) => randomBytes(10_000 + i * 997));
      const results = payloads.map(async (p, i) => {
        const s = i % 2 === 0 ? guest.open() : host.open(1000 + i);
        s.end(p);
        return { id: s.relayId, ok: (await readAll(s)).equals(p) };
      });
      const done = await Promise.all(results);
      assert.ok(done.every((r) => r.ok));
      const guestIds = done.filter((_, i) => i % 2 === 0).map((r) => r.id);
      assert.deepEqual(guestIds, guestIds.map((_, i) => 1 + 2 * i));
      await until(() => guest.openStreams === 0 && host.openStreams === 0);
    } finally {
      dispose();
    }
  });

  it("never lets a sender get more than one window ahead of a slow reader", async () => {
    const windowBytes = 64 * 1024;
    const guestToHost = new PassThrough();
    const hostToGuest = new PassThrough();
    let sentData = 0;
    let consumed = 0;
    let worst = -Infinity;
    // Counts Data bytes as they go on the wire (a frame may be written as header and payload).
    const wire = new RelayFrameDecoder("guest");
    const meter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        for (const f of wire.push(chunk)) if (f.kind === RelayFrameKind.Data) sentData += f.payload.length;
        worst = Math.max(worst, sentData - consumed);
        cb(null, chunk);
      },
    });
    meter.pipe(guestToHost);
    const guest = new RelayMux(hostToGuest, meter, { role: "guest", windowBytes });
    const host = new RelayMux(guestToHost, hostToGuest, { role: "host", windowBytes });
    const incoming = nextStream(host);
    const total = 2 * 1024 * 1024;
    const s = guest.open();
    s.on("error", () => {});
    s.end(randomBytes(total));
    const [hs] = await incoming;
    hs.on("error", () => {});
    // A slow reader: one small read per turn of the event loop.
    await new Promise<void>((resolve) => {
      const step = (): void => {
        const chunk = hs.read(4096) as Buffer | null;
        if (chunk) consumed += chunk.length;
        assert.ok(hs.readableLength <= windowBytes);
        if (hs.readableEnded || consumed === total) return resolve();
        setImmediate(step);
      };
      step();
    });
    assert.equal(consumed, total);
    // read() grants credit before it returns its chunk, so one read of slack on top of the window.
    assert.ok(worst <= windowBytes + 4096, `sender ran ${worst} bytes ahead of the reader`);
    assert.ok(worst >= windowBytes, "the test never filled the window");
    guest.close();
    host.close();
  });

  it("stops producing Data while the output is full", async () => {
    const held: Array<() => void> = [];
    let written = 0;
    const output = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, cb) {
        written += chunk.length;
        held.push(() => cb());
      },
    });
    const guest = new RelayMux(new PassThrough(), output, { role: "guest", windowBytes: 4 * 1024 * 1024 });
    const s = guest.open();
    s.on("error", () => {});
    const total = 1024 * 1024;
    s.end(randomBytes(total));
    let worst = 0;
    while (written < total) {
      await new Promise((r) => setImmediate(r));
      worst = Math.max(worst, output.writableLength);
      held.shift()?.();
    }
    // One frame may be in flight beyond the high-water mark, never more.
    assert.ok(worst <= 1024 + RELAY_FRAME_HEADER_BYTES + RELAY_MAX_DATA_PAYLOAD, `output held ${worst} bytes`);
    guest.close();
  });

  it("supports half-close in each direction", async () => {
    const { guest, host, dispose } = await muxPair();
    try {
      const incoming = nextStream(host);
      const s = guest.open();
      s.end("request");
      const [hs] = await incoming;
      assert.equal((await readAll(hs)).toString(), "request");
      // The guest has finished writing but still reads.
      hs.write("response part 1, ");
      hs.end("part 2");
      assert.equal((await readAll(s)).toString(), "response part 1, part 2");
      await until(() => guest.openStreams === 0 && host.openStreams === 0);
    } finally {
      dispose();
    }
  });

  it("resets a stream from either side with a sanitized reason", async () => {
    const { guest, host, dispose } = await muxPair();
    try {
      const incoming = nextStream(host);
      const s = guest.open();
      s.write("x");
      s.on("error", () => {});
      const [hs] = await incoming;
      const hsError = once(hs, "error");
      s.destroy(new Error("gone\x01\u00e9 away"));
      const [err] = (await hsError) as [RelayStreamResetError];
      assert.ok(err instanceof RelayStreamResetError);
      assert.equal(err.reason, "gone?? away");
      assert.match(err.message, /gone\?\? away/);
      await until(() => guest.openStreams === 0 && host.openStreams === 0);

      const incoming2 = nextStream(guest);
      const h2 = host.open(22);
      const [g2] = await incoming2;
      h2.on("error", () => {});
      const g2Error = once(g2, "error");
      h2.destroy(new Error("connection refused to guest port 22"));
      const [err2] = (await g2Error) as [RelayStreamResetError];
      assert.equal(err2.reason, "connection refused to guest port 22");
      await until(() => guest.openStreams === 0 && host.openStreams === 0);
      // The muxes survive resets.
      const incoming3 = nextStream(host);
      guest.open().end("still alive");
      const [h3] = await incoming3;
      assert.equal((await readAll(h3)).toString(), "still alive");
    } finally {
      dispose();
    }
  });

  it("destroys its streams and closes when the channel ends", async () => {
    const { guest, host, dispose } = await muxPair();
    try {
      const incoming = nextStream(host);
      const s = guest.open();
      s.write("x");
      const [hs] = await incoming;
      const guestErr = once(s, "error");
      hs.on("error", () => {});
      const closed = closeOf(guest);
      host.close("Host going away");
      await closed;
      await guestErr;
      assert.ok(s.destroyed && hs.destroyed);
      assert.throws(() => guest.open(), /closed/);
    } finally {
      dispose();
    }
  });

  it("rejects bad open arguments", () => {
    const guest = new RelayMux(new PassThrough(), new PassThrough(), { role: "guest" });
    const host = new RelayMux(new PassThrough(), new PassThrough(), { role: "host", maxStreams: 1 });
    assert.throws(() => guest.open(80), RangeError);
    assert.throws(() => host.open(), RangeError);
    assert.throws(() => host.open(0), RangeError);
    assert.throws(() => host.open(65536), RangeError);
    host.open(80).on("error", () => {});
    assert.throws(() => host.open(81), /limit 1/);
    guest.close();
    host.close();
  });
});

describe("RelayMux against a hostile peer", () => {
  const open1 = encodeRelayFrame(RelayFrameKind.Open, 1);
  const cases: Array<[string, Buffer[], number?]> = [
    ["an unknown kind", [rawHeader(9, 0, 0, 1, 0)]],
    ["nonzero flags", [open1, rawHeader(RelayFrameKind.End, 1, 0, 1, 0)]],
    ["nonzero reserved bits", [open1, rawHeader(RelayFrameKind.End, 0, 4, 1, 0)]],
    ["stream id 0", [rawHeader(RelayFrameKind.Credit, 0, 0, 0, 4), Buffer.alloc(4, 1)]],
    ["an oversize Data header", [open1, rawHeader(RelayFrameKind.Data, 0, 0, 1, RELAY_MAX_DATA_PAYLOAD + 1)]],
    ["a header claiming 4 GiB", [open1, rawHeader(RelayFrameKind.Data, 0, 0, 1, 0xffffffff)]],
    ["empty Data", [open1, rawHeader(RelayFrameKind.Data, 0, 0, 1, 0)]],
    ["Data beyond credit", [open1, encodeRelayFrame(RelayFrameKind.Data, 1, Buffer.alloc(3000)), encodeRelayFrame(RelayFrameKind.Data, 1, Buffer.alloc(1100))], 4096],
    ["an Open with the host's parity", [rawHeader(RelayFrameKind.Open, 0, 0, 2, 0)]],
    ["an Open carrying a port from the guest", [rawHeader(RelayFrameKind.Open, 0, 0, 1, 2), Buffer.from([0, 80])]],
    ["a reused id", [open1, encodeRelayFrame(RelayFrameKind.End, 1), encodeRelayFrame(RelayFrameKind.Reset, 1), open1]],
    ["a decreasing id", [encodeRelayFrame(RelayFrameKind.Open, 5), encodeRelayFrame(RelayFrameKind.Open, 3)]],
    ["Data on a stream never opened", [encodeRelayFrame(RelayFrameKind.Data, 7, Buffer.from("hi"))]],
    ["Credit on a stream never opened", [encodeRelayFrame(RelayFrameKind.Credit, 7, Buffer.from([0, 0, 0, 1]))]],
    ["Data on a host stream never opened", [encodeRelayFrame(RelayFrameKind.Data, 4, Buffer.from("hi"))]],
    ["Data after End", [open1, encodeRelayFrame(RelayFrameKind.End, 1), encodeRelayFrame(RelayFrameKind.Data, 1, Buffer.from("x"))]],
    ["End after End", [open1, encodeRelayFrame(RelayFrameKind.End, 1), encodeRelayFrame(RelayFrameKind.End, 1)]],
    ["a Reset reason over 256 bytes", [open1, rawHeader(RelayFrameKind.Reset, 0, 0, 1, 257)]],
    ["a Credit of the wrong size", [open1, rawHeader(RelayFrameKind.Credit, 0, 0, 1, 8)]],
    ["a zero Credit", [open1, encodeRelayFrame(RelayFrameKind.Credit, 1, Buffer.alloc(4))]],
    ["too many open streams", [open1, encodeRelayFrame(RelayFrameKind.Open, 3), encodeRelayFrame(RelayFrameKind.Open, 5)]],
    ["a frame cut off by the end of the channel", [open1, rawHeader(RelayFrameKind.Data, 0, 0, 1, 10), Buffer.alloc(3)]],
  ];

  for (const [name, frames, windowBytes] of cases) {
    it(`fails the whole channel on ${name}`, async () => {
      const input = new PassThrough();
      const output = new PassThrough();
      output.resume();
      const host = new RelayMux(input, output, { role: "host", maxStreams: 2, ...(windowBytes ? { windowBytes } : {}) });
      const events: string[] = [];
      const streams: Duplex[] = [];
      host.on("stream", (s: Duplex) => {
        streams.push(s);
        s.on("error", () => {});
      });
      host.on("error", (err) => events.push(err instanceof RelayProtocolError ? "protocol error" : `other error: ${String(err)}`));
      const closed = closeOf(host).then(() => events.push("close"));
      // A stream the host opened must die too.
      const mine = host.open(443);
      mine.on("error", () => {});
      for (const f of frames) input.write(f);
      input.end();
      await closed;
      assert.deepEqual(events, ["protocol error", "close"]);
      assert.ok(mine.destroyed);
      assert.ok(streams.every((s) => s.destroyed));
      assert.equal(host.openStreams, 0);
    });
  }

  it("tolerates Credit and Reset that trail a finished stream", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    output.resume();
    const host = new RelayMux(input, output, { role: "host" });
    host.on("error", (err) => assert.fail(err));
    const incoming = nextStream(host);
    input.write(encodeRelayFrame(RelayFrameKind.Open, 1));
    input.write(encodeRelayFrame(RelayFrameKind.End, 1));
    const [hs] = await incoming;
    hs.resume();
    hs.on("error", () => {});
    hs.end();
    await closeOf(hs);
    assert.equal(host.openStreams, 0);
    input.write(encodeRelayFrame(RelayFrameKind.Credit, 1, Buffer.from([0, 0, 1, 0])));
    input.write(encodeRelayFrame(RelayFrameKind.Reset, 1));
    const next = nextStream(host);
    input.write(encodeRelayFrame(RelayFrameKind.Open, 3));
    const [h3] = await next;
    h3.on("error", () => {});
    host.close();
  });
});
