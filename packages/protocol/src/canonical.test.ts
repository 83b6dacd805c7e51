import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { canonicalJson } from "./canonical.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 300);

/** A reference written from the definition: keys sorted by UTF-16 code unit at every level, no whitespace. */
function reference(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(reference).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const obj = value as Record<string, unknown>;
    return `{${Object.keys(obj)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${reference(obj[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

/** The same value with every object's keys inserted in another order. */
function reordered(value: unknown, seed: number): unknown {
  if (Array.isArray(value)) return value.map((v) => reordered(v, seed));
  if (typeof value === "object" && value !== null) {
    const keys = Object.keys(value);
    const rotated = keys.map((_, i) => keys[(i + seed) % keys.length]!).reverse();
    const out: Record<string, unknown> = {};
    for (const k of rotated) {
      Object.defineProperty(out, k, { value: reordered((value as Record<string, unknown>)[k], seed), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

function nested(depth: number): unknown {
  let v: unknown = [];
  for (let i = 1; i < depth; i++) v = [v];
  return v;
}

describe("canonicalJson", () => {
  it("sorts keys and writes no whitespace", () => {
    assert.equal(canonicalJson({ b: 1, a: [true, null, "x"], c: { z: 0, y: -1.5 } }), '{"a":[true,null,"x"],"b":1,"c":{"y":-1.5,"z":0}}');
  });

  it("does not depend on key insertion order", () => {
    assert.equal(canonicalJson({ b: 1, a: 2 }), canonicalJson({ a: 2, b: 1 }));
  });

  it("orders keys by UTF-16 code unit, not by code point", () => {
    // U+1F600 is the surrogate pair D83D DE00, which sorts before U+FFFF by code unit.
    assert.equal(canonicalJson({ "\uffff": 1, "\u{1f600}": 2, Z: 3, a: 4 }), '{"Z":3,"a":4,"\u{1f600}":2,"\uffff":1}');
  });

  it("rejects non-finite numbers anywhere", () => {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      assert.throws(() => canonicalJson(bad), TypeError);
      assert.throws(() => canonicalJson({ a: [1, { b: bad }] }), TypeError);
    }
  });

  it("rejects values JSON cannot carry", () => {
    for (const bad of [undefined, () => 1, Symbol("s"), 1n, [undefined], [1, () => 2]]) {
      assert.throws(() => canonicalJson(bad), TypeError, String(typeof bad));
    }
  });

  it("omits object members whose value is undefined", () => {
    assert.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}');
  });

  it("accepts 65 levels of nesting and rejects 66", () => {
    assert.equal(canonicalJson(nested(65)), "[".repeat(65) + "]".repeat(65));
    assert.throws(() => canonicalJson(nested(66)), /deeper than 64/);
  });

  it("escapes strings as JSON does", () => {
    const s = 'quote " backslash \\ newline \n nul \0 lone \ud800';
    assert.equal(canonicalJson(s), JSON.stringify(s));
    assert.equal(JSON.parse(canonicalJson(s)), s);
  });

  it("sorts integer-like keys as strings too", () => {
    assert.equal(canonicalJson({ 9: "a", 10: "b", x: "c" }), '{"10":"b","9":"a","x":"c"}');
  });

  it("matches the reference and keeps the value for any JSON value", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const out = canonicalJson(v);
        assert.equal(out, reference(v));
        assert.deepEqual(JSON.parse(out), JSON.parse(JSON.stringify(v)));
      }),
      { numRuns: RUNS },
    );
  });

  it("is the same for any key order", () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.nat(), (v, seed) => {
        assert.equal(canonicalJson(reordered(v, seed)), canonicalJson(v));
      }),
      { numRuns: RUNS },
    );
  });

  it("is a fixed point: canonicalJson(JSON.parse(canonicalJson(x))) === canonicalJson(x)", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const once = canonicalJson(v);
        assert.equal(canonicalJson(JSON.parse(once)), once);
      }),
      { numRuns: RUNS },
    );
  });
});
