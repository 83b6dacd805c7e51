import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { InvalidArgumentError, PolicyDeniedError, TransportError } from "./errors.js";
import {
  DEFAULT_FN_LIMITS,
  FN_ERROR_KINDS,
  FN_LIMIT_ENV,
  FnRequestHeader,
  FnResultHeader,
  checkFunctionId,
  checkSecretArgNames,
  decodeFnResultFile,
  encodeFnResultFile,
  fnLimitsFromEnv,
  isFunctionId,
  minFnLimits,
  parseFnRequestHeader,
} from "./fn.js";
import { looksSecretName } from "./secret-names.js";

const key = (): string => randomBytes(32).toString("hex");

describe("function ids", () => {
  it("match ^[a-z][a-z0-9-]{0,62}$", () => {
    for (const ok of ["a", "add", "my-fn-2", `a${"b".repeat(62)}`]) assert.ok(isFunctionId(ok), ok);
    for (const bad of ["", "A", "1a", "-a", "a_b", "a.b", `a${"b".repeat(63)}`, "add\n", " add", "ädd", 7, null]) {
      assert.ok(!isFunctionId(bad), String(bad));
      assert.throws(() => checkFunctionId(bad), InvalidArgumentError);
    }
  });

  it("are checked by the request and result header schemas", () => {
    const header = { v: 1, id: "Bad_Id", format: "json", mode: "production", key: key(), resultPath: "/tmp/r", codeBytes: 10, codeSha256: "0".repeat(64), exportName: "default", limits: DEFAULT_FN_LIMITS };
    assert.equal(FnRequestHeader.safeParse(header).success, false);
    assert.equal(FnRequestHeader.safeParse({ ...header, id: "ok" }).success, true);
    assert.equal(FnResultHeader.safeParse({ v: 1, status: "ok", id: "Bad", format: "json", resultBytes: 0 }).success, false);
  });
});

describe("function limits", () => {
  it("default to the documented values and read MVM_FN_* knobs", () => {
    assert.deepEqual(fnLimitsFromEnv({}), DEFAULT_FN_LIMITS);
    const l = fnLimitsFromEnv({ MVM_FN_MAX_DEPTH: "8", MVM_FN_INVOKE_TIMEOUT_SEC: "2", MVM_FN_MAX_INPUT_BYTES: "1024" });
    assert.equal(l.maxDepth, 8);
    assert.equal(l.invokeTimeoutMs, 2000);
    assert.equal(l.maxInputBytes, 1024);
  });

  it("refuse knobs that are not positive integers or are past their ceiling", () => {
    for (const v of ["0", "-1", "1.5", "abc", "1e3", "9999999999999"]) {
      assert.throws(() => fnLimitsFromEnv({ MVM_FN_MAX_OUTPUT_BYTES: v }), InvalidArgumentError, v);
    }
    assert.throws(() => fnLimitsFromEnv({ MVM_FN_MAX_DEPTH: "100000" }), InvalidArgumentError);
  });

  it("combine to the stricter of each", () => {
    const a = { ...DEFAULT_FN_LIMITS, maxDepth: 10 };
    const b = { ...DEFAULT_FN_LIMITS, maxInputBytes: 5 };
    assert.deepEqual(minFnLimits(a, b), { ...DEFAULT_FN_LIMITS, maxDepth: 10, maxInputBytes: 5 });
  });
});

describe("secret-looking argument names", () => {
  it("are recognized as whole words in snake, camel and kebab case", () => {
    for (const n of ["token", "apiKey", "api_key", "API_KEY", "password", "db-password", "authToken", "privateKey", "bearer", "credentials", "secret"]) {
      assert.ok(looksSecretName(n), n);
    }
    for (const n of ["tokenizer", "a", "b", "keyboard", "secretary", "passwordless_hint_x", "count"]) {
      assert.ok(!looksSecretName(n), n);
    }
  });

  it("warn, and are refused in strict mode", () => {
    const warnings: string[] = [];
    checkSecretArgNames("f", ["a", "apiKey"], false, (m) => warnings.push(m));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /"apiKey"/);
    assert.throws(() => checkSecretArgNames("f", ["a", "apiKey"], true, () => assert.fail("warned in strict mode")), PolicyDeniedError);
  });
});

describe("function result file", () => {
  const ok = (k: string, bytes = Buffer.from("5")) =>
    encodeFnResultFile(k, { v: 1, status: "ok", id: "add", format: "json", resultBytes: bytes.length }, bytes);

  it("round-trips with its key", () => {
    const k = key();
    const { header, result } = decodeFnResultFile(k, ok(k), "add");
    assert.equal(header.status, "ok");
    assert.equal(Buffer.from(result).toString(), "5");
  });

  it("is refused when sealed with another key (a forgery)", () => {
    assert.throws(() => decodeFnResultFile(key(), ok(key()), "add"), (e) => e instanceof TransportError && /seal/.test(e.message));
  });

  it("is refused when any byte changes", () => {
    const k = key();
    const file = ok(k, Buffer.from("12345"));
    for (let i = 0; i < file.length; i++) {
      const copy = Buffer.from(file);
      copy[i] = copy[i]! ^ 0x01;
      assert.throws(() => decodeFnResultFile(k, copy, "add"), TransportError, `byte ${i}`);
    }
  });

  it("is refused when it names another function, or its length disagrees", () => {
    const k = key();
    assert.throws(() => decodeFnResultFile(k, ok(k), "sub"), TransportError);
    const lying = encodeFnResultFile(k, { v: 1, status: "ok", id: "add", format: "json", resultBytes: 3 }, Buffer.from("5"));
    assert.throws(() => decodeFnResultFile(k, lying, "add"), TransportError);
  });

  it("refuses an error header with fields past the schema, even sealed", () => {
    const k = key();
    const extra = { v: 1, status: "error", id: "add", error: { kind: "raised", errorId: `fe_${"0".repeat(24)}`, message: "m", extra: 1 } };
    const file = encodeFnResultFile(k, extra as never);
    assert.throws(() => decodeFnResultFile(k, file, "add"), TransportError);
    const long = { v: 1, status: "error", id: "add", error: { kind: "raised", errorId: `fe_${"0".repeat(24)}`, message: "m".repeat(201) } };
    assert.throws(() => decodeFnResultFile(k, encodeFnResultFile(k, long as never), "add"), TransportError);
    const kind = { v: 1, status: "error", id: "add", error: { kind: "made-up", errorId: `fe_${"0".repeat(24)}`, message: "m" } };
    assert.throws(() => decodeFnResultFile(k, encodeFnResultFile(k, kind as never), "add"), TransportError);
  });

  it("parses request headers strictly", () => {
    const h = { v: 1, id: "add", format: "json", mode: "production", key: key(), resultPath: "/tmp/r", codeBytes: 10, codeSha256: "0".repeat(64), exportName: "default", limits: DEFAULT_FN_LIMITS };
    assert.deepEqual(parseFnRequestHeader(JSON.stringify(h)), h);
    for (const bad of [{ ...h, extra: 1 }, { ...h, format: "pickle" }, { ...h, resultPath: "/tmp/../etc/x" }, { ...h, key: "00" }, { ...h, codeBytes: 0 }, { ...h, codeBytes: 65 * 1024 * 1024 }]) {
      assert.throws(() => parseFnRequestHeader(JSON.stringify(bad)), InvalidArgumentError);
    }
    assert.throws(() => parseFnRequestHeader(JSON.stringify(h).replace('"v":1', '"v":1,"v":1')), TransportError);
  });
});

describe("docs/FUNCTIONS.md", () => {
  const lines = readFileSync(new URL("../../../docs/FUNCTIONS.md", import.meta.url), "utf8").split("\n");
  const table = (marker: string): string[][] => {
    const at = lines.findIndex((l) => l.trim() === `<!-- check: ${marker} -->`);
    assert.ok(at >= 0, `no "<!-- check: ${marker} -->"`);
    const rows: string[][] = [];
    for (let i = at + 1; i < lines.length && lines[i]!.startsWith("|"); i++) {
      if (/^\|\s*-/.test(lines[i]!)) continue;
      rows.push(lines[i]!.split("|").slice(1, -1).map((c) => c.trim()));
    }
    return rows.slice(1);
  };

  it("lists every limit knob with its default", () => {
    const rows = table("fn-limits");
    const expected = Object.entries(FN_LIMIT_ENV).map(([k, [name, factor]]) => [name, String(DEFAULT_FN_LIMITS[k as keyof typeof DEFAULT_FN_LIMITS] / factor)]);
    assert.deepEqual(rows.map((r) => [r[0], r[1]]).sort(), expected.sort());
  });

  it("lists every request header field", () => {
    assert.deepEqual(table("fn-request-header").map((r) => r[0]).sort(), Object.keys(FnRequestHeader.shape).sort());
  });

  it("lists every result header field", () => {
    const fields = new Set(FnResultHeader._zod.def.options.flatMap((o) => Object.keys(o._zod.def.shape)));
    assert.deepEqual(table("fn-result-header").map((r) => r[0]).sort(), [...fields].sort());
  });

  it("lists every error kind", () => {
    assert.deepEqual(table("fn-error-kinds").map((r) => r[0]).sort(), [...FN_ERROR_KINDS].sort());
  });
});
