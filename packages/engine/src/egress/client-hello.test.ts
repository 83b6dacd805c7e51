/**
 * parseClientHello against real ClientHellos from node:tls, hand-built hostile hellos and
 * fast-check mutations; readClientHello against in-process streams and real loopback sockets.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import { PassThrough, duplexPair } from "node:stream";
import tls from "node:tls";
import { domainToASCII } from "node:url";
import { describe, it } from "node:test";
import { AbortedError, InvalidArgumentError, TimeoutError, TransportError } from "@mvm/protocol";
import fc from "fast-check";
import { SandboxCa } from "./sandbox-ca.js";
import {
  type ClientHelloParse,
  ClientHelloRejectedError,
  MAX_CLIENT_HELLO_BYTES,
  parseClientHello,
  readClientHello,
} from "./client-hello.js";

// ---- Capturing real hellos -------------------------------------------------------------------

interface CaptureOptions {
  servername: string;
  ALPNProtocols?: string[];
  minVersion?: tls.SecureVersion;
  maxVersion?: tls.SecureVersion;
}

/** The first TLS record node:tls writes for `options`, captured from an in-process duplex. */
async function captureHello(options: CaptureOptions): Promise<Buffer> {
  const [client, peer] = duplexPair();
  const socket = tls.connect({ socket: client, ...options });
  socket.on("error", () => {});
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of peer as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    total += chunk.length;
    if (total >= 5 && total >= 5 + Buffer.concat(chunks).readUInt16BE(3)) break;
  }
  socket.destroy();
  const bytes = Buffer.concat(chunks);
  return bytes.subarray(0, 5 + bytes.readUInt16BE(3));
}

function expectHello(verdict: ClientHelloParse): Extract<ClientHelloParse, { kind: "hello" }> {
  assert.equal(verdict.kind, "hello", JSON.stringify(verdict));
  return verdict as Extract<ClientHelloParse, { kind: "hello" }>;
}

function expectInvalid(verdict: ClientHelloParse, pattern: RegExp): void {
  assert.equal(verdict.kind, "invalid", JSON.stringify(verdict));
  assert.match((verdict as { reason: string }).reason, pattern);
}

// ---- Building hellos by hand -----------------------------------------------------------------

const u8 = (n: number): Buffer => Buffer.from([n]);
const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const u24 = (n: number): Buffer => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);
const vec8 = (body: Uint8Array): Buffer => Buffer.concat([u8(body.length), body]);
const vec16 = (body: Uint8Array): Buffer => Buffer.concat([u16(body.length), body]);
const ascii = (text: string): Buffer => Buffer.from(text, "latin1");

type Extension = readonly [type: number, data: Uint8Array];

function sniExt(...entries: (string | Uint8Array | [type: number, name: string])[]): Extension {
  const list = entries.map((entry) =>
    Array.isArray(entry) ? Buffer.concat([u8(entry[0]), vec16(ascii(entry[1]))]) : Buffer.concat([u8(0), vec16(typeof entry === "string" ? ascii(entry) : entry)]),
  );
  return [0, vec16(Buffer.concat(list))];
}
const alpnExt = (...names: string[]): Extension => [16, vec16(Buffer.concat(names.map((n) => vec8(ascii(n)))))];
const versionsExt = (...versions: number[]): Extension => [43, vec8(Buffer.concat(versions.map(u16)))];

interface HelloParts {
  legacyVersion?: number;
  sessionId?: Uint8Array;
  suites?: Uint8Array;
  compression?: Uint8Array;
  /** Omitted: no extensions block at all. */
  extensions?: readonly Extension[];
  /** Raw bytes appended to the body (after the extensions block). */
  trailer?: Uint8Array;
}

/** A ClientHello handshake message, header included. */
function helloMessage(parts: HelloParts = {}): Buffer {
  const body = Buffer.concat([
    u16(parts.legacyVersion ?? 0x0303),
    Buffer.alloc(32, 0xab),
    vec8(parts.sessionId ?? Buffer.alloc(32, 7)),
    vec16(parts.suites ?? Buffer.from([0x13, 0x01, 0xc0, 0x2f])),
    vec8(parts.compression ?? Buffer.from([0])),
    parts.extensions === undefined
      ? Buffer.alloc(0)
      : vec16(Buffer.concat(parts.extensions.map(([type, data]) => Buffer.concat([u16(type), vec16(data)])))),
    parts.trailer ?? Buffer.alloc(0),
  ]);
  return Buffer.concat([u8(1), u24(body.length), body]);
}

/** Wraps a handshake message in records of the given payload sizes (the last takes the rest). */
function records(message: Uint8Array, sizes: readonly number[] = [], recordVersion = 0x0301): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (const size of [...sizes, message.length]) {
    const part = message.subarray(at, Math.min(message.length, at + size));
    if (part.length === 0) break;
    out.push(Buffer.concat([u8(22), u16(recordVersion), u16(part.length), part]));
    at += part.length;
  }
  return Buffer.concat(out);
}

const hello = (parts: HelloParts = {}): Buffer => records(helloMessage(parts));

// ---- Tests -----------------------------------------------------------------------------------

describe("parseClientHello on node:tls hellos", () => {
  const punycode = domainToASCII("bücher.example");
  const cases: { name: string; options: CaptureOptions; serverName: string | undefined; alpn: string[]; tlsVersion: string }[] = [
    { name: "plain host", options: { servername: "example.com" }, serverName: "example.com", alpn: [], tlsVersion: "TLSv1.3" },
    { name: "mixed case and trailing dot", options: { servername: "API.Example.COM." }, serverName: "api.example.com", alpn: [], tlsVersion: "TLSv1.3" },
    { name: "IDNA punycode", options: { servername: punycode, ALPNProtocols: ["h2"] }, serverName: punycode, alpn: ["h2"], tlsVersion: "TLSv1.3" },
    { name: "ALPN h2 and http/1.1", options: { servername: "api.example.com", ALPNProtocols: ["h2", "http/1.1"] }, serverName: "api.example.com", alpn: ["h2", "http/1.1"], tlsVersion: "TLSv1.3" },
    { name: "TLS 1.2 only", options: { servername: "tls12.example.org", minVersion: "TLSv1.2", maxVersion: "TLSv1.2" }, serverName: "tls12.example.org", alpn: [], tlsVersion: "TLSv1.2" },
    { name: "TLS 1.3 only", options: { servername: "tls13.example.org", minVersion: "TLSv1.3", maxVersion: "TLSv1.3", ALPNProtocols: ["http/1.1"] }, serverName: "tls13.example.org", alpn: ["http/1.1"], tlsVersion: "TLSv1.3" },
    { name: "63-byte label", options: { servername: `${"a".repeat(63)}.example` }, serverName: `${"a".repeat(63)}.example`, alpn: [], tlsVersion: "TLSv1.3" },
    { name: "no SNI", options: { servername: "" }, serverName: undefined, alpn: [], tlsVersion: "TLSv1.3" },
  ];

  for (const c of cases) {
    it(`reads ${c.name}`, async () => {
      const bytes = await captureHello(c.options);
      const verdict = expectHello(parseClientHello(bytes));
      assert.deepEqual(verdict, { kind: "hello", serverName: c.serverName, alpn: c.alpn, ech: false, tlsVersion: c.tlsVersion, helloBytes: bytes.length });
    });
  }

  it("refuses the raw UTF-8 name node sends for a non-ASCII servername", async () => {
    expectInvalid(parseClientHello(await captureHello({ servername: "bücher.example" })), /byte 0xc3/);
  });

  it("answers need-more at every split point, with a needBytes that never overshoots", async () => {
    const bytes = await captureHello({ servername: "split.example.net", ALPNProtocols: ["h2"] });
    for (let cut = 0; cut < bytes.length; cut++) {
      const verdict = parseClientHello(bytes.subarray(0, cut));
      assert.equal(verdict.kind, "need-more", `cut at ${cut}`);
      const { needBytes } = verdict as { needBytes: number };
      assert.ok(needBytes >= 1 && cut + needBytes <= bytes.length, `cut at ${cut}: needBytes ${needBytes}`);
    }
  });

  it("reassembles a hello split over 2, 3 and 4 records, and refuses 5", async () => {
    const wire = await captureHello({ servername: "frag.example.com", ALPNProtocols: ["h2"] });
    const message = wire.subarray(5);
    const expected = { serverName: "frag.example.com", alpn: ["h2"], ech: false, tlsVersion: "TLSv1.3" };
    for (const sizes of [[100], [1], [2, 1], [3, 100], [1, 1, 1], [50, 50, 50]]) {
      const split = records(message, sizes);
      assert.equal(split.length, wire.length + 5 * sizes.length);
      assert.deepEqual(parseClientHello(split), { kind: "hello", ...expected, helloBytes: split.length }, `sizes ${sizes.join(",")}`);
      for (let cut = 0; cut < split.length; cut++) assert.equal(parseClientHello(split.subarray(0, cut)).kind, "need-more");
    }
    expectInvalid(parseClientHello(records(message, [1, 1, 1, 1])), /more than 4 records/);
    expectInvalid(parseClientHello(records(message, [1, 1, 1, 1]).subarray(0, 5 * 4 + 4)), /more than 4 records/);
  });
});

describe("parseClientHello on hand-built hellos", () => {
  it("reads a minimal hello and the legacy version when supported_versions is absent", () => {
    assert.deepEqual(parseClientHello(hello()), { kind: "hello", serverName: undefined, alpn: [], ech: false, tlsVersion: "TLSv1.2", helloBytes: hello().length });
    assert.equal(expectHello(parseClientHello(hello({ legacyVersion: 0x0301, extensions: [] }))).tlsVersion, "TLSv1");
    expectInvalid(parseClientHello(hello({ legacyVersion: 0x0305 })), /no known TLS version/);
  });

  it("takes the highest known supported version, ignoring GREASE", () => {
    assert.equal(expectHello(parseClientHello(hello({ extensions: [versionsExt(0x7a7a, 0x0304, 0x0303)] }))).tlsVersion, "TLSv1.3");
    expectInvalid(parseClientHello(hello({ extensions: [versionsExt(0x7a7a, 0x0a0a)] })), /no known TLS version \(0x7a7a, 0x0a0a\)/);
    expectInvalid(parseClientHello(hello({ extensions: [[43, Buffer.from([3, 3, 4, 3])]] })), /odd/);
  });

  it("reports ECH and the older encrypted SNI", () => {
    const sni = sniExt("public.example");
    assert.equal(expectHello(parseClientHello(hello({ extensions: [sni, [0xfe0d, Buffer.from([0, 1, 2])]] }))).ech, true);
    assert.equal(expectHello(parseClientHello(hello({ extensions: [sni, [0xffce, Buffer.from([9])]] }))).ech, true);
    assert.equal(expectHello(parseClientHello(hello({ extensions: [sni, [0xfe0c, Buffer.from([9])]] }))).ech, false);
  });

  it("accepts a 253-byte name, with or without a trailing dot", () => {
    const name = `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`;
    assert.equal(name.length, 253);
    assert.equal(expectHello(parseClientHello(hello({ extensions: [sniExt(name)] }))).serverName, name);
    assert.equal(expectHello(parseClientHello(hello({ extensions: [sniExt(`${name}.`)] }))).serverName, name);
  });

  const refusals: [string, HelloParts, RegExp][] = [
    ["two host names", { extensions: [sniExt("a.example", "b.example")] }, /more than one entry/],
    ["the same host name twice", { extensions: [sniExt("a.example", "a.example")] }, /more than one entry/],
    ["a host name then another name type", { extensions: [sniExt("a.example", [1, "x"])] }, /more than one entry/],
    ["a name type other than host_name", { extensions: [sniExt([1, "a.example"])] }, /type 1, not host_name/],
    ["a 254-byte name", { extensions: [sniExt(`${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`)] }, /254 bytes, over 253/],
    ["a 64-byte label", { extensions: [sniExt(`${"a".repeat(64)}.example`)] }, /label over 63/],
    ["a NUL in the name", { extensions: [sniExt("good.example\0.evil.example")] }, /byte 0x00 at offset 12/],
    ["a non-ASCII byte", { extensions: [sniExt(Buffer.from("caf\u00e9.example", "latin1"))] }, /byte 0xe9/],
    ["a space", { extensions: [sniExt("a b.example")] }, /byte 0x20/],
    ["a wildcard", { extensions: [sniExt("*.example")] }, /byte 0x2a/],
    ["an empty label", { extensions: [sniExt("a..example")] }, /empty label/],
    ["a leading dot", { extensions: [sniExt(".example")] }, /empty label at byte 0/],
    ["two trailing dots", { extensions: [sniExt("example..")] }, /empty label/],
    ["a lone dot", { extensions: [sniExt(".")] }, /empty/],
    ["an empty host_name", { extensions: [sniExt("")] }, /host_name length 0/],
    ["an empty server_name extension", { extensions: [[0, Buffer.alloc(0)]] }, /runs past the end of extension 0/],
    ["a server_name list longer than its extension", { extensions: [[0, Buffer.concat([u16(40), u8(0), vec16(ascii("a.example"))])]] }, /runs past the end/],
    ["a host_name length past its list", { extensions: [[0, vec16(Buffer.concat([u8(0), u16(200), ascii("a.example")]))]] }, /host_name runs past the end of server_name list/],
    ["bytes after the server_name list", { extensions: [[0, Buffer.concat([sniExt("a.example")[1], u8(0)])]] }, /extension 0 has 1 trailing bytes/],
    ["a duplicate extension", { extensions: [sniExt("a.example"), [21, Buffer.alloc(2)], [21, Buffer.alloc(2)]] }, /extension 21 appears twice/],
    ["a duplicate server_name", { extensions: [sniExt("a.example"), sniExt("a.example")] }, /extension 0 appears twice/],
    ["an empty ALPN name", { extensions: [alpnExt("h2", "")] }, /ALPN protocol length 0/],
    ["an empty ALPN list", { extensions: [[16, vec16(Buffer.alloc(0))]] }, /ALPN list length 0/],
    ["a session id over 32 bytes", { sessionId: Buffer.alloc(33) }, /session_id length 33/],
    ["no cipher suites", { suites: Buffer.alloc(0) }, /cipher_suites length 0/],
    ["an odd cipher suite list", { suites: Buffer.alloc(3) }, /odd/],
    ["no compression methods", { compression: Buffer.alloc(0) }, /compression_methods length 0/],
    ["bytes after the extensions block", { extensions: [sniExt("a.example")], trailer: Buffer.from([1, 2]) }, /ClientHello has 2 trailing bytes/],
    ["a legacy version that is not 3.x", { legacyVersion: 0x0203 }, /no known TLS version \(0x0203\)/],
  ];
  for (const [name, parts, pattern] of refusals) {
    it(`refuses ${name}`, () => expectInvalid(parseClientHello(hello(parts)), pattern));
  }

  it("refuses an extension whose length points past the extensions block", () => {
    const message = helloMessage({ extensions: [sniExt("a.example")] });
    // The extension's own length field sits 2 bytes before its data; bump it by one.
    const at = message.length - sniExt("a.example")[1].length - 2;
    message.writeUInt16BE(message.readUInt16BE(at) + 1, at);
    expectInvalid(parseClientHello(records(message)), /extension 0 runs past the end of extensions/);
  });

  it("refuses record-layer faults", () => {
    const message = helloMessage({ extensions: [sniExt("a.example")] });
    const good = records(message, [10]);
    const second = 5 + 10;
    const withType = (type: number): Buffer => Buffer.concat([good.subarray(0, second), u8(type), good.subarray(second + 1)]);
    expectInvalid(parseClientHello(withType(21)), /record of type 21 at offset 15 interrupts/);
    expectInvalid(parseClientHello(withType(20).subarray(0, second + 1)), /record of type 20/);
    expectInvalid(parseClientHello(Buffer.from([22, 3, 5])), /minor version 5/);
    expectInvalid(parseClientHello(Buffer.from([22, 3, 1, 0, 0])), /record at offset 0 is empty/);
    expectInvalid(parseClientHello(Buffer.from([22, 3, 1, 0x40, 1])), /declares 16385 bytes/);
    expectInvalid(parseClientHello(Buffer.from([22, 3, 1, 0x40, 0])), /exceed 16384 bytes/);
    expectInvalid(parseClientHello(Buffer.from([22, 3, 1, 0, 4, 2])), /handshake message type 2/);
    expectInvalid(parseClientHello(Buffer.from([22, 3, 1, 0, 4, 1, 0, 0x40, 0])), /declares 16388 bytes/);
    // A record that carries bytes past the end of the hello, refused as soon as its header shows it.
    const padded = Buffer.concat([u8(22), u16(0x0301), u16(message.length + 1), message, u8(0)]);
    expectInvalid(parseClientHello(padded), /carries 1 bytes after the ClientHello/);
    expectInvalid(parseClientHello(padded.subarray(0, 9)), /carries 1 bytes after the ClientHello/);
  });

  it("stops at the hello's last record and leaves later records to the caller", () => {
    const wire = hello({ extensions: [sniExt("a.example")] });
    const changeCipherSpec = Buffer.from([20, 3, 3, 0, 1, 1]);
    const verdict = expectHello(parseClientHello(Buffer.concat([wire, changeCipherSpec])));
    assert.equal(verdict.helloBytes, wire.length);
    assert.equal(verdict.serverName, "a.example");
  });

  it("needs more when the handshake length points past the buffered records", () => {
    const message = helloMessage({ extensions: [sniExt("a.example")] });
    const firstRecordOnly = records(message, [40]).subarray(0, 45);
    assert.deepEqual(parseClientHello(firstRecordOnly), { kind: "need-more", needBytes: 5 });
  });

  it("answers not-tls for plain-text protocols and SSLv2", () => {
    for (const text of ["CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com\r\n\r\n", "GET / HTTP/1.1\r\n", "SSH-2.0-OpenSSH_9.2\r\n", "C"]) {
      assert.deepEqual(parseClientHello(ascii(text)), { kind: "not-tls" }, text);
    }
    assert.deepEqual(parseClientHello(Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01])), { kind: "not-tls" });
    assert.deepEqual(parseClientHello(Buffer.from([22, 2])), { kind: "not-tls" });
    assert.deepEqual(parseClientHello(Buffer.from([22])), { kind: "need-more", needBytes: 4 });
    assert.deepEqual(parseClientHello(Buffer.alloc(0)), { kind: "need-more", needBytes: 5 });
  });
});

describe("parseClientHello properties", () => {
  const kinds = new Set(["need-more", "hello", "not-tls", "invalid"]);
  /** A reported name must appear in the input bytes (case-insensitively). */
  const assertSound = (input: Uint8Array, verdict: ClientHelloParse): void => {
    assert.ok(kinds.has(verdict.kind));
    if (verdict.kind === "need-more") assert.ok(Number.isInteger(verdict.needBytes) && verdict.needBytes >= 1);
    if (verdict.kind === "hello") {
      assert.ok(verdict.helloBytes <= input.length && verdict.helloBytes <= MAX_CLIENT_HELLO_BYTES);
      if (verdict.serverName !== undefined) {
        assert.ok(/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(verdict.serverName) && verdict.serverName.length <= 253);
        assert.ok(Buffer.from(input).toString("latin1").toLowerCase().includes(verdict.serverName));
      }
    }
  };

  it("never throws on arbitrary bytes, with or without a TLS record header", () => {
    const tlsPrefix = fc.tuple(fc.constantFrom(0x0300, 0x0301, 0x0303), fc.uint8Array({ maxLength: 600 })).map(([version, rest]) =>
      Buffer.concat([u8(22), u16(version), u16(rest.length + (rest.length % 3)), rest]),
    );
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 600 }), tlsPrefix), (input) => assertSound(input, parseClientHello(input))),
      { numRuns: 3000 },
    );
  });

  it("never throws or invents a name on mutated and truncated real hellos", async () => {
    const seeds = [
      await captureHello({ servername: "seed.example.com", ALPNProtocols: ["h2", "http/1.1"] }),
      await captureHello({ servername: "tls12.example", maxVersion: "TLSv1.2" }),
      records(helloMessage({ extensions: [sniExt("x.example"), alpnExt("h2")] }), [7, 30]),
    ];
    const mutation = fc.record({
      seed: fc.nat({ max: seeds.length - 1 }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
      insert: fc.option(fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 })), { nil: undefined }),
    });
    fc.assert(
      fc.property(mutation, ({ seed, edits, cut, insert }) => {
        let input = Buffer.from(seeds[seed] as Buffer);
        for (const [at, value] of edits) input[at % input.length] = value;
        if (insert !== undefined) {
          const at = insert[0] % input.length;
          input = Buffer.concat([input.subarray(0, at), insert[1], input.subarray(at)]);
        }
        if (cut !== undefined) input = input.subarray(0, cut % (input.length + 1));
        assertSound(input, parseClientHello(input));
      }),
      { numRuns: 5000 },
    );
  });

  it("reads back any valid name, lower-cased and without its trailing dot, over any split of up to 4 records", () => {
    const split = fc.array(fc.integer({ min: 1, max: 120 }), { maxLength: 3 });
    fc.assert(
      fc.property(fc.domain(), fc.boolean(), fc.boolean(), split, (domain, upper, dot, sizes) => {
        fc.pre(domain.length <= 253);
        const sent = `${upper ? domain.toUpperCase() : domain}${dot ? "." : ""}`;
        const message = helloMessage({ extensions: [sniExt(sent), alpnExt("h2")] });
        const verdict = expectHello(parseClientHello(records(message, sizes)));
        assert.equal(verdict.serverName, domain.toLowerCase());
        assert.deepEqual(verdict.alpn, ["h2"]);
      }),
      { numRuns: 1000 },
    );
  });
});

describe("readClientHello", () => {
  const T = { timeoutMs: 20_000 };

  it("returns the same verdict whichever byte boundary the hello arrives split at", async () => {
    const bytes = await captureHello({ servername: "chunks.example", ALPNProtocols: ["http/1.1"] });
    const expected = expectHello(parseClientHello(bytes));
    for (let cut = 1; cut < bytes.length; cut++) {
      const stream = new PassThrough();
      const reading = readClientHello(stream, T);
      stream.write(bytes.subarray(0, cut));
      stream.write(bytes.subarray(cut));
      const { hello: got, buffered } = await reading;
      assert.deepEqual({ kind: "hello", ...got }, expected);
      assert.deepEqual(buffered, bytes);
    }
  });

  it("pushes bytes after the hello back onto the stream and removes its listeners", async () => {
    const bytes = await captureHello({ servername: "excess.example" });
    const stream = new PassThrough();
    const before = ["readable", "end", "close", "error"].map((e) => stream.listenerCount(e));
    const reading = readClientHello(stream, T);
    stream.write(Buffer.concat([bytes.subarray(0, 10)]));
    stream.write(Buffer.concat([bytes.subarray(10), ascii("early data")]));
    const { buffered } = await reading;
    assert.deepEqual(buffered, bytes);
    assert.deepEqual(["readable", "end", "close", "error"].map((e) => stream.listenerCount(e)), before);
    stream.end(ascii(" and more"));
    const rest: Buffer[] = [];
    for await (const chunk of stream) rest.push(chunk as Buffer);
    assert.equal(Buffer.concat(rest).toString(), "early data and more");
  });

  it("refuses not-TLS, invalid and oversized input with a ClientHelloRejectedError", async () => {
    const cases: [Buffer, number | undefined, string, RegExp][] = [
      [ascii("GET / HTTP/1.1\r\n"), undefined, "not-tls", /first bytes "474554202f204854"/],
      [hello({ extensions: [sniExt("a.example", "b.example")] }), undefined, "invalid", /Invalid TLS ClientHello: server_name has more than one entry/],
      [hello({ extensions: [sniExt("a.example")] }), 40, "too-large", /needs more than "40" bytes/],
      [Buffer.from([22, 3, 1, 0x10, 0x00]), 1000, "too-large", /needs more than "1000" bytes/],
    ];
    for (const [input, maxBytes, rejection, pattern] of cases) {
      const stream = new PassThrough();
      const reading = readClientHello(stream, { ...T, ...(maxBytes === undefined ? {} : { maxBytes }) });
      stream.write(input);
      const err = await reading.then(() => assert.fail("resolved"), (e: unknown) => e);
      assert.ok(err instanceof ClientHelloRejectedError && err instanceof InvalidArgumentError, String(err));
      assert.equal(err.rejection, rejection);
      assert.match(err.message, pattern);
    }
  });

  it("fails with TransportError when the stream ends or errors early", async () => {
    const bytes = await captureHello({ servername: "short.example" });
    const ending = new PassThrough();
    const ended = readClientHello(ending, T);
    ending.end(bytes.subarray(0, 20));
    await assert.rejects(ended, (e: unknown) => e instanceof TransportError && /ended after 20 bytes/.test(e.message));

    const failing = new PassThrough();
    const failed = readClientHello(failing, T);
    const cause = new Error("reset");
    failing.destroy(cause);
    await assert.rejects(failed, (e: unknown) => e instanceof TransportError && e.cause === cause);

    await assert.rejects(readClientHello(ending, T), TransportError);
  });

  it("fails with TimeoutError when the hello stops short, and AbortedError on abort", async () => {
    const bytes = await captureHello({ servername: "slow.example" });
    const stalled = new PassThrough();
    const timing = readClientHello(stalled, { timeoutMs: 50 });
    stalled.write(bytes.subarray(0, 30));
    await assert.rejects(timing, (e: unknown) => e instanceof TimeoutError && /received 30 bytes/.test(e.message));
    assert.equal(stalled.listenerCount("readable"), 0);

    const controller = new AbortController();
    const aborting = readClientHello(new PassThrough(), { ...T, signal: controller.signal });
    controller.abort(new Error("shutdown"));
    await assert.rejects(aborting, AbortedError);
    await assert.rejects(readClientHello(new PassThrough(), { ...T, signal: controller.signal }), AbortedError);
  });

  it("validates its options and the stream mode", async () => {
    await assert.rejects(readClientHello(new PassThrough(), { timeoutMs: 0 }), /Invalid timeoutMs "0"/);
    await assert.rejects(readClientHello(new PassThrough(), { ...T, maxBytes: MAX_CLIENT_HELLO_BYTES + 1 }), /Invalid maxBytes "16385"/);
    await assert.rejects(readClientHello(new PassThrough({ objectMode: true }), T), /object-mode/);
    const text = new PassThrough();
    text.setEncoding("latin1");
    const reading = readClientHello(text, T);
    text.write(Buffer.from([22, 3, 1]));
    await assert.rejects(reading, /yields strings/);
  });
});

describe("readClientHello on loopback sockets", { timeout: 60_000 }, () => {
  it("reads the hello a real TLS client sends over TCP", async () => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const accepted = once(server, "connection") as Promise<[net.Socket]>;
      const { port } = server.address() as net.AddressInfo;
      const client = tls.connect({ host: "127.0.0.1", port, servername: "api.example.com", ALPNProtocols: ["h2", "http/1.1"] });
      client.on("error", () => {});
      const [socket] = await accepted;
      const { hello: got, buffered } = await readClientHello(socket, { timeoutMs: 20_000 });
      assert.deepEqual(got, { serverName: "api.example.com", alpn: ["h2", "http/1.1"], ech: false, tlsVersion: "TLSv1.3", helloBytes: buffered.length });
      client.destroy();
      socket.destroy();
    } finally {
      server.close();
    }
  });

  it("forwards the buffered hello and the rest unchanged so the upstream handshake completes", async () => {
    const testCa = await SandboxCa.create({ sandboxId: "client-hello-test" });
    const leaf = await testCa.leaf("api.example.com");
    const upstream = tls.createServer({ key: leaf.keyPem, cert: leaf.certPem, ALPNProtocols: ["h2"] }, (s) => s.pipe(s));
    const gateway = net.createServer();
    const seen: string[] = [];
    gateway.on("connection", (inbound) => {
      inbound.on("error", () => {});
      void readClientHello(inbound, { timeoutMs: 20_000 }).then(({ hello: got, buffered }) => {
        seen.push(`${got.serverName} ${got.alpn.join(",")}`);
        const outbound = net.connect((upstream.address() as net.AddressInfo).port, "127.0.0.1", () => {
          outbound.write(buffered);
          inbound.pipe(outbound).pipe(inbound);
        });
        outbound.on("error", () => inbound.destroy());
      }, () => inbound.destroy());
    });
    upstream.listen(0, "127.0.0.1");
    gateway.listen(0, "127.0.0.1");
    await Promise.all([once(upstream, "listening"), once(gateway, "listening")]);
    try {
      const { port } = gateway.address() as net.AddressInfo;
      const client = tls.connect({ host: "127.0.0.1", port, servername: "api.example.com", ca: testCa.certPem, ALPNProtocols: ["h2"] });
      await once(client, "secureConnect");
      assert.equal(client.alpnProtocol, "h2");
      client.write("ping");
      const [echo] = (await once(client, "data")) as [Buffer];
      assert.equal(echo.toString(), "ping");
      assert.deepEqual(seen, ["api.example.com h2"]);
      client.destroy();
    } finally {
      gateway.close();
      upstream.close();
    }
  });
});
