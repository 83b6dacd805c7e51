/**
 * Property tests of the function payload codec: what one side encodes, the other decodes to the
 * same value, in both formats; and arbitrary bytes never crash the decoders with anything but
 * FnCodecError.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { FnCodecError, decodeFnValue, encodeFnValue } from "./fn-codec.js";

const LIMITS = { maxBytes: 1024 * 1024, maxDepth: 64 };
const key = fc.string({ maxLength: 8 }).filter((k) => k !== "__proto__");
const double = fc.double({ noNaN: true, noDefaultInfinity: true });
const tree = (leaf: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> =>
  fc.letrec<{ data: unknown }>((tie) => ({
    data: fc.oneof({ depthSize: "small" }, leaf, fc.array(tie("data"), { maxLength: 4 }), fc.dictionary(key, tie("data"), { maxKeys: 4, noNullPrototype: true })),
  })).data;
const leafOf = (num: fc.Arbitrary<number>) => fc.oneof(fc.constant(null), fc.boolean(), num, fc.integer(), fc.string({ maxLength: 12 }));
/** JSON cannot carry integer-valued doubles past 2^53 - 1 exactly, so encoding refuses them (tested below). */
const data = tree(leafOf(double.filter((d) => !Number.isInteger(d) || Number.isSafeInteger(d))));
const anyData = tree(leafOf(double));
const withBytes = fc.oneof(anyData, fc.uint8Array({ maxLength: 16 }), fc.array(fc.oneof(anyData, fc.uint8Array({ maxLength: 8 })), { maxLength: 4 }));

/** -0 travels as 0 in JSON; everything else is exact. */
const normalize = (v: unknown): unknown =>
  Object.is(v, -0) ? 0 : Array.isArray(v) ? v.map(normalize) : v !== null && typeof v === "object" && !(v instanceof Uint8Array) ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x)])) : v;

describe("function payload codec (properties)", () => {
  it("json round-trips plain data", () => {
    fc.assert(
      fc.property(fc.array(data, { maxLength: 4 }), fc.dictionary(key, data, { maxKeys: 3, noNullPrototype: true }), (args, kwargs) => {
        const v = [args, kwargs];
        assert.deepEqual(decodeFnValue(encodeFnValue(v, "json", LIMITS), "json", LIMITS), normalize(v));
      }),
      { numRuns: 300 },
    );
  });

  it("msgpack round-trips plain data and bytes", () => {
    fc.assert(
      fc.property(fc.array(withBytes, { maxLength: 4 }), fc.dictionary(key, withBytes, { maxKeys: 3, noNullPrototype: true }), (args, kwargs) => {
        const v = [args, kwargs];
        assert.deepEqual(decodeFnValue(encodeFnValue(v, "msgpack", LIMITS), "msgpack", LIMITS), v);
      }),
      { numRuns: 300 },
    );
  });

  it("arbitrary bytes are decoded or refused with FnCodecError, never anything else", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.constantFrom("json" as const, "msgpack" as const), (bytes, format) => {
        try {
          decodeFnValue(bytes, format, LIMITS);
        } catch (err) {
          assert.ok(err instanceof FnCodecError, String(err));
        }
      }),
      { numRuns: 2000 },
    );
  });
});
