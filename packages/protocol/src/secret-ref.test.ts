import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError } from "./errors.js";
import { SecretRef, SecretRefSchema, SecretsSpecSchema, parseSecretsSpec, type SecretRefJson } from "./secret-ref.js";

const valid = (v: unknown): boolean => SecretRefSchema.safeParse(v).success;
const ref = (over: Record<string, unknown>): Record<string, unknown> => ({
  kind: "secret-ref",
  source: "store",
  name: "openai-key",
  posture: "mediated",
  ...over,
});

test("builders default to mediated and validate eagerly", () => {
  assert.deepEqual(SecretRef.from("openai-key").toJSON(), { kind: "secret-ref", source: "store", name: "openai-key", posture: "mediated" });
  assert.deepEqual(SecretRef.fromEnv("GITHUB_TOKEN", { posture: "env", hosts: ["api.github.com"] }).toJSON(), {
    kind: "secret-ref",
    source: "env",
    name: "GITHUB_TOKEN",
    posture: "env",
    hosts: ["api.github.com"],
  });
  assert.equal(SecretRef.fromFile("/run/secrets/pat").source, "file");
  assert.throws(() => SecretRef.from("Bad Name"), (e: unknown) => e instanceof InvalidArgumentError && e.message.includes('"secretRef.name"'));
  assert.throws(() => SecretRef.fromEnv("1ABC"), InvalidArgumentError);
  assert.throws(() => SecretRef.fromFile("relative/path"), InvalidArgumentError);
  assert.throws(
    () => SecretRef.from("k", { hosts: ["api.example.com", "1.2.3.4"] }),
    (e: unknown) => e instanceof InvalidArgumentError && e.message.includes('"secretRef.hosts[1]"'),
  );
});

test("the builder copies hosts; the ref is immutable", () => {
  const hosts = ["a.example.com"];
  const r = SecretRef.from("k", { hosts });
  hosts.push("b.example.com");
  assert.deepEqual(r.hosts, ["a.example.com"]);
  assert.throws(() => (r.hosts as string[]).push("x.example.com"), TypeError);
  const json = r.toJSON();
  json.hosts?.push("c.example.com");
  assert.deepEqual(r.hosts, ["a.example.com"]);
});

test("names are checked by source", () => {
  for (const name of ["a", "openai-key", "a.b_c-d", "0", "x".repeat(128)]) assert.equal(valid(ref({ name })), true, name);
  for (const name of ["", "A", "-a", ".a", "a b", "a/b", "x".repeat(129), "ключ"]) assert.equal(valid(ref({ name })), false, name);
  for (const name of ["A", "_x", "GITHUB_TOKEN", "a1"]) assert.equal(valid(ref({ source: "env", name })), true, name);
  for (const name of ["", "1A", "A-B", "A.B", "A=B", "X".repeat(129)]) assert.equal(valid(ref({ source: "env", name })), false, name);
  for (const name of ["/a", "/run/secrets/x y", `/${"p".repeat(4095)}`]) assert.equal(valid(ref({ source: "file", name })), true, name);
  for (const name of ["", "/", "a", "./a", "/a\0b", `/${"p".repeat(4096)}`]) assert.equal(valid(ref({ source: "file", name })), false, name);
});

test("strict shape: unknown fields, bad kind/posture/source, too many hosts refused", () => {
  assert.equal(valid(ref({})), true);
  assert.equal(valid(ref({ value: "sk-123" })), false);
  assert.equal(valid(ref({ kind: "secret" })), false);
  assert.equal(valid(ref({ posture: "plain" })), false);
  assert.equal(valid(ref({ source: "vault" })), false);
  assert.equal(valid(ref({ hosts: [] })), true);
  assert.equal(valid(ref({ hosts: Array.from({ length: 32 }, (_, i) => `h${i}.example.com`) })), true);
  assert.equal(valid(ref({ hosts: Array.from({ length: 33 }, (_, i) => `h${i}.example.com`) })), false);
  assert.equal(valid(ref({ hosts: ["*.com"] })), false);
  assert.equal(valid(ref({ hosts: "api.example.com" })), false);
  assert.equal(valid(null), false);
  assert.equal(valid([]), false);
});

test("secrets spec: env names, at most 64 entries, no __proto__", () => {
  const one = SecretRef.from("k", { hosts: ["api.example.com"] }).toJSON();
  assert.deepEqual(parseSecretsSpec({ OPENAI_API_KEY: one }), { OPENAI_API_KEY: one });
  const many = (n: number): Record<string, SecretRefJson> => Object.fromEntries(Array.from({ length: n }, (_, i) => [`K${i}`, one]));
  assert.equal(SecretsSpecSchema.safeParse(many(64)).success, true);
  assert.equal(SecretsSpecSchema.safeParse(many(65)).success, false);
  assert.equal(SecretsSpecSchema.safeParse({ "1BAD": one }).success, false);
  assert.equal(SecretsSpecSchema.safeParse({ "A-B": one }).success, false);
  assert.equal(SecretsSpecSchema.safeParse(JSON.parse(`{"__proto__": ${JSON.stringify(one)}}`)).success, false);
  assert.throws(
    () => parseSecretsSpec({ GOOD: one, BAD: { ...one, name: "UPPER" } }),
    (e: unknown) => e instanceof InvalidArgumentError && e.message.includes('"secrets.BAD.name"'),
  );
});

const hostArb = fc.constantFrom("api.example.com", "*.example.com", "a.b.c", "xn--bcher-kva.example", "h1.internal.corp");
const refArb: fc.Arbitrary<SecretRefJson> = fc
  .record(
    {
      kind: fc.constant("secret-ref" as const),
      source: fc.constant("store" as const),
      name: fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/),
      posture: fc.constantFrom("mediated" as const, "env" as const),
      hosts: fc.array(hostArb, { maxLength: 5 }),
    },
    { requiredKeys: ["kind", "source", "name", "posture"] },
  )
  .chain((r) =>
    fc.oneof(
      fc.constant(r as SecretRefJson),
      fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,20}$/).map((name) => ({ ...r, source: "env" as const, name })),
      fc.stringMatching(/^\/[a-z0-9/._-]{1,40}$/).map((name) => ({ ...r, source: "file" as const, name })),
    ),
  );

test("property: JSON round trip is the identity", () => {
  fc.assert(
    fc.property(refArb, (json) => {
      const back = SecretRef.fromJSON(JSON.parse(JSON.stringify(SecretRef.fromJSON(json))));
      assert.deepEqual(back.toJSON(), { ...json });
    }),
  );
});

test("property: mutated JSON is rejected with InvalidArgumentError", () => {
  const mutation = fc.oneof(
    fc.constant((j: Record<string, unknown>) => ({ ...j, extra: 1 })),
    fc.constant((j: Record<string, unknown>) => ({ ...j, kind: "secret-reff" })),
    fc.constant((j: Record<string, unknown>) => ({ ...j, posture: "clear" })),
    fc.constant((j: Record<string, unknown>) => ({ ...j, name: "" })),
    fc.constant((j: Record<string, unknown>) => ({ ...j, name: 42 })),
    fc.constant((j: Record<string, unknown>) => ({ ...j, hosts: ["not a host"] })),
    fc.constant((j: Record<string, unknown>) => {
      const { kind: _kind, ...rest } = j;
      return rest;
    }),
    fc.constant((j: Record<string, unknown>) => {
      const { name: _name, ...rest } = j;
      return rest;
    }),
    fc.constant((j: Record<string, unknown>) => ({ ...j, source: j["source"] === "file" ? "store" : "file" })),
  );
  fc.assert(
    fc.property(refArb, mutation, (json, mutate) => {
      assert.throws(() => SecretRef.fromJSON(mutate({ ...json })), InvalidArgumentError);
    }),
  );
});
