/**
 * Property-based tests of parseJsonStrict. Documents are generated as trees whose objects may hold
 * a key twice (from a small alphabet, so repeats are common), then written out with random
 * whitespace and random \u escapes in keys and strings: the tree says what the verdict must be.
 * A second oracle, a recursive-descent reader independent of json-strict.ts, judges byte-mutated
 * and random text. Whatever the input, parseJsonStrict returns what JSON.parse returns or throws
 * StrictJsonError, never anything else.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { TransportError } from "./errors.js";
import { StrictJsonError, parseJsonStrict, type StrictJsonFault } from "./json-strict.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 300);

type Doc = { kind: "value"; value: null | boolean | number | string } | { kind: "array"; items: Doc[] } | { kind: "object"; members: [string, Doc][] };

/** Characters that matter to a scanner of JSON text, plus a few ordinary and non-BMP ones. */
const tricky = fc.constantFrom('"', "\\", ":", ",", "{", "}", "[", "]", " ", "\n", "\u0000", "a", "b", "é", "𝄞", "\ud800", "u", "_");
const trickyString = fc.string({ unit: tricky, maxLength: 6 });
const key = fc.oneof(fc.constantFrom("a", "b", "", "a:", 'a"', "a\\", "__proto__", "𝄞"), trickyString);
const value: fc.Arbitrary<Doc> = fc
  .oneof(fc.constant(null), fc.boolean(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer(), trickyString)
  .map((v) => ({ kind: "value", value: v }));

const { doc } = fc.letrec<{ doc: Doc; array: Doc; object: Doc }>((tie) => ({
  doc: fc.oneof({ depthSize: "small", withCrossShrink: true }, value, tie("array"), tie("object")),
  array: fc.array(tie("doc"), { maxLength: 4 }).map((items) => ({ kind: "array" as const, items })),
  object: fc.array(fc.tuple(key, tie("doc")), { maxLength: 5 }).map((members) => ({ kind: "object" as const, members })),
}));

/** The faults a document has, from its tree: what parseJsonStrict must report one of. */
function faultsOf(d: Doc, maxDepth: number, depth = 0, out = new Set<StrictJsonFault>()): Set<StrictJsonFault> {
  if (d.kind === "value") return out;
  if (depth + 1 > maxDepth) out.add("depth");
  if (d.kind === "array") for (const item of d.items) faultsOf(item, maxDepth, depth + 1, out);
  else {
    const seen = new Set<string>();
    for (const [k, v] of d.members) {
      if (k === "__proto__") out.add("proto-key");
      if (seen.has(k)) out.add("duplicate-key");
      seen.add(k);
      faultsOf(v, maxDepth, depth + 1, out);
    }
  }
  return out;
}

/** A small deterministic generator, so one integer drives every choice of spelling. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Writes a string as a JSON literal, escaping each UTF-16 unit as \uXXXX with probability 1/3. */
function spell(s: string, rnd: () => number): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += rnd() < 1 / 3 ? `\\u${c.toString(16).padStart(4, "0")}` : JSON.stringify(String.fromCharCode(c)).slice(1, -1);
  }
  return `${out}"`;
}

/** Writes a document as JSON text with random whitespace between tokens and random escapes. */
function write(d: Doc, rnd: () => number): string {
  const ws = () => ["", "", "", " ", "\n", "\t", "\r\n  "][Math.floor(rnd() * 7)]!;
  switch (d.kind) {
    case "value":
      return typeof d.value === "string" ? spell(d.value, rnd) : JSON.stringify(d.value);
    case "array":
      return `[${ws()}${d.items.map((item) => write(item, rnd)).join(`${ws()},${ws()}`)}${ws()}]`;
    case "object":
      return `{${ws()}${d.members.map(([k, v]) => `${spell(k, rnd)}${ws()}:${ws()}${write(v, rnd)}`).join(`${ws()},${ws()}`)}${ws()}}`;
  }
}

/** A reader of JSON text JSON.parse accepted, independent of json-strict.ts: the faults it finds. */
function referenceFaults(text: string, maxDepth: number): Set<StrictJsonFault> {
  const token = /[\s]*(?:("(?:[^"\\]|\\.)*")|([{}[\],:])|(-?[0-9][0-9.eE+-]*|true|false|null))/y;
  const faults = new Set<StrictJsonFault>();
  let pos = 0;
  const next = (): string => {
    token.lastIndex = pos;
    const m = token.exec(text);
    assert.ok(m, `reference reader stuck at ${pos} in ${JSON.stringify(text)}`);
    pos = token.lastIndex;
    return m[1] ?? m[2] ?? m[3]!;
  };
  const readValue = (t: string, depth: number): void => {
    if (t !== "{" && t !== "[") return;
    if (depth + 1 > maxDepth) faults.add("depth");
    const close = t === "{" ? "}" : "]";
    const seen = new Set<string>();
    let n = next();
    while (n !== close) {
      if (n === ",") n = next();
      if (t === "{") {
        const k = JSON.parse(n) as string;
        if (k === "__proto__") faults.add("proto-key");
        if (seen.has(k)) faults.add("duplicate-key");
        seen.add(k);
        assert.equal(next(), ":");
        n = next();
      }
      readValue(n, depth + 1);
      n = next();
    }
  };
  readValue(next(), 0);
  return faults;
}

/** Runs parseJsonStrict and checks the outcome against JSON.parse and the expected faults. */
function check(text: string, maxDepth: number, expected: Set<StrictJsonFault> | undefined): void {
  let reference: unknown;
  let valid = true;
  try {
    reference = JSON.parse(text);
  } catch {
    valid = false;
  }
  const faults = valid ? (expected ?? referenceFaults(text, maxDepth)) : new Set<StrictJsonFault>(["syntax"]);
  let got: unknown;
  try {
    got = parseJsonStrict(text, { maxDepth });
  } catch (err) {
    assert.ok(err instanceof StrictJsonError, `threw ${String(err)}`);
    assert.ok(err instanceof TransportError && err.code === "TRANSPORT");
    assert.ok(faults.has(err.fault), `fault ${err.fault}, expected one of ${[...faults].join(", ") || "none"} in ${JSON.stringify(text)}`);
    assert.ok(err.message.length <= 512, `message of ${err.message.length} characters`);
    return;
  }
  assert.equal(faults.size, 0, `accepted ${JSON.stringify(text)} with ${[...faults].join(", ")}`);
  assert.deepEqual(got, reference);
}

describe("parseJsonStrict properties", () => {
  it("returns what JSON.parse returns for documents without repeated keys", () => {
    const unique = doc.filter((d) => faultsOf(d, 64).size === 0);
    fc.assert(
      fc.property(unique, fc.integer(), (d, seed) => {
        const text = write(d, rng(seed));
        assert.deepEqual(parseJsonStrict(text), JSON.parse(text));
      }),
      { numRuns: RUNS },
    );
  });

  it("rejects a key twice in one object, at any depth and however it is spelled, and accepts only documents without faults", () => {
    fc.assert(
      fc.property(doc, fc.integer(), fc.integer({ min: 1, max: 6 }), (d, seed, maxDepth) => {
        check(write(d, rng(seed)), maxDepth, faultsOf(d, maxDepth));
      }),
      { numRuns: RUNS * 3 },
    );
  });

  it("rejects a repeated key injected into any object of a valid document", () => {
    const withObject = doc.filter((d) => faultsOf(d, 64).size === 0 && objectsOf(d).some((o) => o.members.length > 0));
    fc.assert(
      fc.property(withObject, fc.nat(), fc.nat(), fc.nat(), value, fc.integer(), (original, pickObject, pickKey, at, dupValue, seed) => {
        const d = structuredClone(original);
        const objects = objectsOf(d).filter((o) => o.members.length > 0);
        const target = objects[pickObject % objects.length]!;
        const [k] = target.members[pickKey % target.members.length]!;
        target.members.splice(at % (target.members.length + 1), 0, [k, dupValue]);
        let err: unknown;
        try {
          parseJsonStrict(write(d, rng(seed)));
        } catch (e) {
          err = e;
        }
        assert.ok(err instanceof StrictJsonError && err.fault === "duplicate-key", `accepted or wrong error: ${String(err)}`);
        if (k.length <= 64) assert.equal(err.message, `Bad JSON: duplicate key ${JSON.stringify(k)}`);
      }),
      { numRuns: RUNS },
    );
  });

  it("agrees with the reference reader on byte-mutated documents", () => {
    const mutation = fc.record({ pos: fc.nat(), char: fc.constantFrom('"', "\\", ":", ",", "{", "}", "[", "]", " ", "a", "0"), op: fc.constantFrom("set", "insert", "delete") });
    fc.assert(
      fc.property(doc, fc.integer(), fc.array(mutation, { minLength: 1, maxLength: 3 }), (d, seed, edits) => {
        let text = write(d, rng(seed));
        for (const e of edits) {
          const pos = e.pos % (text.length + 1);
          if (e.op === "set") text = text.slice(0, pos) + e.char + text.slice(pos + 1);
          if (e.op === "insert") text = text.slice(0, pos) + e.char + text.slice(pos);
          if (e.op === "delete") text = text.slice(0, pos) + text.slice(pos + 1);
        }
        check(text, 4, undefined);
      }),
      { numRuns: RUNS * 3 },
    );
  });

  it("throws only StrictJsonError on random text", () => {
    const unit = fc.constantFrom('"', "\\", ":", ",", "{", "}", "[", "]", " ", "a", "1", "u", "0", "n", "t", "r", "e");
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit, maxLength: 40 }), fc.string({ unit: "binary", maxLength: 64 })), (text) => check(text, 4, undefined)),
      { numRuns: RUNS * 3 },
    );
  });

  it("the generator makes repeated keys, __proto__ keys and deep documents often enough", () => {
    // Guards the properties above: they must see each fault, not only clean documents.
    const sample = fc.sample(doc, { numRuns: 2000, seed: 1 });
    for (const fault of ["duplicate-key", "proto-key", "depth"] as const) {
      assert.ok(sample.filter((d) => faultsOf(d, 2).has(fault)).length >= 20, fault);
    }
  });
});

function objectsOf(d: Doc): Extract<Doc, { kind: "object" }>[] {
  if (d.kind === "value") return [];
  if (d.kind === "array") return d.items.flatMap(objectsOf);
  return [d, ...d.members.flatMap(([, v]) => objectsOf(v))];
}
