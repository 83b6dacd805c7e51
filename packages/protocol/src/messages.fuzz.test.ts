/**
 * Property-based tests of parseControl with every control-message schema: valid messages are
 * accepted; random and mutated input is either accepted (and then still valid) or rejected with
 * the bounded "Bad control message" error; an unknown field anywhere in a strict object is
 * always rejected, and so is a key written twice in any object (the JSON is strict).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import type * as z from "zod/mini";
import { ERROR_CODES } from "./errors.js";
import { AgentHello, AgentToHost, HostHello, HostToAgent, MAX_REQUEST_ID, Results, SIGNALS, encodeControl, parseControl, type Op } from "./messages.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 300);

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const streamId = fc.integer({ min: 1, max: 0xffff_ffff });
const text = (maxLength: number) => fc.string({ unit: "binary", maxLength }).filter((s) => !s.includes("\0"));
const segment = fc
  .string({ unit: "binary", minLength: 1, maxLength: 10 })
  .filter((s) => !s.includes("/") && !s.includes("\0") && s !== "." && s !== "..");
const path = fc.array(segment, { maxLength: 4 }).map((segs) => "/" + segs.join("/"));
const envName = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,12}$/);
const env = fc.dictionary(envName, text(16), { maxKeys: 4 });
const argv = fc.tuple(text(12).filter((s) => s !== ""), fc.array(text(12), { maxLength: 4 })).map(([a0, rest]) => [a0, ...rest]);
const errorBody = fc.record({ code: fc.constantFrom(...ERROR_CODES), message: text(64) });
const finite = fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e15, max: 1e15 });
const size = fc.maxSafeNat();

const hostRequestId = fc.integer({ min: 0, max: MAX_REQUEST_ID });
const req = <T extends object>(op: Op, fields: fc.Arbitrary<T>) =>
  fc.tuple(hostRequestId, fields).map(([id, f]) => ({ t: "req", id, op, ...f }));

const fileInfo = fc.record({
  name: text(16),
  type: fc.constantFrom("file", "dir", "symlink", "other"),
  size,
  mode: fc.integer({ min: 0, max: 0o7777 }),
  mtimeMs: finite,
});
const processInfo = fc.record({
  proc: u32,
  pid: fc.integer({ min: 1, max: 4_194_304 }),
  argv: fc.array(text(12), { maxLength: 4 }),
  startedAtMs: finite,
});
const empty = fc.constant({});

const results: { [O in Op]: fc.Arbitrary<object> } = {
  exec: fc.record({ pid: fc.integer({ min: 1, max: 4_194_304 }) }),
  signal: empty,
  listProcesses: fc.record({ processes: fc.array(processInfo, { maxLength: 3 }) }),
  readFile: fc.record({ size }),
  writeFile: fc.record({ bytes: size }),
  listDir: fc.record({ entries: fc.array(fileInfo, { maxLength: 3 }), truncated: fc.boolean() }),
  stat: fileInfo,
  mkdir: empty,
  remove: empty,
  rename: empty,
  ping: empty,
  shutdown: empty,
  quiesce: empty,
  resize: empty,
};

const abort = fc.record({ t: fc.constant("abort"), stream: streamId, error: errorBody });

const hostToAgent = fc.oneof(
  req(
    "exec",
    fc
      .record({
        argv,
        env,
        cwd: path,
        // A valid exec names three distinct streams.
        streams: fc.uniqueArray(streamId, { minLength: 3, maxLength: 3 }),
        withStdin: fc.boolean(),
        timeoutMs: fc.integer({ min: 0, max: 7 * 24 * 3600 * 1000 }),
        killGraceMs: fc.integer({ min: 0, max: 60_000 }),
        maxOutputBytes: size,
        pty: fc.option(fc.record({ cols: fc.integer({ min: 1, max: 4096 }), rows: fc.integer({ min: 1, max: 4096 }) }), { nil: undefined }),
      })
      .map(({ streams: [a, b, c], withStdin, pty, ...rest }) => ({
        ...rest,
        stdin: withStdin || pty !== undefined ? a! : null,
        stdout: b!,
        stderr: c!,
        ...(pty !== undefined ? { pty } : {}),
      })),
  ),
  req("signal", fc.record({ proc: u32, signal: fc.constantFrom(...SIGNALS) })),
  req("listProcesses", empty),
  req("readFile", fc.record({ path, stream: streamId })),
  req("writeFile", fc.record({ path, stream: streamId, mode: fc.integer({ min: 0, max: 0o777 }), createParents: fc.boolean() })),
  req("listDir", fc.record({ path })),
  req("stat", fc.record({ path })),
  req("mkdir", fc.record({ path, recursive: fc.boolean() })),
  req("remove", fc.record({ path, recursive: fc.boolean() })),
  req("rename", fc.record({ from: path, to: path })),
  req("ping", empty),
  req("shutdown", empty),
  req("quiesce", empty),
  req("resize", fc.record({ proc: u32, cols: fc.integer({ min: 1, max: 4096 }), rows: fc.integer({ min: 1, max: 4096 }) })),
  abort,
);

const agentToHost = fc.oneof(
  fc.tuple(u32, fc.constantFrom(...(Object.keys(results) as Op[]))).chain(([id, op]) =>
    results[op].map((result) => ({ t: "res", id, ok: true, result })),
  ),
  fc.record({ t: fc.constant("res"), id: u32, ok: fc.constant(false), error: errorBody }),
  fc.record({
    t: fc.constant("exit"),
    proc: u32,
    exitCode: fc.option(fc.integer({ min: 0, max: 255 }), { nil: null }),
    signal: fc.option(fc.constantFrom(...SIGNALS), { nil: null }),
    timedOut: fc.boolean(),
    durationMs: fc.double({ noNaN: true, noDefaultInfinity: true, min: 0, max: 1e12 }),
    stdoutBytes: size,
    stderrBytes: size,
    stdoutTruncated: fc.boolean(),
    stderrTruncated: fc.boolean(),
  }),
  abort,
);

const agentHello = fc.record({
  t: fc.constant("hello"),
  versions: fc.array(u32, { minLength: 1, maxLength: 8 }),
  agent: fc.string({ unit: "binary", maxLength: 64 }),
});
const hostHello = fc.constant({ t: "hello", version: 1 });

interface Case {
  name: string;
  schema: z.ZodMiniType;
  valid: fc.Arbitrary<object>;
}
const cases: Case[] = [
  { name: "HostToAgent", schema: HostToAgent, valid: hostToAgent },
  { name: "AgentToHost", schema: AgentToHost, valid: agentToHost },
  { name: "AgentHello", schema: AgentHello, valid: agentHello },
  { name: "HostHello", schema: HostHello, valid: hostHello },
  ...(Object.keys(results) as Op[]).map((op) => ({ name: `Results.${op}`, schema: Results[op], valid: results[op] })),
];

const encode = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

/** parseControl either accepts (and the value still validates after a JSON round trip) or throws the bounded error. */
function acceptOrReject(schema: z.ZodMiniType, payload: Uint8Array): "accepted" | "rejected" {
  let value: unknown;
  try {
    value = parseControl(schema, payload);
  } catch (err) {
    assert.ok(err instanceof Error && err.constructor === Error, `unexpected throw: ${String(err)}`);
    assert.ok(err.message.startsWith("Bad control message"), err.message);
    assert.ok(err.message.length <= 512, `message of ${err.message.length} characters`);
    return "rejected";
  }
  assert.ok(schema.safeParse(value).success, "accepted value does not re-validate");
  assert.ok(schema.safeParse(JSON.parse(JSON.stringify(value))).success, "accepted value does not survive JSON");
  return "accepted";
}

/** Every object in `value` that belongs to a strict schema: everything except `result`'s subtree of a response and env maps. */
function strictObjects(value: unknown, parentKey = ""): Record<string, unknown>[] {
  if (typeof value !== "object" || value === null) return [];
  if (Array.isArray(value)) return value.flatMap((v) => strictObjects(v, parentKey));
  if (parentKey === "env") return [];
  const obj = value as Record<string, unknown>;
  const isResponse = obj["t"] === "res";
  const own = [obj];
  for (const [k, v] of Object.entries(obj)) {
    if (isResponse && k === "result") continue;
    own.push(...strictObjects(v, k));
  }
  return own;
}

/** Every plain object in `value` that has a key, at any depth (env maps and results included). */
function objectsWithKeys(value: unknown): Record<string, unknown>[] {
  if (typeof value !== "object" || value === null) return [];
  const nested = Object.values(value).flatMap(objectsWithKeys);
  return Array.isArray(value) || Object.keys(value).length === 0 ? nested : [value as Record<string, unknown>, ...nested];
}

const DUP_MARK = "\u0000dup\u0000";

/**
 * `msg` as JSON text in which one object (picked by index among those with a key) holds one of
 * its keys twice: a member with that key and `other.value` (or the key's own value, a plain
 * repeat) is written at position `at`. Undefined when the message has no object with a key.
 */
function withRepeatedKey(msg: object, pickObject: number, pickKey: number, at: number, other?: { value: unknown }): { text: string; key: string } | undefined {
  const copy = JSON.parse(JSON.stringify(msg)) as object;
  const objects = objectsWithKeys(copy);
  if (objects.length === 0) return undefined;
  const target = objects[pickObject % objects.length]!;
  const entries = Object.entries(target);
  const [key, own] = entries[pickKey % entries.length]!;
  entries.splice(at % (entries.length + 1), 0, [DUP_MARK, other === undefined ? own : other.value]);
  for (const k of Object.keys(target)) delete target[k];
  for (const [k, v] of entries) withKey(target, k, v);
  const text = JSON.stringify(copy);
  const mark = JSON.stringify(DUP_MARK);
  // The mark is spelled with \u escapes no generated string holds; check it is there once.
  assert.equal(text.split(mark).length, 2);
  return { text: text.replace(mark, () => JSON.stringify(key)), key };
}

/** Adds an own enumerable key, even "__proto__", so JSON.stringify writes it. */
function withKey(target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

const extraKey = fc.oneof(fc.string({ unit: "binary", maxLength: 12 }), fc.constantFrom("__proto__", "constructor", "toString", "hasOwnProperty", "extra"));

type Edit = { op: "set"; pick: number; value: unknown } | { op: "drop"; pick: number } | { op: "add"; pick: number; key: string; value: unknown };
const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ op: fc.constant("set" as const), pick: fc.nat(), value: fc.jsonValue({ maxDepth: 2 }) }),
  fc.record({ op: fc.constant("drop" as const), pick: fc.nat() }),
  fc.record({ op: fc.constant("add" as const), pick: fc.nat(), key: extraKey, value: fc.jsonValue({ maxDepth: 1 }) }),
);

/** Applies structural edits to a copy of `value` at objects picked by index. */
function applyEdits(value: object, edits: Edit[]): unknown {
  const copy = JSON.parse(JSON.stringify(value)) as object;
  for (const e of edits) {
    const all: Record<string, unknown>[] = [];
    const walk = (v: unknown) => {
      if (typeof v !== "object" || v === null) return;
      if (!Array.isArray(v)) all.push(v as Record<string, unknown>);
      for (const c of Object.values(v)) walk(c);
    };
    walk(copy);
    const target = all[e.pick % all.length]!;
    const keys = Object.keys(target);
    if (e.op === "add") withKey(target, e.key, e.value);
    else if (keys.length > 0) {
      const key = keys[e.pick % keys.length]!;
      if (e.op === "set") target[key] = e.value;
      else delete target[key];
    }
  }
  return copy;
}

describe("parseControl properties", () => {
  for (const c of cases) {
    describe(c.name, () => {
      it("accepts every valid message", () => {
        fc.assert(
          fc.property(c.valid, (msg) => {
            // Compared after a JSON round trip: JSON has no -0.
            assert.deepEqual(parseControl(c.schema, encodeControl(msg)), JSON.parse(JSON.stringify(msg)));
          }),
          { numRuns: RUNS },
        );
      });

      it("accepts or cleanly rejects random JSON values", () => {
        fc.assert(
          fc.property(fc.jsonValue(), (v) => void acceptOrReject(c.schema, encode(v))),
          { numRuns: RUNS },
        );
      });

      it("accepts or cleanly rejects random bytes", () => {
        fc.assert(
          fc.property(fc.uint8Array({ maxLength: 256 }), (b) => void acceptOrReject(c.schema, b)),
          { numRuns: RUNS },
        );
      });

      it("accepts or cleanly rejects structurally mutated messages", () => {
        fc.assert(
          fc.property(c.valid, fc.array(edit, { minLength: 1, maxLength: 3 }), (msg, edits) => {
            acceptOrReject(c.schema, encode(applyEdits(msg, edits)));
          }),
          { numRuns: RUNS },
        );
      });

      it("accepts or cleanly rejects byte-mutated messages", () => {
        const byteEdit = fc.record({ pos: fc.nat(), byte: fc.integer({ min: 0, max: 255 }), op: fc.constantFrom("flip", "insert", "delete") });
        fc.assert(
          fc.property(c.valid, fc.array(byteEdit, { minLength: 1, maxLength: 4 }), (msg, edits) => {
            let b = Buffer.from(encodeControl(msg));
            for (const e of edits) {
              const pos = e.pos % (b.length + 1);
              if (e.op === "flip" && pos < b.length) b[pos] = b[pos]! ^ (e.byte || 1);
              if (e.op === "insert") b = Buffer.concat([b.subarray(0, pos), Buffer.from([e.byte]), b.subarray(pos)]);
              if (e.op === "delete") b = Buffer.concat([b.subarray(0, pos), b.subarray(pos + 1)]);
            }
            acceptOrReject(c.schema, b);
          }),
          { numRuns: RUNS },
        );
      });

      it("rejects a valid message with one unknown field in any strict object", () => {
        fc.assert(
          fc.property(c.valid, fc.nat(), extraKey, fc.jsonValue({ maxDepth: 1 }), (msg, pick, key, value) => {
            const copy = JSON.parse(JSON.stringify(msg)) as object;
            const targets = strictObjects(copy);
            const target = targets[pick % targets.length]!;
            fc.pre(!Object.prototype.hasOwnProperty.call(target, key));
            withKey(target, key, value);
            assert.equal(acceptOrReject(c.schema, encode(copy)), "rejected", `extra key ${JSON.stringify(key)} accepted`);
          }),
          { numRuns: RUNS },
        );
      });

      // Not for the results that are always {}: they have no key to repeat.
      if (c.valid !== empty) it("rejects a valid message with a key written twice in any object, at any depth", () => {
        // Without "__proto__" keys, which are refused for that reason first.
        const value = fc.jsonValue({ maxDepth: 1 }).filter((v) => !JSON.stringify(v).includes('"__proto__"'));
        const other = fc.option(fc.record({ value }), { nil: undefined });
        fc.assert(
          fc.property(c.valid, fc.nat(), fc.nat(), fc.nat(), other, (msg, pickObject, pickKey, at, second) => {
            // A plain repeat (second undefined) is refused as firmly as a second meaning.
            const edited = withRepeatedKey(msg, pickObject, pickKey, at, second);
            fc.pre(edited !== undefined);
            const text = edited.text;
            assert.throws(
              () => parseControl(c.schema, new TextEncoder().encode(text)),
              (err: unknown) => err instanceof Error && err.constructor === Error && err.message.startsWith("Bad control message: duplicate key "),
              `accepted ${text}`,
            );
          }),
          { numRuns: RUNS },
        );
      });
    });
  }

  it("the repeated-key writer reaches nested objects and env maps", () => {
    // Guards the property above: it must also repeat keys below the top level.
    const msg = { t: "req", env: { A: "1" }, x: [{ y: 1 }] };
    assert.equal(objectsWithKeys(msg).length, 3);
    assert.deepEqual(withRepeatedKey(msg, 1, 0, 1, { value: 2 }), { text: '{"t":"req","env":{"A":"1","A":2},"x":[{"y":1}]}', key: "A" });
    assert.deepEqual(withRepeatedKey(msg, 2, 0, 0), { text: '{"t":"req","env":{"A":"1"},"x":[{"y":1,"y":1}]}', key: "y" });
  });

  it("the strict-object walker reaches nested objects", () => {
    // Guards the property above: it must also try nested objects, not only the top level.
    const msg = { t: "abort", stream: 1, error: { code: "ABORTED", message: "m" } };
    assert.equal(strictObjects(msg).length, 2);
    const listing = { entries: [{ name: "a" }, { name: "b" }], truncated: false };
    assert.equal(strictObjects(listing).length, 3);
    assert.equal(strictObjects({ t: "req", env: { A: "1" } }).length, 1);
    assert.equal(strictObjects({ t: "res", result: { a: {} } }).length, 1);
  });
});
