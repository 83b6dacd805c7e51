/**
 * The cross-language corpus (../testdata/validator-corpus.json): the inputs the Python suite
 * (python/tests/test_validator_corpus.py) also runs, each accepted or refused, with the same fault,
 * by the TypeScript validators. An entry whose `accept` is `{ typescript, python }` records a known
 * difference between the two, with why.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { z } from "zod";
import { FnCodecError, decodeFnValue } from "./fn-codec.js";
import { isFunctionId } from "./fn.js";
import { parseJsonStrict } from "./json-strict.js";
import { looksSecretName } from "./secret-names.js";
import { SecretRefSchema } from "./secret-ref.js";

const Accept = z.union([z.boolean(), z.strictObject({ typescript: z.boolean(), python: z.boolean() })]);
const Value = z.strictObject({ value: z.string(), accept: z.boolean() });
const Corpus = z.strictObject({
  $comment: z.string(),
  fnPayload: z.array(
    z.strictObject({
      name: z.string(),
      format: z.enum(["json", "msgpack"]),
      text: z.string().optional(),
      hex: z.string().regex(/^([0-9a-f]{2})*$/).optional(),
      maxDepth: z.number().int().min(1),
      maxBytes: z.number().int().min(1),
      accept: Accept,
      fault: z.string().optional(),
      why: z.string().optional(),
    }),
  ),
  functionId: z.array(Value),
  secretStoreName: z.array(Value),
  envName: z.array(Value),
  secretFilePath: z.array(Value),
  looksSecretName: z.array(z.strictObject({ value: z.string(), secret: z.boolean() })),
});

const corpus = Corpus.parse(parseJsonStrict(readFileSync(new URL("../testdata/validator-corpus.json", import.meta.url), "utf8")));
const expected = (accept: z.infer<typeof Accept>): boolean => (typeof accept === "boolean" ? accept : accept.typescript);

describe("cross-language validator corpus (TypeScript side)", () => {
  it("function payloads: accepted or refused with the fault the corpus names", () => {
    for (const e of corpus.fnPayload) {
      const bytes = e.text !== undefined ? new TextEncoder().encode(e.text) : Buffer.from(e.hex ?? "", "hex");
      const label = `${e.format}: ${e.name}`;
      try {
        decodeFnValue(bytes, e.format, { maxBytes: e.maxBytes, maxDepth: e.maxDepth });
        assert.ok(expected(e.accept), `${label}: accepted`);
      } catch (err) {
        assert.ok(err instanceof FnCodecError, `${label}: ${String(err)}`);
        assert.ok(!expected(e.accept), `${label}: refused (${err.fault}): ${err.message}`);
        if (e.fault !== undefined) assert.equal(err.fault, e.fault, label);
      }
    }
  });

  it("function ids", () => {
    for (const e of corpus.functionId) assert.equal(isFunctionId(e.value), e.accept, JSON.stringify(e.value));
  });

  it("secret names by source", () => {
    const check = (source: "store" | "env" | "file", entries: readonly z.infer<typeof Value>[]) => {
      for (const e of entries) {
        const ok = SecretRefSchema.safeParse({ kind: "secret-ref", source, name: e.value, posture: "mediated" }).success;
        assert.equal(ok, e.accept, `${source}: ${JSON.stringify(e.value.slice(0, 32))}`);
      }
    };
    check("store", corpus.secretStoreName);
    check("env", corpus.envName);
    check("file", corpus.secretFilePath);
  });

  it("names that look like secrets", () => {
    for (const e of corpus.looksSecretName) assert.equal(looksSecretName(e.value), e.secret, e.value);
  });
});
