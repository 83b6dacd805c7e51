import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { encode as msgpackEncode } from "@msgpack/msgpack";
import { InvalidArgumentError } from "./errors.js";
import { FnCodecError, asCallPayload, decodeFnValue, encodeFnValue, scanMsgpack, type FnCodecFault } from "./fn-codec.js";
import type { FnFormat } from "./fn.js";

const LIMITS = { maxBytes: 16 * 1024 * 1024, maxDepth: 64 };
const FORMATS: FnFormat[] = ["json", "msgpack"];

function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

function fault(fn: () => unknown): FnCodecFault {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FnCodecError, String(err));
    assert.ok(err instanceof InvalidArgumentError);
    return err.fault;
  }
  assert.fail("accepted");
}

describe("function payload codec", () => {
  for (const format of FORMATS) {
    describe(format, () => {
      it("round-trips [args, kwargs]", () => {
        const v = [[1, "two", { three: [3.5, null, true] }], { k: "v" }];
        assert.deepEqual(decodeFnValue(encodeFnValue(v, format, LIMITS), format, LIMITS), v);
      });

      it("accepts depth 64 and refuses depth 65 both ways", () => {
        assert.deepEqual(decodeFnValue(encodeFnValue(nested(64), format, LIMITS), format, LIMITS), nested(64));
        assert.equal(fault(() => encodeFnValue(nested(65), format, LIMITS)), "depth");
        const raw = format === "json" ? Buffer.from(JSON.stringify(nested(65))) : msgpackEncode(nested(65));
        assert.equal(fault(() => decodeFnValue(raw, format, LIMITS)), "depth");
      });

      it("refuses NaN and ±Infinity when encoding", () => {
        for (const n of [NaN, Infinity, -Infinity]) assert.equal(fault(() => encodeFnValue([[n], {}], format, LIMITS)), "non-finite");
      });

      it("refuses an encoding past the byte cap", () => {
        assert.equal(fault(() => encodeFnValue("x".repeat(2000), format, { maxBytes: 1000, maxDepth: 64 })), "too-large");
      });

      it("refuses bytes past the cap before decoding any of them", () => {
        // Not even valid: a decoder that looked would report syntax, not size.
        assert.equal(fault(() => decodeFnValue(new Uint8Array(1001).fill(0xc1), format, { maxBytes: 1000, maxDepth: 64 })), "too-large");
      });

      it("refuses values that are not plain data", () => {
        for (const v of [new Date(0), new Map(), 1n, () => 1, Symbol("s"), new (class X {})()]) {
          assert.equal(fault(() => encodeFnValue([[v], {}], format, LIMITS)), "type", String(typeof v));
        }
        const cyclic: unknown[] = [];
        cyclic.push(cyclic);
        assert.equal(fault(() => encodeFnValue(cyclic, format, LIMITS)), "depth");
      });

      it("refuses a __proto__ key", () => {
        const v = JSON.parse('{"__proto__": {"polluted": true}}') as unknown;
        assert.equal(fault(() => encodeFnValue(v, format, LIMITS)), "proto-key");
      });
    });
  }

  it("json: refuses duplicate keys, 1e400 and non-UTF-8 when decoding", () => {
    const dec = (s: string | Uint8Array) => decodeFnValue(typeof s === "string" ? Buffer.from(s) : s, "json", LIMITS);
    assert.equal(fault(() => dec('[[], {"a": 1, "a": 2}]')), "duplicate-key");
    assert.equal(fault(() => dec('[[{"x": {"b": 1, "\\u0062": 2}}], {}]')), "duplicate-key");
    assert.equal(fault(() => dec("[[1e400], {}]")), "non-finite");
    assert.equal(fault(() => dec("[[-1e400], {}]")), "non-finite");
    assert.equal(fault(() => dec("[[NaN], {}]")), "syntax");
    assert.equal(fault(() => dec(new Uint8Array([0x22, 0xff, 0x22]))), "syntax");
  });

  it("json: refuses integers past 2^53 - 1 and a byte order mark; floats and digits in strings pass", () => {
    const dec = (s: string | Uint8Array) => decodeFnValue(typeof s === "string" ? Buffer.from(s) : s, "json", LIMITS);
    assert.equal(fault(() => dec("[[9007199254740992], {}]")), "type");
    assert.equal(fault(() => dec('[[], {"n": -100000000000000000000}]')), "type");
    assert.equal(fault(() => dec(new Uint8Array([0xef, 0xbb, 0xbf, 0x5b, 0x5d]))), "syntax");
    assert.equal(fault(() => encodeFnValue([[2 ** 53], {}], "json", LIMITS)), "type");
    assert.deepEqual(decodeFnValue(encodeFnValue([[2 ** 53, 1e20], {}], "msgpack", LIMITS), "msgpack", LIMITS), [[2 ** 53, 1e20], {}]);
    assert.deepEqual(dec('[[9007199254740991, -9007199254740991, 1e20, 100000000000000000000.5, 12345678901234567890e-3], {}]'), [[9007199254740991, -9007199254740991, 1e20, 100000000000000000000.5, 12345678901234567.89], {}]);
    assert.deepEqual(dec('[["100000000000000000000", "a\\\\"], {"100000000000000000000": 1}]'), [["100000000000000000000", "a\\"], { "100000000000000000000": 1 }]);
  });

  it("json: refuses bytes", () => {
    assert.equal(fault(() => encodeFnValue(new Uint8Array(2), "json", LIMITS)), "type");
  });

  it("msgpack: carries bytes", () => {
    const v = [[new Uint8Array([1, 2, 255])], {}];
    assert.deepEqual(decodeFnValue(encodeFnValue(v, "msgpack", LIMITS), "msgpack", LIMITS), v);
  });

  it("msgpack: the scanner refuses duplicate keys, non-string keys, extension types, NaN and trailing bytes", () => {
    // fixmap of 2: "a" → 1, "a" → 2
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0x82, 0xa1, 0x61, 0x01, 0xa1, 0x61, 0x02]), 64)), "duplicate-key");
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0x81, 0x01, 0x01]), 64)), "type");
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0xd4, 0xff, 0x00]), 64)), "type"); // fixext1 (timestamp type -1)
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0xc1]), 64)), "type"); // reserved
    const nan = Buffer.alloc(9);
    nan[0] = 0xcb;
    nan.writeDoubleBE(NaN, 1);
    assert.equal(fault(() => scanMsgpack(nan, 64)), "non-finite");
    const inf = Buffer.alloc(5);
    inf[0] = 0xca;
    inf.writeFloatBE(-Infinity, 1);
    assert.equal(fault(() => scanMsgpack(inf, 64)), "non-finite");
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0x01, 0x02]), 64)), "syntax");
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0x92, 0x01]), 64)), "syntax"); // truncated
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0xdd, 0xff, 0xff, 0xff, 0xff]), 64)), "syntax"); // claims 4G items
    assert.equal(fault(() => scanMsgpack(Uint8Array.from([0x81, 0xa9, ...Buffer.from("__proto__"), 0x01]), 64)), "proto-key");
    const big = Buffer.alloc(9);
    big[0] = 0xcf;
    big.writeBigUInt64BE(2n ** 60n, 1);
    assert.equal(fault(() => scanMsgpack(big, 64)), "type");
  });

  it("msgpack: the scanner takes depth without recursion", () => {
    const deep = new Uint8Array(100_000).fill(0x91);
    assert.equal(fault(() => scanMsgpack(deep, 64)), "depth");
  });

  it("checks the [args, kwargs] shape", () => {
    assert.deepEqual(asCallPayload([[1], {}]), { args: [1], kwargs: {} });
    for (const bad of [[], [[1]], [{}, {}], [[1], []], [[1], null], "x", [[1], {}, 3]]) {
      assert.equal(fault(() => asCallPayload(bad)), "type", JSON.stringify(bad));
    }
  });
});
