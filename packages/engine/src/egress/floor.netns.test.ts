/**
 * The address floor, end to end: the real gateway asks a real DNS server (on a test host in its own
 * network namespace) and must refuse every special-purpose block and every part of the host's own
 * network an allowed name resolves to, including an address the host gains after the gateway
 * started; only the test allowance (set in code, never by a policy) opens a test host, and a test
 * host that is gone is unreachable rather than reached through the default route.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createServer, connect, type Server, type Socket } from "node:net";
import { networkInterfaces } from "node:os";
import { InvalidArgumentError, NetworkPolicy, NetworkPolicySchema, type ConnectionEvent, type NetworkPolicyJson } from "@mvm/protocol";
import { EgressGateway, type EgressSandbox, type GatewayOptions } from "./gateway.js";
import { EgressResolver } from "./resolver.js";
import { startTestNetwork, testNetworkSupport, TEST_HOST_RANGE, type TestNetwork } from "./_test-hosts.js";

const support = testNetworkSupport();

interface Probe {
  readonly name: string;
  readonly A?: string[];
  readonly AAAA?: string[];
  /** A phrase the denial reason must contain. */
  readonly why: RegExp;
}

/** One address from every kind of block the floor must refuse, by the reason it is refused. */
const FLOOR: readonly Probe[] = [
  { name: "loopback", A: ["127.0.0.1"], why: /loopback|address of this host/ },
  { name: "loopback-high", A: ["127.255.255.254"], why: /loopback|attached to this host \(127\.0\.0\.0\/8 on lo\)/ },
  { name: "this-network", A: ["0.0.0.0"], why: /this host on this network/ },
  { name: "rfc1918-10", A: ["10.1.2.3"], why: /private address \(10\.0\.0\.0\/8, RFC 1918\)/ },
  { name: "rfc1918-172", A: ["172.16.0.1"], why: /RFC 1918/ },
  { name: "rfc1918-192", A: ["192.168.1.1"], why: /RFC 1918/ },
  { name: "cgnat", A: ["100.64.0.1"], why: /RFC 6598/ },
  { name: "link-local", A: ["169.254.1.1"], why: /link-local/ },
  { name: "metadata", A: ["169.254.169.254"], why: /metadata/ },
  { name: "multicast", A: ["224.0.0.1"], why: /multicast/ },
  { name: "reserved", A: ["240.0.0.1"], why: /reserved/ },
  { name: "broadcast", A: ["255.255.255.255"], why: /broadcast/ },
  { name: "benchmarking", A: ["198.19.55.173"], why: /benchmarking address \(198\.18\.0\.0\/15, RFC 2544\)/ },
  { name: "test-net-1", A: ["192.0.2.1"], why: /TEST-NET-1|gateway of this host|attached to this host/ },
  { name: "test-net-2", A: ["198.51.100.1"], why: /TEST-NET-2.*RFC 5737/ },
  { name: "test-net-3", A: ["203.0.113.1"], why: /TEST-NET-3.*RFC 5737/ },
  { name: "6to4-relay", A: ["192.88.99.1"], why: /6to4 relay.*RFC 7526/ },
  { name: "ietf-assignment", A: ["192.0.0.100"], why: /IETF protocol assignment/ },
  { name: "v6-loopback", AAAA: ["::1"], why: /loopback|address of this host/ },
  { name: "v6-ula", AAAA: ["fd12:3456::1"], why: /unique local/ },
  { name: "v6-metadata", AAAA: ["fd00:ec2::254"], why: /metadata|attached to this host/ },
  { name: "v6-link-local", AAAA: ["fe80::1"], why: /link-local|attached to this host/ },
  { name: "v6-multicast", AAAA: ["ff02::1"], why: /multicast/ },
  { name: "v6-documentation", AAAA: ["2001:db8::1"], why: /documentation address \(2001:db8::\/32, RFC 3849\)/ },
  { name: "v6-mapped", AAAA: ["::ffff:127.0.0.1"], why: /IPv4-mapped.*"127\.0\.0\.1"/ },
  { name: "v6-nat64-metadata", AAAA: ["64:ff9b::a9fe:a9fe"], why: /NAT64.*metadata/ },
  { name: "v6-nat64-10", AAAA: ["64:ff9b::a00:1"], why: /NAT64.*"10\.0\.0\.1", which is a private address/ },
  { name: "v6-6to4-10", AAAA: ["2002:a00:1::1"], why: /6to4.*"10\.0\.0\.1", which is a private address/ },
  // Teredo: server 65.54.227.120, client 10.0.0.1 (obfuscated: each bit flipped).
  { name: "v6-teredo-10", AAAA: ["2001:0:4136:e378:8000:63bf:f5ff:fffe"], why: /Teredo.*"10\.0\.0\.1" \(Teredo client\), which is a private address/ },
];

/** This host's own interface addresses, default gateways and an address on each attached network. */
function hostProbes(): Probe[] {
  const probes: Probe[] = [];
  const add = (kind: string, address: string, why: RegExp): void => {
    const v6 = address.includes(":");
    probes.push({ name: `${kind}-${probes.length}`, ...(v6 ? { AAAA: [address] } : { A: [address] }), why });
  };
  // Test hosts of other test runs (mv* veths) come and go; the machine's own interfaces stay.
  const interfaces = Object.entries(networkInterfaces()).filter(([name]) => !name.startsWith("mv"));
  for (const [, infos] of interfaces) {
    for (const info of infos ?? []) add("host-own", info.address, /an address of this host/);
  }
  for (const family of ["-4", "-6"]) {
    const r = spawnSync("ip", ["-j", family, "route", "show", "default"], { encoding: "utf8" });
    for (const route of JSON.parse(r.stdout || "[]") as { gateway?: string }[]) {
      if (route.gateway !== undefined) add("host-gateway", route.gateway, /a default gateway of this host/);
    }
  }
  // Every IPv4 network an interface is on (loopback aside): its last address before broadcast.
  for (const [, infos] of interfaces) {
    for (const info of infos ?? []) {
      if (info.family !== "IPv4" || info.internal || info.cidr === null) continue;
      const bits = Number(info.cidr.split("/")[1]);
      if (bits > 30) continue;
      const n = info.address.split(".").reduce((acc, o) => acc * 256 + Number(o), 0);
      const last = ((n | (2 ** (32 - bits) - 1)) >>> 0) - 1;
      const text = [24, 16, 8, 0].map((s) => (last >>> s) & 0xff).join(".");
      if (text !== info.address) add("host-onlink", text, /attached to this host|neighbour of this host|gateway of this host/);
    }
  }
  return probes;
}

/** A gateway on 127.0.0.1 for one sandbox with `policy`; its events are collected. */
async function startGateway(net: TestNetwork, policy: NetworkPolicyJson, options: Partial<GatewayOptions>): Promise<{ port: number; events: ConnectionEvent[]; close(): Promise<void> }> {
  const events: ConnectionEvent[] = [];
  const gateway = new EgressGateway({ resolver: new EgressResolver({ servers: [net.dnsServer], timeoutMs: 3000 }), connectTimeoutMs: 5000, ...options });
  const sandbox: EgressSandbox = { id: "sbx_floortestfloortestfl", policy: () => policy, secrets: [], event: (e) => events.push(e) };
  const server: Server = createServer((s) => gateway.handle(s, sandbox));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as { port: number }).port,
    events,
    close: async () => {
      await gateway.close();
      await new Promise((r) => server.close(r));
    },
  };
}

/** CONNECT through the gateway at `port`; resolves with the status line. */
function connectThrough(port: number, host: string, targetPort = 443): Promise<string> {
  return new Promise((resolve, reject) => {
    const s: Socket = connect(port, "127.0.0.1", () => s.write(`CONNECT ${host}:${targetPort} HTTP/1.1\r\nHost: ${host}:${targetPort}\r\n\r\n`));
    let got = "";
    s.setEncoding("utf8");
    s.on("data", (c: string) => {
      got += c;
      if (got.includes("\r\n")) {
        s.destroy();
        resolve(got.split("\r\n")[0]!);
      }
    });
    s.on("error", reject);
    s.on("close", () => resolve(got.split("\r\n")[0] ?? ""));
  });
}

function ipRun(args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync("ip", args, { encoding: "utf8" });
}

describe("address floor through a real resolver", { skip: support.ok ? undefined : support.reason, timeout: 180_000 }, () => {
  let net: TestNetwork;
  let gw: Awaited<ReturnType<typeof startGateway>>;
  const probes = [...FLOOR, ...hostProbes()];

  before(async () => {
    net = await startTestNetwork({ hosts: 1 });
    await net.startServer(0, "tcp-echo", { port: 443 });
    let p = NetworkPolicy.denyByDefault().allowTcp("ok.floor.test", 443).allowTcp("host-self.floor.test", 443).allowCidr("0.0.0.0/0").allowCidr("::/0");
    for (const r of probes) {
      await net.setDns(`${r.name}.floor.test`, { ...(r.A ? { A: r.A } : {}), ...(r.AAAA ? { AAAA: r.AAAA } : {}) });
      p = p.allowTcp(`${r.name}.floor.test`, 443);
    }
    await net.setDns("ok.floor.test", { A: [net.hosts[0]!.ip] });
    // The host's own end of the veth pair: a host address, inside the test range.
    await net.setDns("host-self.floor.test", { A: [net.hosts[0]!.hostSideIp] });
    gw = await startGateway(net, p.toJSON(), { testAllowance: net.testAllowance });
  });

  after(async () => {
    await gw?.close();
    await net?.close();
  });

  test("an allowed name on a test host goes through (the test allowance opens exactly it)", async () => {
    assert.match(await connectThrough(gw.port, "ok.floor.test"), / 200 /);
  });

  for (const r of probes) {
    test(`floor: ${r.name} (${[...(r.A ?? []), ...(r.AAAA ?? [])].join(", ")}) is refused by name and as a literal, with its reason`, async () => {
      assert.match(await connectThrough(gw.port, `${r.name}.floor.test`), / 403 /);
      const e = gw.events.find((x) => x.host === `${r.name}.floor.test`);
      assert.equal(e?.decision, "denied");
      assert.match(e?.reason ?? "", r.why);
      // The policy allows every address by cidr: the literal is refused by the floor alone.
      const literal = (r.A ?? r.AAAA ?? [])[0]!;
      assert.match(await connectThrough(gw.port, literal.includes(":") ? `[${literal}]` : literal), / 403 /);
    });
  }

  test("a name resolving to 198.19.55.173 is refused with 403, never 200 Connection Established", async () => {
    const status = await connectThrough(gw.port, "benchmarking.floor.test");
    assert.equal(status, "HTTP/1.1 403 Forbidden");
    const reasons = gw.events.filter((e) => e.host === "benchmarking.floor.test").map((e) => e.reason);
    assert.ok(reasons.length > 0 && reasons.every((r) => r?.includes('"198.19.55.173" is a benchmarking address (198.18.0.0/15, RFC 2544)')), JSON.stringify(reasons));
  });

  test("floor: the host's own address is refused even inside the test range", async () => {
    assert.match(await connectThrough(gw.port, "host-self.floor.test"), / 403 /);
    assert.match(gw.events.find((x) => x.host === "host-self.floor.test")?.reason ?? "", /an address of this host/);
  });

  test("an address a host interface gains after the gateway started is refused at the next decision", async () => {
    const host = net.hosts[0]!;
    // A second address of the test host, outside its /30 and routed to it over its veth pair.
    const base = host.ip.split(".").map(Number) as [number, number, number, number];
    const extra = `${base[0]}.${base[1]}.${base[2]}.${(base[3] + 64) % 256}`;
    assert.equal(ipRun(["-n", host.netns, "addr", "add", `${extra}/32`, "dev", host.device]).status, 0);
    assert.equal(ipRun(["route", "add", `${extra}/32`, "dev", host.hostSideDevice]).status, 0);
    await net.startServer(0, "tcp-echo", { port: 443, address: extra });
    await net.setDns("late.floor.test", { A: [extra] });
    const policy = NetworkPolicy.denyByDefault().allowTcp("late.floor.test", 443).toJSON();
    const late = await startGateway(net, policy, { testAllowance: { cidrs: [`${extra}/32`] } });
    try {
      assert.match(await connectThrough(late.port, "late.floor.test"), / 200 /, "the allowance opens the address while no host interface has it");
      assert.equal(ipRun(["addr", "add", `${extra}/32`, "dev", host.hostSideDevice]).status, 0);
      assert.match(await connectThrough(late.port, "late.floor.test"), / 403 /);
      const denied = late.events.find((e) => e.decision === "denied");
      assert.match(denied?.reason ?? "", new RegExp(`"${extra.replace(/\./g, "\\.")}" is an address of this host \\(${host.hostSideDevice}\\)`));
    } finally {
      await late.close();
      ipRun(["addr", "del", `${extra}/32`, "dev", host.hostSideDevice]);
    }
  });

  test("no policy can name the test allowance: the schema refuses it and a cidr rule does not open the floor", async () => {
    const json = NetworkPolicy.denyByDefault().allowCidr(TEST_HOST_RANGE).toJSON();
    assert.equal(NetworkPolicySchema.safeParse({ ...json, testAllowance: net.testAllowance }).success, false);
    assert.equal(NetworkPolicySchema.safeParse({ ...json, rules: [{ ...json.rules[0], testAllowance: true }] }).success, false);
    // A gateway built without an allowance: the policy allows the whole test range, the floor still refuses it.
    const plain = await startGateway(net, NetworkPolicy.denyByDefault().allowCidr(TEST_HOST_RANGE).allowTcp("ok.floor.test", 443).toJSON(), {});
    try {
      assert.match(await connectThrough(plain.port, net.hosts[0]!.ip), / 403 /);
      assert.match(await connectThrough(plain.port, "ok.floor.test"), / 403 /);
      // The test host is a neighbour on the network of the host's veth end, and in the benchmarking range.
      for (const e of plain.events) assert.match(e.reason ?? "", /neighbour of this host|attached to this host|benchmarking address \(198\.18\.0\.0\/15, RFC 2544\)/);
      assert.equal(plain.events.length, 2);
    } finally {
      await plain.close();
    }
  });

  test("a test allowance outside the benchmarking ranges, or over a host address, opens nothing", async () => {
    for (const cidr of ["10.0.0.0/8", "169.254.169.254/32", "127.0.0.1/32", "198.18.0.0/14", "0.0.0.0/0", "::/0", "2001:db8::/32", "198.18.0.1"]) {
      assert.throws(() => new EgressGateway({ resolver: { resolve: () => Promise.reject(new Error("unused")) }, testAllowance: { cidrs: [cidr] } }), InvalidArgumentError, cidr);
    }
    const host = net.hosts[0]!;
    const own = await startGateway(net, NetworkPolicy.denyByDefault().allowCidr(TEST_HOST_RANGE).toJSON(), { testAllowance: { cidrs: [`${host.hostSideIp}/32`] } });
    try {
      assert.match(await connectThrough(own.port, host.hostSideIp), / 403 /);
      assert.match(own.events[0]?.reason ?? "", /an address of this host/);
    } finally {
      await own.close();
    }
  });

  test("with its test host gone, a connection to its old address fails on this machine and takes no route off it", async () => {
    const gone = await startTestNetwork({ hosts: 1 });
    const g = await startGateway(net, NetworkPolicy.denyByDefault().allowTcp("gone.floor.test", 443).toJSON(), { testAllowance: gone.testAllowance });
    try {
      const address = gone.hosts[0]!.ip;
      await gone.startServer(0, "tcp-echo", { port: 443 });
      await net.setDns("gone.floor.test", { A: [address] });
      assert.match(await connectThrough(g.port, "gone.floor.test"), / 200 /);
      await gone.removeHost(0);
      const route = ipRun(["route", "get", address]);
      assert.notEqual(route.status, 0, `a route to ${address} remains: ${route.stdout}`);
      assert.match(route.stderr, /unreachable|No route to host/i);
      const direct = await new Promise<NodeJS.ErrnoException>((resolve, reject) => {
        const s = connect({ host: address, port: 443 }, () => reject(new Error(`connected to ${address}`)));
        s.on("error", resolve);
      });
      assert.match(direct.code ?? "", /^(ENETUNREACH|EHOSTUNREACH)$/);
      // Through the gateway (the allowance still names it): the dial fails, nothing is tunnelled.
      assert.match(await connectThrough(g.port, "gone.floor.test"), / 502 /);
      assert.ok(g.events.some((e) => /UNREACH/i.test(e.reason ?? "")), JSON.stringify(g.events));
    } finally {
      await g.close();
      await gone.close();
    }
  });
});
