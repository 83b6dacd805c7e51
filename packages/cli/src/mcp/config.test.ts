/**
 * The MCP config is a ceiling: property tests that any subset of its rules, images and secrets is
 * admitted as asked, and that anything outside it is refused with PolicyDeniedError.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError, PolicyDeniedError, canonicalJson, type NetworkRule } from "@mvm/protocol";
import { MCP_LABEL, mcpConfigFrom, narrowCreate } from "./config.js";

const RULES: NetworkRule[] = [
  { kind: "https", host: "api.example.com" },
  { kind: "http", host: "mirror.example.org" },
  { kind: "tcp", host: "db.example.com", port: 5432 },
  { kind: "cidr", cidr: "10.1.0.0/16", ports: [443] },
];
const config = mcpConfigFrom({
  images: ["debian:bookworm+python3", "debian:bookworm"],
  network: { version: 1, default: "deny", rules: RULES },
  secrets: { API_KEY: { kind: "secret-ref", source: "store", name: "api-key", posture: "mediated", hosts: ["api.example.com"] } },
  ttlSeconds: { default: 60, max: 600 },
});

test("a subset of the config is admitted exactly as asked, with the MCP label", () => {
  fc.assert(
    fc.property(fc.subarray(RULES), fc.constantFrom(...config.images), fc.boolean(), fc.integer({ min: 1, max: 600 }), (rules, image, secret, ttl) => {
      const r = narrowCreate(config, { image, network: rules, secrets: secret ? ["API_KEY"] : [], ttlSeconds: ttl });
      assert.deepEqual(r.network?.rules, rules);
      assert.equal(r.image, image);
      assert.equal(r.ttlSeconds, ttl);
      assert.deepEqual(Object.keys(r.secrets ?? {}), secret ? ["API_KEY"] : []);
      assert.deepEqual(r.labels, { [MCP_LABEL]: "1" });
    }),
  );
  const defaults = narrowCreate(config, {});
  assert.deepEqual(defaults.network?.rules, RULES);
  assert.equal(defaults.secrets, undefined);
  assert.equal(defaults.ttlSeconds, 60);
});

const ruleArb: fc.Arbitrary<NetworkRule> = fc.oneof(
  fc.record({ kind: fc.constant("https" as const), host: fc.domain() }),
  fc.record({ kind: fc.constant("tcp" as const), host: fc.domain(), port: fc.integer({ min: 1, max: 65535 }) }),
  fc.record({ kind: fc.constant("cidr" as const), cidr: fc.constantFrom("0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16"), ports: fc.constantFrom("any" as const, [443], [80]) }),
);

test("any rule the config does not hold is refused, whatever else is asked with it", () => {
  const held = new Set(RULES.map((r) => canonicalJson(r)));
  fc.assert(
    fc.property(fc.subarray(RULES), ruleArb, (rules, extra) => {
      fc.pre(!held.has(canonicalJson(extra)));
      assert.throws(() => narrowCreate(config, { network: [...rules, extra] }), PolicyDeniedError);
    }),
  );
});

test("images, secrets and TTLs outside the config are refused", () => {
  assert.throws(() => narrowCreate(config, { image: "alpine:3" }), PolicyDeniedError);
  assert.throws(() => narrowCreate(config, { secrets: ["OTHER"] }), PolicyDeniedError);
  assert.throws(() => narrowCreate(config, { secrets: ["__proto__"] }), PolicyDeniedError);
  assert.throws(() => narrowCreate(config, { secrets: ["toString"] }), PolicyDeniedError);
  assert.throws(() => narrowCreate(config, { ttlSeconds: 601 }), PolicyDeniedError);
});

test("a bad config names its field", () => {
  assert.throws(() => mcpConfigFrom({ images: [] }), (e: unknown) => e instanceof InvalidArgumentError && /"images"/.test(e.message));
  assert.throws(() => mcpConfigFrom({ images: ["debian:bookworm"], extra: 1 }), InvalidArgumentError);
  assert.throws(() => mcpConfigFrom({ images: ["debian:bookworm"], ttlSeconds: { default: 700, max: 600 } }), /default 700 is over max 600/);
});
