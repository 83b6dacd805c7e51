import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ErrorCode, TransportError } from "./errors.js";
import { StrictJsonError, parseJsonStrict, type StrictJsonFault } from "./json-strict.js";

function fault(text: string, maxDepth?: number): { fault: StrictJsonFault; message: string } {
  try {
    parseJsonStrict(text, maxDepth === undefined ? {} : { maxDepth });
  } catch (err) {
    assert.ok(err instanceof StrictJsonError, String(err));
    return { fault: err.fault, message: err.message };
  }
  assert.fail(`accepted ${text}`);
}

describe("parseJsonStrict", () => {
  it("returns what JSON.parse returns", () => {
    for (const text of [
      "1",
      '"x"',
      "null",
      " [ ] ",
      '{"a":{"a":1},"b":[{"a":1},{"a":2}]}',
      '{"k\\"":"v\\\\","k\\\\":"\\"","x:":"}{:,[","\\u00e9":1,"é2":"\\ud834\\udd1e"}',
      '{ "a" : 1 ,\n\t"b" :\r\n[ true , false , null , -0.5e3 ] }',
      '[{"":1},{"":2}]',
      '{"constructor":1,"toString":2,"hasOwnProperty":3}',
    ]) {
      assert.deepEqual(parseJsonStrict(text), JSON.parse(text), text);
    }
  });

  it("rejects a key twice in one object at any depth, and names it", () => {
    assert.deepEqual(fault('{"a":1,"a":2}'), { fault: "duplicate-key", message: 'Bad JSON: duplicate key "a"' });
    assert.deepEqual(fault('{"ok":true,"result":{"x":[{"y":{"z":1,"z":1}}]}}'), { fault: "duplicate-key", message: 'Bad JSON: duplicate key "z"' });
    assert.equal(fault('[1,{"":1,"":2}]').fault, "duplicate-key");
    assert.equal(fault('{"a" :1, "b":{}, "a"\n:2}').fault, "duplicate-key");
  });

  it("compares keys after decoding their escapes", () => {
    assert.deepEqual(fault('{"a":1,"\\u0061":2}'), { fault: "duplicate-key", message: 'Bad JSON: duplicate key "a"' });
    assert.equal(fault('{"\\"":1,"\\u0022":2}').fault, "duplicate-key");
    assert.equal(fault('{"𝄞":1,"\\ud834\\udd1e":2}').fault, "duplicate-key");
    // A backslash run before a quote: `\\` ends the key, `\"` does not.
    assert.equal(fault('{"a\\\\":1,"a\\u005c":2}').fault, "duplicate-key");
    assert.deepEqual(parseJsonStrict('{"a\\\\":1,"a\\"":2}'), { "a\\": 1, 'a"': 2 });
  });

  it("rejects a __proto__ key at any depth, however it is spelled", () => {
    assert.deepEqual(fault('{"__proto__":{"x":1}}'), { fault: "proto-key", message: 'Bad JSON: key "__proto__"' });
    assert.equal(fault('[{"a":[{"__proto__":1}]}]').fault, "proto-key");
    assert.equal(fault('{"\\u005f_proto__":null}').fault, "proto-key");
    assert.deepEqual(parseJsonStrict('{"a":"__proto__"}'), { a: "__proto__" });
  });

  it("rejects nesting deeper than maxDepth (64 by default)", () => {
    const nested = (n: number) => "[".repeat(n) + "]".repeat(n);
    assert.deepEqual(parseJsonStrict(nested(64)), JSON.parse(nested(64)));
    assert.deepEqual(fault(nested(65)), { fault: "depth", message: "Bad JSON: nested deeper than 64" });
    assert.deepEqual(parseJsonStrict('{"a":[{}]}', { maxDepth: 3 }), { a: [{}] });
    assert.equal(fault('{"a":[{"b":[]}]}', 3).fault, "depth");
    assert.equal(fault(nested(100_000)).fault, "depth");
    assert.deepEqual(parseJsonStrict("1", { maxDepth: 0 }), 1);
  });

  it("rejects text that is not JSON as a syntax fault", () => {
    for (const text of ["", "{", "{'a':1}", '{"a":1,}', "[1,]", "// x\n1", "\ufeff{}", "NaN", '{"a":1}x']) {
      assert.equal(fault(text).fault, "syntax", text);
    }
  });

  it("throws a TransportError whose message stays short whatever the input", () => {
    const long = "\u0001".repeat(100_000);
    let err: unknown;
    try {
      parseJsonStrict(`{"${long}":1,"${long}":2}`.replaceAll("\u0001", "\\u0001"));
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof TransportError && err.code === ErrorCode.Transport);
    assert.ok(err.message.length <= 512, `message of ${err.message.length} characters`);
    const syntax = fault(`{${"x".repeat(100_000)}`).message;
    assert.ok(syntax.length <= 512, `message of ${syntax.length} characters`);
  });
});
