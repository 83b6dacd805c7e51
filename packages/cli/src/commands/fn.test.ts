/**
 * `mvmctl fn run|ls` and `mvmctl logs --fn`: argument parsing here; end to end (built mvmctl, real
 * engine, namespace backend) in fn.e2e.test.ts.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { UsageError } from "../usage-error.js";
import { idFor, parseArgsJson, parseTarget } from "./fn.js";

describe("mvmctl fn arguments", () => {
  it("splits FILE#EXPORT at the last #", () => {
    assert.deepEqual(parseTarget("./a#b.ts#add"), { file: "./a#b.ts", exportName: "add" });
    assert.deepEqual(parseTarget("fns.ts"), { file: "fns.ts", exportName: "default" });
    assert.throws(() => parseTarget("#add"), UsageError);
    assert.throws(() => parseTarget("f.ts#1bad"), UsageError);
  });

  it("reads ARGS_JSON as one strict JSON array", () => {
    assert.deepEqual(parseArgsJson(undefined), []);
    assert.deepEqual(parseArgsJson(['[2, {"a": [3]}]']), [2, { a: [3] }]);
    for (const bad of [["{}"], ["1"], ["[1]", "[2]"], ['[{"a":1,"a":2}]'], ["nope"]]) assert.throws(() => parseArgsJson(bad), UsageError, bad.join(" "));
  });

  it("names a plain exported function by its name in kebab case", () => {
    assert.equal(idFor("addNumbers"), "add-numbers");
    assert.equal(idFor("_private"), "private");
    assert.equal(idFor("$x"), "x");
    assert.equal(idFor("9lives"), "fn-9lives");
    assert.match(idFor("a".repeat(200)), /^[a-z][a-z0-9-]{0,62}$/);
  });
});
