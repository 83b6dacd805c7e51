import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError } from "./errors.js";
import { NetworkPolicy, NetworkPolicySchema, ipAddressBytes, parseCidr } from "./network-policy.js";

const rule = (r: unknown): unknown => ({ version: 1, default: "deny", rules: [r] });
const ok = (r: unknown): boolean => NetworkPolicySchema.safeParse(rule(r)).success;

test("host names: valid forms accepted", () => {
  for (const host of ["example.com", "a", "api.example.com", "xn--bcher-kva.example", "a-b.c0", "*.example.com", "*.a.b.c"]) {
    assert.equal(ok({ kind: "https", host }), true, host);
  }
  assert.equal(ok({ kind: "https", host: `${"a".repeat(63)}.com` }), true);
});

test("host names: invalid forms refused", () => {
  for (const host of [
    "", "*", "*.com", "*.*.example.com", "a.*.example.com", "Example.com", "exa mple.com", "-a.com", "a-.com",
    "a..com", ".a.com", "a.com.", "bücher.de", "1.2.3.4", "::1", "[::1]", "10.0.0.1", "1.2.3", "a.123",
    `${"a".repeat(64)}.com`, `${"a.".repeat(127)}ab`, "a_b.com", "*example.com", "**.example.com",
  ]) {
    assert.equal(ok({ kind: "https", host }), false, JSON.stringify(host));
    assert.equal(ok({ kind: "tcp", host, port: 22 }), false, JSON.stringify(host));
  }
});

test("ports are 1..65535 integers", () => {
  for (const port of [1, 22, 65535]) assert.equal(ok({ kind: "tcp", host: "a.com", port }), true);
  for (const port of [0, -1, 65536, 1.5, "22", Number.NaN]) assert.equal(ok({ kind: "tcp", host: "a.com", port }), false);
  assert.equal(ok({ kind: "cidr", cidr: "10.0.0.0/8", ports: [] }), false);
  assert.equal(ok({ kind: "cidr", cidr: "10.0.0.0/8", ports: [0] }), false);
  assert.equal(ok({ kind: "cidr", cidr: "10.0.0.0/8", ports: [443, 80] }), true);
  assert.equal(ok({ kind: "cidr", cidr: "10.0.0.0/8", ports: "any" }), true);
  assert.equal(ok({ kind: "cidr", cidr: "10.0.0.0/8" }), false);
});

test("cidr: canonical v4 and v6 accepted, host bits or junk refused", () => {
  for (const cidr of ["0.0.0.0/0", "203.0.113.0/24", "10.1.2.3/32", "::/0", "2001:db8::/32", "::ffff:0:0/96", "fe80::/10", "2001:db8::1/128", "::ffff:10.0.0.0/104"]) {
    assert.equal(ok({ kind: "cidr", cidr, ports: "any" }), true, cidr);
  }
  for (const cidr of ["203.0.113.1/24", "10.0.0.0", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/08", "10.0.0.0/ 8", "2001:db8::1/32", "2001:db8::/129", "fe80::%eth0/10", "example.com/8", "300.0.0.0/8", "2001:db8:::/32", "/8"]) {
    assert.equal(ok({ kind: "cidr", cidr, ports: "any" }), false, cidr);
  }
});

test("ipAddressBytes expands v6 forms", () => {
  assert.deepEqual([...(ipAddressBytes("::1")?.bytes ?? [])], [...new Array(15).fill(0), 1]);
  assert.deepEqual([...(ipAddressBytes("::ffff:1.2.3.4")?.bytes ?? [])], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 1, 2, 3, 4]);
  assert.deepEqual([...(ipAddressBytes("2001:db8::ff00:42")?.bytes ?? [])], [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0x42]);
  assert.deepEqual([...(ipAddressBytes("1:2:3:4:5:6:7:8")?.bytes ?? [])], [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]);
  assert.equal(ipAddressBytes("nope"), undefined);
  const p = parseCidr("2001:db8::/32");
  assert.equal(p.ok && p.value.prefixBits, 32);
});

test("structure: version, default, extra keys, rule bound", () => {
  const good = { version: 1, default: "deny", rules: [] };
  assert.equal(NetworkPolicySchema.safeParse(good).success, true);
  assert.equal(NetworkPolicySchema.safeParse({ ...good, version: 2 }).success, false);
  assert.equal(NetworkPolicySchema.safeParse({ ...good, default: "allow" }).success, false);
  assert.equal(NetworkPolicySchema.safeParse({ ...good, extra: 1 }).success, false);
  assert.equal(ok({ kind: "https", host: "a.com", port: 443 }), false);
  assert.equal(ok({ kind: "udp", host: "a.com" }), false);
  const many = (n: number) => ({ ...good, rules: Array.from({ length: n }, () => ({ kind: "http", host: "a.com" })) });
  assert.equal(NetworkPolicySchema.safeParse(many(256)).success, true);
  assert.equal(NetworkPolicySchema.safeParse(many(257)).success, false);
});

test("fromJSON throws InvalidArgumentError naming the field", () => {
  assert.throws(
    () => NetworkPolicy.fromJSON(rule({ kind: "tcp", host: "a.com", port: 0 })),
    (e: unknown) => e instanceof InvalidArgumentError && e.message.includes('"rules[0].port"') && e.cause !== undefined,
  );
  assert.throws(
    () => NetworkPolicy.fromJSON({ version: 1, default: "deny", rules: [{ kind: "https", host: "*.com" }] }),
    (e: unknown) => e instanceof InvalidArgumentError && e.message.includes('"rules[0].host"'),
  );
  assert.throws(() => NetworkPolicy.fromJSON(null), InvalidArgumentError);
});

test("builder is immutable and round-trips", () => {
  const base = NetworkPolicy.denyByDefault();
  const a = base.allowHttps("api.example.com");
  const b = a.allowHttp("*.example.org").allowTcp("db.internal.example", 5432).allowCidr("203.0.113.0/24", [443]);
  assert.equal(base.rules.length, 0);
  assert.equal(a.rules.length, 1);
  assert.equal(b.rules.length, 4);
  assert.deepEqual(b.toJSON(), {
    version: 1,
    default: "deny",
    rules: [
      { kind: "https", host: "api.example.com" },
      { kind: "http", host: "*.example.org" },
      { kind: "tcp", host: "db.internal.example", port: 5432 },
      { kind: "cidr", cidr: "203.0.113.0/24", ports: [443] },
    ],
  });
  const json = b.toJSON();
  json.rules.push({ kind: "http", host: "x.com" });
  assert.equal(b.rules.length, 4);
  assert.throws(() => (b.rules as unknown[]).push(1), TypeError);
  assert.throws(() => NetworkPolicy.denyByDefault().allowHttps("*.com"), InvalidArgumentError);
  assert.throws(() => NetworkPolicy.denyByDefault().allowTcp("10.0.0.1", 22), InvalidArgumentError);
  const ports = [443];
  const c = base.allowCidr("10.0.0.0/8", ports);
  ports.push(1);
  assert.deepEqual(c.toJSON().rules[0], { kind: "cidr", cidr: "10.0.0.0/8", ports: [443] });
  assert.deepEqual(base.allowCidr("::/0").toJSON().rules[0], { kind: "cidr", cidr: "::/0", ports: "any" });
});

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
const name = fc.tuple(fc.array(label, { minLength: 0, maxLength: 3 }), fc.stringMatching(/^[a-z][a-z0-9]{0,5}$/)).map(([ls, tld]) => [...ls, tld].join("."));
const host = fc.oneof(name, fc.tuple(label, name).map(([l, n]) => `*.${l}.${n}`));
const port = fc.integer({ min: 1, max: 65535 });
const v4cidr = fc.tuple(fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 32 })).map(([b, bits]) => {
  const n = (((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0) & (bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0);
  return `${[n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".")}/${bits}`;
});
const v6cidr = fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 16, max: 128 })).map(([g, bits]) => `${g.toString(16)}::/${bits}`);
const ruleArb = fc.oneof(
  host.map((h) => ({ kind: "https" as const, host: h })),
  host.map((h) => ({ kind: "http" as const, host: h })),
  fc.tuple(host, port).map(([h, p]) => ({ kind: "tcp" as const, host: h, port: p })),
  fc.tuple(fc.oneof(v4cidr, v6cidr), fc.oneof(fc.constant("any" as const), fc.array(port, { minLength: 1, maxLength: 5 }))).map(([cidr, ports]) => ({ kind: "cidr" as const, cidr, ports })),
);
const policyArb = fc.array(ruleArb, { maxLength: 20 }).map((rules) => ({ version: 1 as const, default: "deny" as const, rules }));

test("property: valid policies round-trip through JSON unchanged", () => {
  fc.assert(
    fc.property(policyArb, (p) => {
      const back = NetworkPolicy.fromJSON(JSON.parse(JSON.stringify(NetworkPolicy.fromJSON(p))));
      assert.deepEqual(back.toJSON(), p);
    }),
    { numRuns: 300 },
  );
});

test("property: mutated policies are rejected with InvalidArgumentError or still valid", () => {
  const mutation = fc.oneof(
    fc.constant((r: Record<string, unknown>) => ({ ...r, extra: true })),
    fc.constant((r: Record<string, unknown>) => ({ ...r, kind: "udp" })),
    fc.constant((r: Record<string, unknown>) => ({ ...r, host: `${String(r["host"])}.` })),
    fc.constant((r: Record<string, unknown>) => ({ ...r, host: String(r["host"]).toUpperCase() })),
    fc.constant((r: Record<string, unknown>) => ({ ...r, port: 0 })),
    fc.constant((r: Record<string, unknown>) => ({ ...r, cidr: `${String(r["cidr"])}1` })),
    fc.constant((r: Record<string, unknown>) => {
      const { kind: _k, ...rest } = r;
      return rest;
    }),
  );
  fc.assert(
    fc.property(policyArb.filter((p) => p.rules.length > 0), mutation, fc.nat(), (p, mutate, at) => {
      const rules: unknown[] = [...p.rules];
      const i = at % rules.length;
      rules[i] = mutate(rules[i] as Record<string, unknown>);
      const value = { ...p, rules };
      let result: NetworkPolicy | undefined;
      try {
        result = NetworkPolicy.fromJSON(value);
      } catch (e) {
        assert.ok(e instanceof InvalidArgumentError);
        assert.match(e.message, new RegExp(`rules\\[${i}\\]`));
        return;
      }
      assert.deepEqual(result.toJSON(), value);
    }),
    { numRuns: 500 },
  );
});
