/**
 * The gateway's decision logic with an in-process resolver (a fixed table): fixed cases, and
 * fast-check properties: it never throws, never resolves names no rule could allow, and whatever
 * it allows passes the floor and the policy with the exact address it will dial.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { dnsNameProblem, NetworkPolicy } from "@mvm/protocol";
import { normalizeIp } from "./address-floor.js";
import { decide, type DecideInput } from "./gateway-decide.js";
import { matchPolicy } from "./policy-match.js";

const table = new Map<string, string[]>([
  ["api.example.com", ["192.0.2.10"]],
  ["inner.example.com", ["10.0.0.5"]],
  ["both.example.com", ["10.0.0.5", "192.0.2.11"]],
]);

function input(policy: NetworkPolicy, target: string, port: number, mode: "tunnel" | "http", asked: string[] = []): DecideInput {
  return {
    policy: policy.toJSON(),
    target,
    port,
    mode,
    resolver: {
      resolve: async (name: string) => {
        asked.push(name);
        const addresses = table.get(name);
        if (addresses === undefined) throw Object.assign(new Error(`Cannot resolve "${name}": name not found`), { code: "not-found" });
        return { addresses };
      },
    },
    addressCheck: (ip) => (ip.startsWith("10.") ? `"${ip}" is a private address (RFC 1918)` : undefined),
    normalizeIp,
    signal: new AbortController().signal,
  };
}

test("443 with a name is https first, then tcp; other ports are tcp; forwarded requests are http", async () => {
  // Only an https rule makes a connection "https" (SNI-checked); a tcp rule on 443 allows it as plain "tcp".
  const policy = NetworkPolicy.denyByDefault().allowTcp("api.example.com", 443).allowHttps("api.example.com");
  assert.deepEqual(await decide(input(policy, "API.example.com.", 443, "tunnel")), { allowed: true, protocol: "https", host: "api.example.com", ip: "192.0.2.10", port: 443, rule: 1 });
  const tcpOnly = NetworkPolicy.denyByDefault().allowTcp("api.example.com", 443);
  assert.equal((await decide(input(tcpOnly, "api.example.com", 443, "tunnel"))).protocol, "tcp");
  const http = NetworkPolicy.denyByDefault().allowHttp("api.example.com");
  assert.equal((await decide(input(http, "api.example.com", 80, "http"))).allowed, true);
  assert.equal((await decide(input(http, "api.example.com", 80, "tunnel"))).allowed, false);
});

test("blocked answers are dropped; only-blocked names are denied naming the floor", async () => {
  const policy = NetworkPolicy.denyByDefault().allowHttps("*.example.com");
  const inner = await decide(input(policy, "inner.example.com", 443, "tunnel"));
  assert.equal(inner.allowed, false);
  assert.equal(!inner.allowed && inner.reason, '"inner.example.com" resolves only to blocked addresses: "10.0.0.5" is a private address (RFC 1918)');
  const both = await decide(input(policy, "both.example.com", 443, "tunnel"));
  assert.equal(both.allowed && both.ip, "192.0.2.11");
});

test("IP literals match cidr rules only, after the floor", async () => {
  const policy = NetworkPolicy.denyByDefault().allowCidr("192.0.2.0/24", [22]).allowCidr("10.0.0.0/8");
  assert.equal((await decide(input(policy, "192.0.2.10", 22, "tunnel"))).allowed, true);
  assert.equal((await decide(input(policy, "[::ffff:192.0.2.10]", 22, "tunnel"))).allowed, true);
  const floor = await decide(input(policy, "10.0.0.5", 22, "tunnel"));
  assert.match(!floor.allowed ? floor.reason : "", /private address/);
});

test("names no rule can allow are never resolved; cidr rules let a name resolve", async () => {
  const asked: string[] = [];
  await decide(input(NetworkPolicy.denyByDefault().allowHttps("other.example.com"), "api.example.com", 443, "tunnel", asked));
  assert.deepEqual(asked, []);
  const viaCidr = await decide(input(NetworkPolicy.denyByDefault().allowCidr("192.0.2.0/24", [443]), "api.example.com", 443, "tunnel", asked));
  assert.deepEqual(asked, ["api.example.com"]);
  assert.equal(viaCidr.allowed, true);
});

const policies = fc
  .array(
    fc.oneof(
      fc.constantFrom("api.example.com", "*.example.com", "inner.example.com").map((h) => (p: NetworkPolicy) => p.allowHttps(h)),
      fc.constantFrom("api.example.com", "both.example.com").map((h) => (p: NetworkPolicy) => p.allowHttp(h)),
      fc.tuple(fc.constantFrom("api.example.com", "*.example.com"), fc.constantFrom(22, 80, 443)).map(([h, port]) => (p: NetworkPolicy) => p.allowTcp(h, port)),
      fc.constantFrom("192.0.2.0/24", "10.0.0.0/8", "::/0").map((c) => (p: NetworkPolicy) => p.allowCidr(c)),
    ),
    { maxLength: 5 },
  )
  .map((steps) => steps.reduce((p, step) => step(p), NetworkPolicy.denyByDefault()));

const targets = fc.oneof(
  fc.constantFrom("api.example.com", "inner.example.com", "both.example.com", "missing.example.com", "192.0.2.10", "10.0.0.5", "[2001:db8::1]", "API.EXAMPLE.COM."),
  fc.string({ maxLength: 300 }),
);

test("property: never throws; allowed targets pass the floor and the policy with the dialled address", async () => {
  await fc.assert(
    fc.asyncProperty(policies, targets, fc.integer({ min: 0, max: 70000 }), fc.constantFrom("tunnel" as const, "http" as const), async (policy, target, port, mode) => {
      const asked: string[] = [];
      const d = await decide(input(policy, target, port, mode, asked));
      if (d.allowed) {
        assert.equal(input(policy, target, port, mode).addressCheck(d.ip), undefined);
        const rule = policy.rules[d.rule];
        assert.ok(rule !== undefined);
        const alone = NetworkPolicy.fromJSON({ ...policy.toJSON(), rules: [rule] });
        assert.equal(matchPolicy(alone, { kind: d.protocol, ...(d.host === undefined ? {} : { host: d.host }), ip: d.ip, port }).allowed, true);
        if (d.protocol === "https") assert.equal(rule.kind, "https");
      } else {
        assert.ok(d.reason.length > 0 && !/[\r\n]/.test(d.reason));
      }
      if (d.host !== undefined) assert.equal(dnsNameProblem(d.host), undefined);
      const mayResolve = policy.rules.length > 0;
      if (!mayResolve) assert.deepEqual(asked, []);
    }),
    { numRuns: 500 },
  );
});
