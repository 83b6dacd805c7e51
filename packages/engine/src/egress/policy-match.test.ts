import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { NetworkPolicy } from "@mvm/protocol";
import { hostMatches, matchPolicy, normalizeHost } from "./policy-match.js";

const allowed = (p: NetworkPolicy, req: Parameters<typeof matchPolicy>[1]): boolean => matchPolicy(p, req).allowed;

test("deny by default with a reason naming the request", () => {
  const r = matchPolicy(NetworkPolicy.denyByDefault(), { kind: "https", host: "api.example.com", ip: "192.0.2.1", port: 443 });
  assert.equal(r.allowed, false);
  assert.ok(!r.allowed && r.reason.includes('"api.example.com"') && r.reason.includes("192.0.2.1") && r.reason.includes("443"));
  const r2 = matchPolicy(NetworkPolicy.denyByDefault(), { kind: "tcp", ip: "10.0.0.1", port: 22 });
  assert.ok(!r2.allowed && r2.reason.includes('"10.0.0.1"') && r2.reason.includes("tcp"));
});

test("exact host and port rules per kind", () => {
  const p = NetworkPolicy.denyByDefault().allowHttps("api.example.com").allowHttp("plain.example.com").allowTcp("db.example.com", 5432);
  assert.deepEqual(matchPolicy(p, { kind: "https", host: "api.example.com", port: 443 }), { allowed: true, rule: 0 });
  assert.equal(allowed(p, { kind: "https", host: "api.example.com", port: 8443 }), false);
  assert.equal(allowed(p, { kind: "http", host: "api.example.com", port: 80 }), false);
  assert.equal(allowed(p, { kind: "tcp", host: "api.example.com", port: 443 }), false);
  assert.deepEqual(matchPolicy(p, { kind: "http", host: "plain.example.com", port: 80 }), { allowed: true, rule: 1 });
  assert.equal(allowed(p, { kind: "http", host: "plain.example.com", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "plain.example.com", port: 443 }), false);
  assert.deepEqual(matchPolicy(p, { kind: "tcp", host: "db.example.com", port: 5432 }), { allowed: true, rule: 2 });
  assert.equal(allowed(p, { kind: "tcp", host: "db.example.com", port: 5433 }), false);
  assert.equal(allowed(p, { kind: "tcp", host: "sub.db.example.com", port: 5432 }), false);
  assert.equal(allowed(p, { kind: "https", port: 443, ip: "192.0.2.1" }), false);
  assert.equal(allowed(p, { kind: "https", host: "xapi.example.com", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "api.example.com.evil.com", port: 443 }), false);
});

test("wildcards match one or more labels, never the bare suffix", () => {
  const p = NetworkPolicy.denyByDefault().allowHttps("*.example.com");
  assert.equal(allowed(p, { kind: "https", host: "a.example.com", port: 443 }), true);
  assert.equal(allowed(p, { kind: "https", host: "a.b.example.com", port: 443 }), true);
  assert.equal(allowed(p, { kind: "https", host: "example.com", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "badexample.com", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: ".example.com", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "a..example.com", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "a b.example.com", port: 443 }), false);
  assert.equal(hostMatches("*.example.com", "x.example.com"), true);
  assert.equal(hostMatches("*.example.com", ".example.com"), false);
  assert.equal(allowed(p, { kind: "https", host: "a.example.com.evil", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "a.example.co", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "a.example.com", port: 80 }), false);
});

test("case and one trailing dot are normalized", () => {
  assert.equal(normalizeHost("API.Example.COM."), "api.example.com");
  assert.equal(normalizeHost("a.com.."), "a.com.");
  const p = NetworkPolicy.denyByDefault().allowHttps("api.example.com").allowHttps("*.example.org");
  assert.equal(allowed(p, { kind: "https", host: "API.EXAMPLE.COM", port: 443 }), true);
  assert.equal(allowed(p, { kind: "https", host: "api.example.com.", port: 443 }), true);
  assert.equal(allowed(p, { kind: "https", host: "api.example.com..", port: 443 }), false);
  assert.equal(allowed(p, { kind: "https", host: "X.Example.Org.", port: 443 }), true);
  assert.equal(allowed(p, { kind: "https", host: "Example.Org.", port: 443 }), false);
});

test("cidr v4: address and ports", () => {
  const p = NetworkPolicy.denyByDefault().allowCidr("203.0.113.0/24", [443]).allowCidr("10.0.0.0/8");
  assert.deepEqual(matchPolicy(p, { kind: "tcp", ip: "203.0.113.7", port: 443 }), { allowed: true, rule: 0 });
  assert.equal(allowed(p, { kind: "tcp", ip: "203.0.113.255", port: 443 }), true);
  assert.equal(allowed(p, { kind: "tcp", ip: "203.0.114.0", port: 443 }), false);
  assert.equal(allowed(p, { kind: "tcp", ip: "203.0.112.255", port: 443 }), false);
  assert.equal(allowed(p, { kind: "tcp", ip: "203.0.113.7", port: 80 }), false);
  assert.deepEqual(matchPolicy(p, { kind: "https", host: "whatever.example", ip: "10.200.1.1", port: 9999 }), { allowed: true, rule: 1 });
  assert.equal(allowed(p, { kind: "tcp", ip: "11.0.0.0", port: 1 }), false);
  assert.equal(allowed(p, { kind: "tcp", host: "10.0.0.1", port: 1 }), false, "a host string is not an ip");
  assert.equal(allowed(p, { kind: "tcp", ip: "not-an-ip", port: 1 }), false);
});

test("cidr v6 and IPv4-mapped addresses", () => {
  const p = NetworkPolicy.denyByDefault().allowCidr("2001:db8::/32", [443]).allowCidr("192.0.2.0/24", [22]);
  assert.equal(allowed(p, { kind: "tcp", ip: "2001:db8:ffff::1", port: 443 }), true);
  assert.equal(allowed(p, { kind: "tcp", ip: "2001:DB8::1", port: 443 }), true);
  assert.equal(allowed(p, { kind: "tcp", ip: "2001:db9::1", port: 443 }), false);
  assert.equal(allowed(p, { kind: "tcp", ip: "::ffff:192.0.2.9", port: 22 }), true);
  assert.equal(allowed(p, { kind: "tcp", ip: "::ffff:c000:209", port: 22 }), true);
  assert.equal(allowed(p, { kind: "tcp", ip: "::ffff:192.0.3.9", port: 22 }), false);
  assert.equal(allowed(p, { kind: "tcp", ip: "::192.0.2.9", port: 22 }), false, "v4-compatible is not mapped");
  assert.equal(allowed(p, { kind: "tcp", ip: "64:ff9b::192.0.2.9", port: 22 }), false);
  const mapped = NetworkPolicy.denyByDefault().allowCidr("::ffff:192.0.2.0/120");
  assert.equal(allowed(mapped, { kind: "tcp", ip: "192.0.2.200", port: 1 }), true);
  assert.equal(allowed(mapped, { kind: "tcp", ip: "::ffff:192.0.2.200", port: 1 }), true);
  assert.equal(allowed(mapped, { kind: "tcp", ip: "192.0.3.1", port: 1 }), false);
  const all6 = NetworkPolicy.denyByDefault().allowCidr("::/0");
  assert.equal(allowed(all6, { kind: "tcp", ip: "2001:db8::1", port: 1 }), true);
  assert.equal(allowed(all6, { kind: "tcp", ip: "192.0.2.1", port: 1 }), false, "::/0 does not cover IPv4");
  const all4 = NetworkPolicy.denyByDefault().allowCidr("0.0.0.0/0");
  assert.equal(allowed(all4, { kind: "tcp", ip: "::ffff:8.8.8.8", port: 1 }), true);
  assert.equal(allowed(all4, { kind: "tcp", ip: "::1", port: 1 }), false);
});

test("out-of-range ports are denied", () => {
  const tcp = NetworkPolicy.denyByDefault().allowTcp("a.example.com", 22).allowCidr("10.0.0.0/8");
  assert.deepEqual(matchPolicy(tcp, { kind: "tcp", host: "10.0.0.1", ip: "10.0.0.1", port: 22 }), { allowed: true, rule: 1 }, "IP in host falls through to cidr");
  const p = NetworkPolicy.denyByDefault().allowCidr("0.0.0.0/0");
  for (const port of [0, 65536, -1, 1.5]) assert.equal(allowed(p, { kind: "tcp", ip: "1.1.1.1", port }), false);
});

test("first matching rule wins; accepts the JSON form too", () => {
  const p = NetworkPolicy.denyByDefault().allowHttps("*.example.com").allowHttps("a.example.com");
  assert.deepEqual(matchPolicy(p.toJSON(), { kind: "https", host: "a.example.com", port: 443 }), { allowed: true, rule: 0 });
});

test("property: v4 prefix match agrees with integer arithmetic", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 32 }), (net, addr, bits) => {
      const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
      const base = (net & mask) >>> 0;
      const dotted = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
      const p = NetworkPolicy.denyByDefault().allowCidr(`${dotted(base)}/${bits}`);
      const expected = ((addr & mask) >>> 0) === base;
      assert.equal(allowed(p, { kind: "tcp", ip: dotted(addr), port: 1 }), expected);
      assert.equal(allowed(p, { kind: "tcp", ip: `::ffff:${dotted(addr)}`, port: 1 }), expected);
    }),
    { numRuns: 500 },
  );
});
