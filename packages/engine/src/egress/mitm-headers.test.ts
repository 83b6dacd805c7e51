/**
 * The header rewriting of intercepted requests and responses: examples and fast-check properties
 * (no hop-by-hop header survives, placeholders never go upstream, secrets never come back).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Redactor } from "../secrets/redact.js";
import { hostHeaderMatches, isEncoded, isHopByHop, rewriteRequestHeaders, rewriteResponseHeaders } from "./mitm-headers.js";

const KEY = { name: "OPENAI", placeholder: "mvm-ph-OPENAI-0000", value: "sk-live-REAL-1234" };
const OTHER = { name: "OTHER", placeholder: "mvm-ph-OTHER-1111", value: "other-REAL-5678" };

function lowerNames(flat: readonly string[]): string[] {
  return flat.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
}

describe("rewriteRequestHeaders", () => {
  it("substitutes placeholders in values, drops hop-by-hop and proxy headers, forces identity", () => {
    const raw = [
      "Host", "api.test",
      "Authorization", `Bearer ${KEY.placeholder}`,
      "Connection", "keep-alive, X-Drop",
      "X-Drop", "1",
      "Proxy-Authorization", "Basic abc",
      "Accept-Encoding", "gzip, br",
      "Transfer-Encoding", "chunked",
      "X-Keep", KEY.placeholder,
    ];
    const out = rewriteRequestHeaders(raw, [KEY, OTHER]);
    assert.deepEqual(out.used, ["OPENAI"]);
    assert.deepEqual(out.headers, [
      "Host", "api.test",
      "Authorization", `Bearer ${KEY.value}`,
      "X-Keep", KEY.value,
      "accept-encoding", "identity",
    ]);
  });

  it("leaves accept-encoding alone when no secret went in", () => {
    const out = rewriteRequestHeaders(["Accept-Encoding", "gzip", "X-A", "b"], [KEY]);
    assert.deepEqual(out, { headers: ["Accept-Encoding", "gzip", "X-A", "b"], used: [] });
  });

  it("property: no hop-by-hop header and no placeholder goes upstream; used names are exact", () => {
    const names = fc.constantFrom("Host", "Authorization", "Connection", "Keep-Alive", "TE", "Upgrade", "Proxy-Foo", "X-Api-Key", "accept-encoding", "Transfer-Encoding", "X-Listed");
    const values = fc.oneof(
      fc.string({ maxLength: 20 }),
      fc.constantFrom(KEY.placeholder, `Bearer ${KEY.placeholder}`, `${OTHER.placeholder},${KEY.placeholder}`, "x-listed", "close"),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(names, values), { maxLength: 12 }), (pairs) => {
        const raw = pairs.flat();
        const out = rewriteRequestHeaders(raw, [KEY, OTHER]);
        const listed = new Set<string>();
        for (const [n, v] of pairs) if (n.toLowerCase() === "connection") for (const t of v.split(",")) listed.add(t.trim().toLowerCase());
        for (const name of lowerNames(out.headers)) assert.equal(isHopByHop(name, listed), false, name);
        for (const value of out.headers) {
          assert.equal(value.includes(KEY.placeholder), false);
          assert.equal(value.includes(OTHER.placeholder), false);
        }
        const forwarded = pairs.filter(([n]) => !isHopByHop(n.toLowerCase(), listed)).map(([, v]) => v);
        const expected = [KEY, OTHER].filter((s) => forwarded.some((v) => v.includes(s.placeholder))).map((s) => s.name);
        assert.deepEqual([...out.used].sort(), expected.sort());
        if (out.used.length > 0) {
          assert.deepEqual(out.headers.slice(-2), ["accept-encoding", "identity"]);
          assert.equal(lowerNames(out.headers).filter((n) => n === "accept-encoding").length, 1);
        }
      }),
    );
  });
});

describe("rewriteResponseHeaders", () => {
  it("property: no secret value survives and content-length goes when asked", () => {
    const redactor = new Redactor([KEY, OTHER].map((s) => ({ secret: s.value, replacement: s.placeholder })));
    const redact = (v: string): string => redactor.redactString(v);
    const part = fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom(KEY.value, OTHER.value));
    const value = fc.array(part, { maxLength: 4 }).map((p) => p.join(""));
    const names = fc.constantFrom("Content-Length", "X-Echo", "Set-Cookie", "Connection", "Transfer-Encoding", "Content-Type");
    fc.assert(
      fc.property(fc.array(fc.tuple(names, value), { maxLength: 10 }), fc.boolean(), (pairs, dropLength) => {
        const out = rewriteResponseHeaders(pairs.flat(), redact, dropLength);
        for (const v of out) {
          assert.equal(v.includes(KEY.value), false);
          assert.equal(v.includes(OTHER.value), false);
        }
        const lower = lowerNames(out);
        assert.equal(lower.includes("transfer-encoding"), false);
        assert.equal(lower.includes("connection"), false);
        if (dropLength) assert.equal(lower.includes("content-length"), false);
      }),
    );
  });
});

describe("hostHeaderMatches", () => {
  it("accepts exactly one Host naming the host, with or without the port", () => {
    assert.equal(hostHeaderMatches(["Host", "api.test"], "api.test", 443), true);
    assert.equal(hostHeaderMatches(["host", "API.test:443"], "api.test", 443), true);
    assert.equal(hostHeaderMatches(["host", "api.test."], "api.test", 443), true);
    assert.equal(hostHeaderMatches(["host", "api.test:8443"], "api.test", 443), false);
    assert.equal(hostHeaderMatches(["host", "evil.test"], "api.test", 443), false);
    assert.equal(hostHeaderMatches([], "api.test", 443), false);
    assert.equal(hostHeaderMatches(["host", "api.test", "host", "api.test"], "api.test", 443), false);
  });

  it("property: a Host of another name never matches", () => {
    fc.assert(
      fc.property(fc.domain(), fc.domain(), fc.integer({ min: 1, max: 65535 }), (a, b, port) => {
        fc.pre(a.toLowerCase() !== b.toLowerCase());
        assert.equal(hostHeaderMatches(["Host", b], a.toLowerCase(), port), false);
        assert.equal(hostHeaderMatches(["Host", `${b}:${port}`], a.toLowerCase(), port), false);
        assert.equal(hostHeaderMatches(["Host", `${a}:${port}`], a.toLowerCase(), port), true);
      }),
    );
  });
});

describe("isEncoded", () => {
  it("sees any coding other than identity", () => {
    assert.equal(isEncoded(["Content-Encoding", "gzip"]), true);
    assert.equal(isEncoded(["content-encoding", "identity, br"]), true);
    assert.equal(isEncoded(["Content-Encoding", "identity"]), false);
    assert.equal(isEncoded(["Content-Type", "gzip"]), false);
  });
});
