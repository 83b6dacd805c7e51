/**
 * The SOCKS5 handshake parser and the HTTP proxy target parsers: fixed cases and fast-check
 * properties (never throw, never hold more than the limit, chunking does not change the outcome).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  encodeSocksConnect,
  MAX_SOCKS_BUFFER_BYTES,
  MAX_SOCKS_REQUEST_BYTES,
  Socks5Parser,
  SocksReply,
  type SocksStep,
  type SocksTarget,
} from "./gateway-socks.js";
import { forwardedHeaders, parseAbsoluteUrl, parseAuthority } from "./gateway-http.js";

/** Feeds `chunks` one by one and collects every step that is not need-more. */
function run(chunks: readonly Uint8Array[]): { steps: SocksStep[]; maxBuffered: number } {
  const parser = new Socks5Parser();
  const steps: SocksStep[] = [];
  let maxBuffered = 0;
  for (const chunk of chunks) {
    parser.feed(chunk);
    for (let s = parser.step(); s.kind !== "need-more"; s = parser.step()) steps.push(s);
    maxBuffered = Math.max(maxBuffered, parser.bufferedBytes);
  }
  return { steps, maxBuffered };
}

/** Splits `bytes` at the given cut points. */
function split(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const p of points) {
    parts.push(bytes.subarray(at, p));
    at = p;
  }
  parts.push(bytes.subarray(at));
  return parts;
}

test("a greeting and a domain CONNECT in one chunk, with early payload kept", () => {
  const bytes = Buffer.concat([encodeSocksConnect({ addressType: "domain", host: "api.example.com", port: 443 }), Buffer.from("hello")]);
  const { steps } = run([bytes]);
  assert.deepEqual(steps[0], { kind: "greeting", accepted: true });
  assert.equal(steps[1]?.kind, "request");
  if (steps[1]?.kind !== "request") return;
  assert.deepEqual(steps[1].target, { addressType: "domain", host: "api.example.com", port: 443 });
  assert.equal(steps[1].rest.toString(), "hello");
});

test("IPv4 and IPv6 targets decode to text node:net accepts", () => {
  const v4 = run([encodeSocksConnect({ addressType: "ipv4", host: "192.0.2.7", port: 22 })]).steps[1];
  assert.deepEqual(v4?.kind === "request" && v4.target, { addressType: "ipv4", host: "192.0.2.7", port: 22 });
  const v6 = run([encodeSocksConnect({ addressType: "ipv6", host: "2001:db8:0:0:0:0:0:1", port: 8080 })]).steps[1];
  assert.deepEqual(v6?.kind === "request" && v6.target, { addressType: "ipv6", host: "2001:db8:0:0:0:0:0:1", port: 8080 });
});

test("only no-auth is accepted; BIND, UDP and unknown address types get their reply codes", () => {
  assert.deepEqual(run([Buffer.from([5, 1, 2])]).steps, [{ kind: "greeting", accepted: false }]);
  const bind = run([Buffer.from([5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80])]).steps[1];
  assert.equal(bind?.kind === "error" && bind.reply, SocksReply.commandNotSupported);
  const udp = run([Buffer.from([5, 1, 0, 5, 3, 0, 1])]).steps[1];
  assert.equal(udp?.kind === "error" && udp.reply, SocksReply.commandNotSupported);
  const atyp = run([Buffer.from([5, 1, 0, 5, 1, 0, 9])]).steps[1];
  assert.equal(atyp?.kind === "error" && atyp.reply, SocksReply.addressTypeNotSupported);
  const v4 = run([Buffer.from([4, 1, 0, 80])]).steps[0];
  assert.equal(v4?.kind, "error");
  assert.equal(run([Buffer.from([5, 0])]).steps[0]?.kind, "error");
});

const targets: fc.Arbitrary<SocksTarget> = fc.oneof(
  fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => ({ addressType: "ipv4" as const, host: b.join(".") })),
  fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((g) => ({ addressType: "ipv6" as const, host: g.map((x) => x.toString(16)).join(":") })),
  fc.uint8Array({ minLength: 1, maxLength: 255 }).map((b) => ({ addressType: "domain" as const, host: Buffer.from(b).toString("latin1") })),
).chain((t) => fc.integer({ min: 0, max: 65535 }).map((port) => ({ ...t, port })));

test("property: any valid request, cut anywhere, decodes to the same target", () => {
  fc.assert(
    fc.property(targets, fc.array(fc.nat(600), { maxLength: 8 }), (target, cuts) => {
      const { steps } = run(split(encodeSocksConnect(target), cuts));
      assert.equal(steps.length, 2);
      const request = steps[1];
      assert.ok(request?.kind === "request");
      assert.deepEqual(request.target, target);
      assert.equal(request.rest.length, 0);
    }),
  );
});

test("property: arbitrary bytes never throw, never leave more than the limit held, and end after one terminal step", () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 700 }), { maxLength: 10 }), (chunks) => {
      const { steps, maxBuffered } = run(chunks);
      assert.ok(maxBuffered <= MAX_SOCKS_BUFFER_BYTES);
      assert.ok(maxBuffered <= MAX_SOCKS_REQUEST_BYTES);
      const terminal = steps.filter((s) => s.kind !== "greeting" || !s.accepted);
      assert.ok(terminal.length <= 1);
      if (terminal.length === 1) assert.equal(steps[steps.length - 1], terminal[0]);
    }),
    { numRuns: 2000 },
  );
});

test("property: mutated valid handshakes never throw", () => {
  fc.assert(
    fc.property(targets, fc.nat(300), fc.nat(255), (target, at, value) => {
      const bytes = Buffer.from(encodeSocksConnect(target));
      bytes[at % bytes.length] = value;
      run([bytes]);
    }),
  );
});

test("CONNECT authorities: names, IPv4 and bracketed IPv6 with a port; nothing else", () => {
  assert.deepEqual(parseAuthority("api.example.com:443"), { host: "api.example.com", port: 443 });
  assert.deepEqual(parseAuthority("[2001:db8::1]:8443"), { host: "2001:db8::1", port: 8443 });
  assert.deepEqual(parseAuthority("192.0.2.1:22"), { host: "192.0.2.1", port: 22 });
  for (const bad of ["api.example.com", "a:0", "a:65536", "user@a:443", "a:443/x", "[::1]", ":443", "a b:443", ""]) {
    assert.equal(parseAuthority(bad), undefined, bad);
  }
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), (s) => {
      const r = parseAuthority(s);
      if (r !== undefined) assert.ok(r.port >= 1 && r.port <= 65535 && r.host.length > 0);
    }),
  );
});

test("absolute URLs: http only, default port 80, no credentials", () => {
  assert.deepEqual(parseAbsoluteUrl("http://Example.COM/a?b=1"), { host: "example.com", port: 80, authority: "example.com", path: "/a?b=1" });
  assert.deepEqual(parseAbsoluteUrl("http://example.com:8080"), { host: "example.com", port: 8080, authority: "example.com:8080", path: "/" });
  for (const bad of ["/relative", "https://example.com/", "http://u:p@example.com/", "ftp://x/", "http://:80/"]) assert.equal(parseAbsoluteUrl(bad), undefined, bad);
  fc.assert(fc.property(fc.string({ maxLength: 200 }), (s) => void parseAbsoluteUrl(`http://${s}`)));
});

test("forwarded headers drop hop-by-hop, proxy-* and Connection-named headers", () => {
  const out = forwardedHeaders(["Host", "x", "Connection", "keep-alive, X-Drop", "X-Drop", "1", "Proxy-Authorization", "Basic y", "Accept", "*/*", "Transfer-Encoding", "chunked"]);
  assert.deepEqual(out, [["Accept", "*/*"]]);
});
