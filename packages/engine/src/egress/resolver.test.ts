import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import fc from "fast-check";
import { AbortedError, InvalidArgumentError, ipAddressBytes } from "@mvm/protocol";
import { normalizeIp } from "./address-floor.js";
import { TestDnsServer } from "./_dns-fixture.js";
import { EgressResolver, MAX_RESOLVED_ADDRESSES, ResolveError, dnsServerProblem } from "./resolver.js";

let dns: TestDnsServer;
let server = "";

before(async () => {
  dns = new TestDnsServer();
  server = await dns.start();
  dns.records.set("both.test", { A: ["192.0.2.1", "192.0.2.2"], AAAA: ["2001:db8::1", "2001:DB8:0:0:0:0:0:2"] });
  dns.records.set("v4only.test", { A: ["198.18.0.2"] });
  dns.records.set("v6only.test", { AAAA: ["2606:4700::1"] });
  dns.records.set("empty.test", {});
  dns.records.set("dupes.test", { A: ["192.0.2.7", "192.0.2.7", "192.0.2.8"], AAAA: ["2001:db8::7", "2001:db8::7"] });
  const many = Array.from({ length: 24 }, (_, i) => `203.0.113.${i + 1}`);
  const many6 = Array.from({ length: 16 }, (_, i) => `2001:db8::${(i + 1).toString(16)}`);
  dns.records.set("many.test", { A: many, AAAA: many6 });
});

after(() => dns.close());

/** Resolves with the ResolveError (or other error) `promise` rejects with. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

test("A and AAAA answers are merged, A first, normalized", async () => {
  const resolver = new EgressResolver({ servers: [server] });
  assert.deepEqual(await resolver.resolve("both.test"), { addresses: ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"] });
  assert.deepEqual(await resolver.resolve("v4only.test"), { addresses: ["198.18.0.2"] });
  assert.deepEqual(await resolver.resolve("v6only.test"), { addresses: ["2606:4700::1"] });
  assert.deepEqual(await resolver.resolve("Both.TEST."), { addresses: ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"] });
});

test("an unknown name is not-found, and so is a name with neither A nor AAAA", async () => {
  const resolver = new EgressResolver({ servers: [server] });
  for (const name of ["nowhere.test", "empty.test"]) {
    const err = await rejection(resolver.resolve(name));
    assert.ok(err instanceof ResolveError, String(err));
    assert.equal(err.code, "not-found");
    assert.equal(err.host, name);
    assert.ok(err.message.startsWith(`Cannot resolve "${name}": `), err.message);
    assert.ok(err.cause !== undefined);
  }
});

test("a server failure is failed", async () => {
  const err = await rejection(new EgressResolver({ servers: [server] }).resolve("servfail.test"));
  assert.ok(err instanceof ResolveError);
  assert.equal(err.code, "failed");
});

test("a server that never answers times out", async () => {
  const err = await rejection(new EgressResolver({ servers: [server], timeoutMs: 300, tries: 1 }).resolve("silent.test"));
  assert.ok(err instanceof ResolveError, String(err));
  assert.equal(err.code, "timeout");
});

test("aborting the signal cancels the resolution in flight", async () => {
  const resolver = new EgressResolver({ servers: [server], timeoutMs: 60_000 });
  const controller = new AbortController();
  const asked = once(dns, "query");
  const pending = resolver.resolve("silent.test", controller.signal);
  await asked;
  controller.abort(new Error("caller gave up"));
  const err = await rejection(pending);
  assert.ok(err instanceof AbortedError, String(err));
  assert.equal((err.cause as Error).message, "caller gave up");
  // Another resolution on the same resolver is unaffected.
  assert.deepEqual(await resolver.resolve("v4only.test"), { addresses: ["198.18.0.2"] });
});

test("an already aborted signal rejects without a query", async () => {
  const err = await rejection(new EgressResolver({ servers: [server] }).resolve("both.test", AbortSignal.abort()));
  assert.ok(err instanceof AbortedError);
});

test("cancel() fails every resolution in flight", async () => {
  const resolver = new EgressResolver({ servers: [server], timeoutMs: 60_000 });
  const asked = once(dns, "query");
  const pending = resolver.resolve("silent.test");
  await asked;
  resolver.cancel();
  const err = await rejection(pending);
  assert.ok(err instanceof ResolveError, String(err));
  assert.equal(err.code, "failed");
  assert.ok(err.message.includes("cancelled"), err.message);
});

test("an IP literal is returned unchanged without a query", async () => {
  const resolver = new EgressResolver({ servers: ["192.0.2.53"], timeoutMs: 60_000 });
  let queries = 0;
  const count = (): void => void queries++;
  dns.on("query", count);
  assert.deepEqual(await resolver.resolve("8.8.8.8"), { addresses: ["8.8.8.8"] });
  assert.deepEqual(await resolver.resolve("2606:4700::1"), { addresses: ["2606:4700::1"] });
  dns.off("query", count);
  assert.equal(queries, 0);
});

test("duplicates are dropped and at most 32 addresses kept, A first", async () => {
  const resolver = new EgressResolver({ servers: [server] });
  assert.deepEqual(await resolver.resolve("dupes.test"), { addresses: ["192.0.2.7", "192.0.2.8", "2001:db8::7"] });
  const { addresses } = await resolver.resolve("many.test");
  assert.equal(addresses.length, MAX_RESOLVED_ADDRESSES);
  assert.equal(addresses[0], "203.0.113.1");
  assert.equal(addresses[23], "203.0.113.24");
  assert.deepEqual(addresses.slice(24), Array.from({ length: 8 }, (_, i) => `2001:db8::${(i + 1).toString(16)}`));
});

test("invalid names are refused without a query", async () => {
  const resolver = new EgressResolver({ servers: [server] });
  for (const name of ["", "a..b", "-a.test", "a b.test", "x".repeat(300), "[::1]", "a.test.."]) {
    const err = await rejection(resolver.resolve(name));
    assert.ok(err instanceof ResolveError, name);
    assert.equal(err.code, "failed");
    assert.ok(err.message.length < 400);
  }
});

test("invalid options are refused", () => {
  for (const options of [
    { servers: [] },
    { servers: ["dns.example.com"] },
    { servers: ["1.2.3.4:0"] },
    { servers: ["1.2.3.4:70000"] },
    { servers: ["::1]:53"] },
    { servers: ["[1.2.3.4]:53"] },
    { timeoutMs: 0 },
    { timeoutMs: 1.5 },
    { tries: 0 },
  ]) {
    assert.throws(() => new EgressResolver(options), InvalidArgumentError, JSON.stringify(options));
  }
  new EgressResolver({ servers: ["1.2.3.4", "1.2.3.4:53", "::1", "[::1]:5353"] });
});

test("property: dnsServerProblem accepts every ip and ip:port form and never throws", () => {
  const port = fc.integer({ min: 1, max: 65535 });
  fc.assert(
    fc.property(fc.ipV4(), fc.ipV6(), port, fc.string(), (v4, v6, p, junk) => {
      assert.equal(dnsServerProblem(v4), undefined);
      assert.equal(dnsServerProblem(v6), undefined);
      assert.equal(dnsServerProblem(`${v4}:${p}`), undefined);
      assert.equal(dnsServerProblem(`[${v6}]:${p}`), undefined);
      assert.notEqual(dnsServerProblem(`[${v4}]:${p}`), undefined);
      assert.notEqual(dnsServerProblem(`${v4}:${p}:${p}`), undefined);
      dnsServerProblem(junk);
    }),
    { numRuns: 1000 },
  );
});

test("property: any record set resolves to its deduplicated, normalized addresses, A first", async () => {
  const resolver = new EgressResolver({ servers: [server] });
  let n = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.ipV4(), { maxLength: 12 }),
      fc.array(fc.ipV6(), { maxLength: 8 }),
      async (a, aaaa) => {
        const name = `prop${n++}.test`;
        dns.records.set(name, { A: a, AAAA: aaaa });
        const expected = [...new Set([...a, ...aaaa].map((ip) => normalizeIp(ip) ?? ip))].slice(0, MAX_RESOLVED_ADDRESSES);
        if (expected.length === 0) {
          const err = await rejection(resolver.resolve(name));
          assert.ok(err instanceof ResolveError && err.code === "not-found");
        } else {
          assert.deepEqual((await resolver.resolve(name)).addresses, expected);
        }
      },
    ),
    { numRuns: 60 },
  );
});

test("answers are reused for their TTL within one cache scope only, and never when the cache is off", async () => {
  dns.records.set("cached.test", { A: ["192.0.2.44"] });
  const asked: string[] = [];
  const onQuery = (name: string, type: string): void => {
    if (name === "cached.test" && type === "A") asked.push(name);
  };
  dns.on("query", onQuery);
  try {
    const resolver = new EgressResolver({ servers: [server] });
    assert.deepEqual((await resolver.resolve("cached.test", undefined, { cacheScope: "sbx_a" })).addresses, ["192.0.2.44"]);
    await resolver.resolve("cached.test", undefined, { cacheScope: "sbx_a" });
    assert.equal(asked.length, 1, "the second lookup in one scope came from the cache");
    await resolver.resolve("cached.test", undefined, { cacheScope: "sbx_b" });
    assert.equal(asked.length, 2, "another scope asks the server itself");
    await resolver.resolve("cached.test");
    assert.equal(asked.length, 3, "no scope: no cache");
    const off = new EgressResolver({ servers: [server], maxCacheSeconds: 0 });
    await off.resolve("cached.test", undefined, { cacheScope: "sbx_a" });
    await off.resolve("cached.test", undefined, { cacheScope: "sbx_a" });
    assert.equal(asked.length, 5);
  } finally {
    dns.off("query", onQuery);
  }
});
