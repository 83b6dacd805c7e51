import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { runInThisContext } from "node:vm";
import { InvalidArgumentError, PolicyDeniedError } from "@mvm/protocol";
import { FunctionDefinitionError, bundleFunction } from "./bundle.js";
import { fn } from "./function.js";

/** Loads a bundle the way the wrapper's child does (CommonJS). */
function load(code: string): (...a: unknown[]) => unknown {
  const m = { exports: {} as unknown };
  (runInThisContext(`(function (module, exports, require) {${code}\n})`) as (...a: unknown[]) => void)(m, m.exports, createRequire(import.meta.url));
  return m.exports as (...a: unknown[]) => unknown;
}

describe("fn() bundling", () => {
  it("ships a self-contained function", async () => {
    const b = bundleFunction("add", async (a: number, b: number) => a + b);
    assert.equal(await load(b.code)(2, 3), 5);
    assert.deepEqual(b.parameterNames, ["a", "b"]);
    assert.match(b.sha256, /^[0-9a-f]{64}$/);
  });

  it("accepts globals, locals, nested functions, destructuring and method shorthand", () => {
    const obj = {
      shout(s: string) {
        const up = (x: string) => x.toUpperCase();
        const { length } = s;
        return JSON.stringify({ v: up(s), length, t: typeof Math.max, b: Buffer.from("x").length });
      },
    };
    const b = bundleFunction("shout", obj.shout);
    assert.equal(load(b.code)("hi"), '{"v":"HI","length":2,"t":"function","b":1}');
  });

  it("refuses a function that closes over host state, at definition time", () => {
    const secretTable = new Map<string, number>();
    const counter = 1;
    assert.throws(
      () => fn({ id: "bad" }, (k: string) => secretTable.get(k)),
      (e) => e instanceof FunctionDefinitionError && e instanceof InvalidArgumentError && /"secretTable"/.test(e.message),
    );
    assert.throws(() => bundleFunction("bad", () => counter + 1), /"counter"/);
  });

  it("refuses native and bound functions and classes", () => {
    assert.throws(() => bundleFunction("n", Math.max), FunctionDefinitionError);
    assert.throws(() => bundleFunction("n", ((a: number) => a).bind(null)), FunctionDefinitionError);
    assert.throws(() => bundleFunction("n", class X {} as never), FunctionDefinitionError);
  });

  it("bundles declared dependencies and refuses undeclared, relative and computed requires", () => {
    const uses = () => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const z = require("zod") as typeof import("zod");
      return z.string().parse("ok");
    };
    assert.throws(() => bundleFunction("z", uses), /package "zod" is not in its dependencies/);
    const b = bundleFunction("z", uses, { dependencies: ["zod"] });
    assert.ok(b.code.length > 10_000, "zod was bundled in");
    assert.equal(load(b.code)(), "ok");
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    assert.throws(() => bundleFunction("r", () => require("./local.js") as unknown), /relative|file/);
    const name = "fs";
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    assert.throws(() => bundleFunction("c", () => require(name) as unknown), FunctionDefinitionError);
    // Node built-ins stay external: the guest's Node has them.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const builtin = bundleFunction("b", () => (require("node:os") as typeof import("node:os")).EOL);
    assert.equal(load(builtin.code)(), "\n");
  });

  it("checks the id, format, mode and warm count", () => {
    assert.throws(() => fn({ id: "Bad_Id" }, () => 1), InvalidArgumentError);
    assert.throws(() => fn({ id: "a", format: "pickle" as never }, () => 1), InvalidArgumentError);
    assert.throws(() => fn({ id: "a", errorMode: "debug" as never }, () => 1), InvalidArgumentError);
    assert.throws(() => fn({ id: "a", warm: -1 }, () => 1), InvalidArgumentError);
    assert.throws(() => fn({ id: "a", limits: { maxDepth: 100000 } }, () => 1), InvalidArgumentError);
  });

  it("warns about secret-named parameters, and refuses them in strict mode", () => {
    const warnings: string[] = [];
    fn({ id: "a", onWarning: (m) => warnings.push(m) }, (apiKey: string, n: number) => apiKey.length + n);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /"apiKey"/);
    assert.throws(() => fn({ id: "a", strictSecrets: true, onWarning: () => {} }, (password: string) => password), PolicyDeniedError);
  });

  it("describes itself for plans: id, format, limits", () => {
    const f = fn({ id: "desc", format: "msgpack", timeoutSeconds: 5, warm: 2 }, () => 1);
    const d = f.describe();
    assert.equal(d.id, "desc");
    assert.equal(d.format, "msgpack");
    assert.equal(d.limits.invokeTimeoutMs, 5000);
    assert.equal(d.limits.maxDepth, 64);
    assert.equal(d.warm, 2);
  });
});
