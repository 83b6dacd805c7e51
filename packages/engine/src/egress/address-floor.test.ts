import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fc from "fast-check";
import { InvalidArgumentError } from "@mvm/protocol";
import { AddressFloor, floorReason, normalizeIp, testAllowancePrefixes } from "./address-floor.js";
import { readHostNetwork, ownAddresses, type HostNetworkSources } from "./host-network.js";

/**
 * Every IANA special-purpose block (both registries), multicast and the deprecated forms: the
 * first, last and one inside address, and what the reason must say (block and RFC included).
 */
const DENIED: readonly (readonly [range: string, addresses: readonly string[], why: string])[] = [
  ["0.0.0.0/8", ["0.0.0.1", "0.255.255.255", "0.1.2.3"], '"this network" address (0.0.0.0/8, RFC 791'],
  ["0.0.0.0/32", ["0.0.0.0"], "this host on this network"],
  ["10.0.0.0/8", ["10.0.0.0", "10.255.255.255", "10.1.2.3"], "private address (10.0.0.0/8, RFC 1918)"],
  ["100.64.0.0/10", ["100.64.0.0", "100.127.255.255", "100.100.1.1"], "carrier-grade NAT address (100.64.0.0/10, RFC 6598)"],
  ["127.0.0.0/8", ["127.0.0.0", "127.255.255.255", "127.0.0.1"], "loopback address (127.0.0.0/8"],
  ["169.254.0.0/16", ["169.254.0.0", "169.254.255.255", "169.254.1.1"], "link-local address (169.254.0.0/16, RFC 3927)"],
  ["169.254.169.254/32", ["169.254.169.254"], "metadata"],
  ["172.16.0.0/12", ["172.16.0.0", "172.31.255.255", "172.20.1.1"], "(172.16.0.0/12, RFC 1918)"],
  ["192.0.0.0/24", ["192.0.0.11", "192.0.0.255", "192.0.0.100"], "IETF protocol assignment address (192.0.0.0/24, RFC 6890"],
  ["192.0.0.0/29", ["192.0.0.0", "192.0.0.7"], "(192.0.0.0/29, RFC 7335)"],
  ["192.0.0.8/32", ["192.0.0.8"], "dummy address (192.0.0.8/32, RFC 7600)"],
  ["192.0.0.9/32", ["192.0.0.9"], "RFC 7723"],
  ["192.0.0.10/32", ["192.0.0.10"], "RFC 8155"],
  ["192.0.0.170/32", ["192.0.0.170", "192.0.0.171"], "RFC 8880"],
  ["192.0.2.0/24", ["192.0.2.0", "192.0.2.255", "192.0.2.1"], "documentation address (TEST-NET-1) (192.0.2.0/24, RFC 5737)"],
  ["192.31.196.0/24", ["192.31.196.0", "192.31.196.255"], "AS112 address (192.31.196.0/24, RFC 7535)"],
  ["192.52.193.0/24", ["192.52.193.0", "192.52.193.255"], "AMT address (192.52.193.0/24, RFC 7450)"],
  ["192.88.99.0/24", ["192.88.99.0", "192.88.99.255", "192.88.99.1"], "6to4 relay anycast address (192.88.99.0/24, RFC 7526)"],
  ["192.168.0.0/16", ["192.168.0.0", "192.168.255.255", "192.168.1.1"], "(192.168.0.0/16, RFC 1918)"],
  ["192.175.48.0/24", ["192.175.48.0", "192.175.48.255"], "AS112 direct delegation address (192.175.48.0/24, RFC 7534)"],
  ["198.18.0.0/15", ["198.18.0.0", "198.19.255.255", "198.19.55.173"], "benchmarking address (198.18.0.0/15, RFC 2544)"],
  ["198.51.100.0/24", ["198.51.100.0", "198.51.100.255", "198.51.100.1"], "(TEST-NET-2) (198.51.100.0/24, RFC 5737)"],
  ["203.0.113.0/24", ["203.0.113.0", "203.0.113.255", "203.0.113.1"], "(TEST-NET-3) (203.0.113.0/24, RFC 5737)"],
  ["224.0.0.0/4", ["224.0.0.0", "239.255.255.255", "224.0.0.251"], "multicast address (224.0.0.0/4, RFC 5771)"],
  ["240.0.0.0/4", ["240.0.0.0", "255.255.255.254", "250.1.2.3"], "reserved address (240.0.0.0/4, RFC 1112"],
  ["255.255.255.255/32", ["255.255.255.255"], "limited broadcast address"],
  ["::/128", ["::", "0:0:0:0:0:0:0:0"], "unspecified address (::/128, RFC 4291)"],
  ["::1/128", ["::1", "0:0:0:0:0:0:0:1"], "loopback address (::1/128, RFC 4291)"],
  ["::/96", ["::2", "::ffff:ffff", "::a00:1"], "IPv4-compatible address (deprecated) (::/96, RFC 4291"],
  ["::ffff:0:0/96", ["::ffff:0.0.0.0", "::ffff:255.255.255.255", "::ffff:8.8.8.8"], "IPv4-mapped address (::ffff:0:0/96, RFC 4291)"],
  ["::ffff:0:0:0/96", ["::ffff:0:0:0", "::ffff:0:808:808"], "IPv4-translated address (::ffff:0:0:0/96, RFC 2765)"],
  ["64:ff9b::/96", ["64:ff9b::", "64:ff9b::ffff:ffff", "64:ff9b::808:808"], "NAT64 address (64:ff9b::/96, RFC 6052)"],
  ["64:ff9b:1::/48", ["64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "64:ff9b:1::808:808"], "local-use NAT64 address (64:ff9b:1::/48, RFC 8215)"],
  ["100::/64", ["100::", "100::ffff:ffff:ffff:ffff", "100::1"], "discard-only address (100::/64, RFC 6666)"],
  ["100:0:0:1::/64", ["100:0:0:1::", "100:0:0:1:ffff:ffff:ffff:ffff"], "(100:0:0:1::/64, RFC 9780)"],
  ["2001::/23", ["2001:100::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:5::1"], "IETF protocol assignment address (2001::/23, RFC 2928)"],
  ["2001::/32", ["2001::", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff"], "Teredo address (2001::/32, RFC 4380"],
  ["2001:1::1/128", ["2001:1::1"], "(2001:1::1/128, RFC 7723)"],
  ["2001:1::2/128", ["2001:1::2"], "(2001:1::2/128, RFC 8155)"],
  ["2001:1::3/128", ["2001:1::3"], "(2001:1::3/128, RFC 9665)"],
  ["2001:2::/48", ["2001:2::", "2001:2:0:ffff:ffff:ffff:ffff:ffff"], "benchmarking address (2001:2::/48, RFC 5180)"],
  ["2001:3::/32", ["2001:3::", "2001:3:ffff:ffff:ffff:ffff:ffff:ffff"], "AMT address (2001:3::/32, RFC 7450)"],
  ["2001:4:112::/48", ["2001:4:112::", "2001:4:112:ffff:ffff:ffff:ffff:ffff"], "(2001:4:112::/48, RFC 7535)"],
  ["2001:10::/28", ["2001:10::", "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff"], "ORCHID address (2001:10::/28, RFC 4843)"],
  ["2001:20::/28", ["2001:20::", "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff"], "ORCHIDv2 address (2001:20::/28, RFC 7343)"],
  ["2001:30::/28", ["2001:30::", "2001:3f:ffff:ffff:ffff:ffff:ffff:ffff"], "(2001:30::/28, RFC 9374)"],
  ["2001:db8::/32", ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1"], "documentation address (2001:db8::/32, RFC 3849)"],
  ["2002::/16", ["2002::", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2002:808:808::1"], "6to4 address (2002::/16, RFC 3056)"],
  ["2620:4f:8000::/48", ["2620:4f:8000::", "2620:4f:8000:ffff:ffff:ffff:ffff:ffff"], "(2620:4f:8000::/48, RFC 7534)"],
  ["3fff::/20", ["3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"], "documentation address (3fff::/20, RFC 9637)"],
  ["5f00::/16", ["5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"], "(5f00::/16, RFC 9602)"],
  ["fc00::/7", ["fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fd12:3456::1"], "unique local address (fc00::/7, RFC 4193)"],
  ["fd00:ec2::254/128", ["fd00:ec2::254", "FD00:0EC2:0:0:0:0:0:0254"], "metadata"],
  ["fe80::/10", ["fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"], "link-local address (fe80::/10, RFC 4291)"],
  ["fec0::/10", ["fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fec0::1"], "site-local address (deprecated) (fec0::/10, RFC 3879)"],
  ["ff00::/8", ["ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ff02::1"], "multicast address (ff00::/8, RFC 4291"],
];

test("every special-purpose block is denied at its first, last and an inside address, naming the block and its RFC", () => {
  for (const [range, addresses, why] of DENIED) {
    for (const ip of addresses) {
      const reason = floorReason(ip);
      assert.ok(reason !== undefined, `${ip} (${range}) must be denied`);
      assert.ok(reason.includes(why), `${ip}: reason ${JSON.stringify(reason)} must say ${why}`);
      assert.ok(reason.startsWith(`"${normalizeIp(ip)}" is `), reason);
    }
  }
  assert.equal(floorReason("10.1.2.3"), '"10.1.2.3" is a private address (10.0.0.0/8, RFC 1918)');
  assert.equal(floorReason("198.19.55.173"), '"198.19.55.173" is a benchmarking address (198.18.0.0/15, RFC 2544)');
});

test("neighbours just outside the special-purpose blocks are allowed", () => {
  const allowed = [
    "1.0.0.0", "9.255.255.255", "11.0.0.0", "126.255.255.255", "128.0.0.0",
    "172.15.255.255", "172.32.0.0", "192.167.255.255", "192.169.0.0",
    "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0",
    "191.255.255.255", "192.0.1.0", "192.0.3.0", "192.88.98.255", "192.88.100.0", "223.255.255.255",
    "198.17.255.255", "198.20.0.0", "198.51.99.255", "198.51.101.0", "203.0.112.255", "203.0.114.0",
    "8.8.8.8", "1.1.1.1",
    "2606:4700::1", "2001:4860:4860::8888", "2001:200::1", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::",
    "2003::1", "2001:400::1", "3fff:1000::", "5f01::", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::1",
    "::1:0:0:0", "100:0:0:2::", "0:0:0:0:0:1:0:0", "64:ff9b:0:1::", "2620:4f:8001::",
  ];
  for (const ip of allowed) assert.equal(floorReason(ip), undefined, ip);
});

/** Every IPv6 form that carries `v4`, as text. */
function embeddings(v4: string): string[] {
  const b = v4.split(".").map(Number) as [number, number, number, number];
  const hex = (hi: number, lo: number): string => ((hi << 8) | lo).toString(16);
  const flip = b.map((x) => x ^ 0xff) as [number, number, number, number];
  return [
    `::ffff:${v4}`,
    `::ffff:${hex(b[0], b[1])}:${hex(b[2], b[3])}`,
    `0:0:0:0:0:ffff:${v4}`,
    `::ffff:0:${v4}`,
    `::${v4}`,
    `64:ff9b::${v4}`,
    `64:ff9b::${hex(b[0], b[1])}:${hex(b[2], b[3])}`,
    `64:ff9b:1::${v4}`,
    `2002:${hex(b[0], b[1])}:${hex(b[2], b[3])}::1`,
    `2002:${hex(b[0], b[1])}:${hex(b[2], b[3])}:abcd:1:2:3:4`,
    // Teredo: public server 65.54.227.120 (4136:e378), client address obfuscated.
    `2001:0:4136:e378:8000:63bf:${hex(flip[0], flip[1])}:${hex(flip[2], flip[3])}`,
    // Teredo: the embedded server address itself.
    `2001:0:${hex(b[0], b[1])}:${hex(b[2], b[3])}:8000:63bf:3fff:fdd2`,
  ];
}

test("every wrapping of a floor IPv4 address is denied, naming the wrapped address and why it is refused", () => {
  for (const v4 of ["127.0.0.1", "10.0.0.1", "169.254.169.254"]) {
    for (const ip of embeddings(v4)) {
      const reason = floorReason(ip);
      assert.ok(reason !== undefined, `${ip} embeds ${v4} and must be denied`);
      assert.ok(reason.includes(`"${v4}"`), `${ip}: ${reason}`);
      assert.match(reason, /, which is (a loopback|a private|the cloud metadata)/, `${ip}: ${reason}`);
    }
  }
  assert.match(floorReason("64:ff9b::a9fe:a9fe") ?? "", /NAT64.*metadata/);
  assert.match(floorReason("::ffff:127.0.0.1") ?? "", /IPv4-mapped/);
  assert.match(floorReason("2002:0a00:0001::1") ?? "", /^"2002:a00:1::1" is a 6to4 address \(2002::\/16, RFC 3056\) carrying "10\.0\.0\.1", which is a private address/);
  assert.match(floorReason("2001:0:4136:e378:8000:63bf:f5ff:fffe") ?? "", /"65\.54\.227\.120" \(Teredo server\) and "10\.0\.0\.1" \(Teredo client\), which is a private address/);
});

test("the same wrappings of a public IPv4 address are denied too: every wrapping form is a special-purpose block", () => {
  for (const ip of embeddings("8.8.8.8")) {
    const reason = floorReason(ip);
    assert.ok(reason?.includes('"8.8.8.8"'), `${ip}: ${reason}`);
  }
});

test("a local-use NAT64 address without the /96 embedding says its embedding is ambiguous", () => {
  assert.match(floorReason("64:ff9b:1:808:8:800::") ?? "", /ambiguous/);
});

/** A host whose network is public-looking: eth0 100.1.2.3/24 and 2a00:1::3/64, default gateways .1 and 2a00:1::1. */
const FAKE_HOST: HostNetworkSources = {
  interfaces: () => ({
    lo: [{ address: "127.0.0.1", netmask: "255.0.0.0", family: "IPv4", mac: "00:00:00:00:00:00", internal: true, cidr: "127.0.0.1/8" }],
    eth0: [
      { address: "100.1.2.3", netmask: "255.255.255.0", family: "IPv4", mac: "02:00:00:00:00:01", internal: false, cidr: "100.1.2.3/24" },
      { address: "2a00:1::3", netmask: "ffff:ffff:ffff:ffff::", family: "IPv6", mac: "02:00:00:00:00:01", internal: false, cidr: "2a00:1::3/64", scopeid: 0 },
    ],
  }),
  readFile: (path) =>
    ({
      // Little-endian hex as on x86: default via 100.1.2.1, 100.1.2.0/24 on-link, 5.6.0.0/16 via 100.1.2.9, a reject route.
      "/proc/net/route": [
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
        "eth0\t00000000\t01020164\t0003\t0\t0\t0\t00000000\t0\t0\t0",
        "eth0\t00020164\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
        "eth0\t00000605\t09020164\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0",
        "*\t00000708\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0",
      ].join("\n"),
      "/proc/net/ipv6_route": [
        "2a000001000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 2a000001000000000000000000000001 00000400 00000002 00000000 00000003     eth0",
        "ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0",
      ].join("\n"),
      "/proc/net/arp": "IP address       HW type     Flags       HW address            Mask     Device\n100.1.3.77        0x1         0x2         02:fc:00:00:00:05     *        eth1\n",
    })[path],
};

test("the host's addresses, attached networks, gateways and neighbours are denied with a reason naming them", () => {
  const host = readHostNetwork(FAKE_HOST);
  assert.deepEqual(ownAddresses(host), ["127.0.0.1", "100.1.2.3", "2a00:1::3"]);
  const cases: [string, string][] = [
    ["100.1.2.3", '"100.1.2.3" is an address of this host (eth0)'],
    ["2a00:1::3", '"2a00:1::3" is an address of this host (eth0)'],
    ["100.1.2.1", '"100.1.2.1" is a default gateway of this host (via eth0)'],
    ["2a00:1::1", '"2a00:1::1" is a default gateway of this host (via eth0)'],
    ["100.1.2.9", '"100.1.2.9" is a gateway of this host (to 5.6.0.0/16 via eth0)'],
    ["100.1.2.200", '"100.1.2.200" is on a network attached to this host (100.1.2.0/24 on eth0)'],
    ["2a00:1::ffff", '"2a00:1::ffff" is on a network attached to this host (2a00:1::/64 on eth0)'],
    ["100.1.3.77", '"100.1.3.77" is a neighbour of this host (on eth1)'],
  ];
  for (const [ip, reason] of cases) {
    assert.equal(floorReason(ip, { host }), reason);
    assert.equal(floorReason(ip), undefined, `${ip} is public-looking: only the host rules refuse it`);
  }
  // The reject route and the multicast route attach nothing; the gateway's destination is not attached.
  for (const ip of ["8.7.1.1", "5.6.1.1", "100.1.3.1", "2a00:2::1"]) assert.equal(floorReason(ip, { host }), undefined, ip);
  // Wrapped host addresses are refused, and the reason says what the carried address is.
  assert.match(floorReason("::ffff:100.1.2.3", { host }) ?? "", /"100\.1\.2\.3", which is an address of this host \(eth0\)/);
  assert.match(floorReason("64:ff9b::6401:201", { host }) ?? "", /"100\.1\.2\.1", which is a default gateway of this host/);
});

test("the test allowance opens only what it names, never a host address, and only inside the benchmarking ranges", () => {
  const host = readHostNetwork({
    ...FAKE_HOST,
    interfaces: () => ({ veth: [{ address: "198.18.4.1", netmask: "255.255.255.252", family: "IPv4", mac: "02:00:00:00:00:02", internal: false, cidr: "198.18.4.1/30" }] }),
  });
  const allowance = testAllowancePrefixes({ cidrs: ["198.18.4.2/32", "198.18.4.0/30", "2001:2::/64"] });
  assert.equal(floorReason("198.18.4.2", { host, allowance }), undefined);
  assert.equal(floorReason("2001:2::5", { host, allowance }), undefined);
  assert.equal(floorReason("198.18.4.1", { host, allowance }), '"198.18.4.1" is an address of this host (veth)');
  assert.match(floorReason("198.18.4.6", { host, allowance }) ?? "", /benchmarking/);
  assert.match(floorReason("::ffff:198.18.4.2", { host, allowance }) ?? "", /IPv4-mapped/);
  assert.match(floorReason("198.18.4.2", { host }) ?? "", /attached to this host/);
  for (const cidr of ["10.0.0.0/8", "169.254.169.254/32", "127.0.0.1/32", "198.18.0.0/14", "198.16.0.0/13", "0.0.0.0/0", "::/0", "2001::/23", "198.18.0.1", "198.18.0.1/24", "nonsense"]) {
    assert.throws(() => testAllowancePrefixes({ cidrs: [cidr] }), InvalidArgumentError, cidr);
    assert.throws(() => new AddressFloor({ testAllowance: { cidrs: [cidr] } }), InvalidArgumentError, cidr);
  }
});

test("AddressFloor re-reads the host before letting an address through, so an address gained later is refused", () => {
  let reads = 0;
  let extra = false;
  let clock = 0;
  const floor = new AddressFloor({
    now: () => clock,
    readHost: () => {
      reads++;
      const sources: HostNetworkSources = {
        ...FAKE_HOST,
        interfaces: () => {
          const base = FAKE_HOST.interfaces();
          if (extra) base["dummy0"] = [{ address: "9.9.9.9", netmask: "255.255.255.255", family: "IPv4", mac: "02:00:00:00:00:03", internal: false, cidr: "9.9.9.9/32" }];
          return base;
        },
      };
      return readHostNetwork(sources);
    },
  });
  assert.equal(floor.reason("9.9.9.9"), undefined);
  assert.equal(reads, 1);
  extra = true;
  assert.equal(floor.reason("9.9.9.9"), '"9.9.9.9" is an address of this host (dummy0)', "the snapshot is fresh, but an allow always re-reads");
  assert.equal(reads, 2);
  // A refusal is judged on the cached snapshot while it is young; an old one is read again.
  assert.match(floor.reason("100.1.2.3") ?? "", /address of this host/);
  assert.equal(reads, 2);
  clock = 5000;
  assert.match(floor.reason("100.1.2.3") ?? "", /address of this host/);
  assert.equal(reads, 3);
  assert.match(floor.reason("10.0.0.1") ?? "", /RFC 1918/);
  assert.equal(reads, 3);
});

test("AddressFloor refuses when the host's network cannot be read", () => {
  const floor = new AddressFloor({ readHost: () => { throw new Error("getifaddrs failed"); } });
  assert.equal(floor.reason("8.8.8.8"), `"8.8.8.8" cannot be checked: the host's network cannot be read: getifaddrs failed`);
});

test("on this machine: every interface address, the default gateways and the attached networks are refused as such", () => {
  const floor = new AddressFloor();
  const host = readHostNetwork();
  assert.ok(ownAddresses(host).includes("127.0.0.1"));
  for (const ip of ownAddresses(host)) assert.match(floor.reason(ip) ?? "", /is an address of this host/, ip);
  const addrs = JSON.parse(spawnSync("ip", ["-j", "addr"], { encoding: "utf8" }).stdout || "[]") as { ifname: string; addr_info: { local: string; prefixlen: number; family: string }[] }[];
  // Test hosts of other test runs come and go (mv* veths); the machine's own links do not.
  for (const link of addrs.filter((l) => !l.ifname.startsWith("mv"))) {
    for (const a of link.addr_info) assert.ok(ownAddresses(host).includes(normalizeIp(a.local) ?? ""), `${a.local} on ${link.ifname} is missing`);
  }
  for (const family of ["-4", "-6"]) {
    const routes = JSON.parse(spawnSync("ip", ["-j", family, "route", "show", "default"], { encoding: "utf8" }).stdout || "[]") as { gateway?: string; dev: string }[];
    for (const r of routes) if (r.gateway !== undefined) assert.equal(floor.reason(r.gateway), `"${normalizeIp(r.gateway)}" is a default gateway of this host (via ${r.dev})`);
  }
  for (const link of addrs) {
    for (const a of link.addr_info) {
      if (a.family !== "inet" || a.prefixlen > 30 || link.ifname === "lo") continue;
      const n = a.local.split(".").reduce((acc, o) => acc * 256 + Number(o), 0);
      const last = ((n | (2 ** (32 - a.prefixlen) - 1)) >>> 0) - 1;
      const ip = [24, 16, 8, 0].map((s) => (last >>> s) & 0xff).join(".");
      if (ip !== a.local) assert.match(floor.reason(ip) ?? "", /attached to this host|neighbour of this host|gateway of this host/, ip);
    }
  }
});

test("normalizeIp gives the canonical form and refuses non-addresses", () => {
  assert.equal(normalizeIp("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
  assert.equal(normalizeIp("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
  assert.equal(normalizeIp("2001:0:0:1:0:0:0:1"), "2001:0:0:1::1");
  assert.equal(normalizeIp("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
  assert.equal(normalizeIp("0:0:0:0:0:0:0:0"), "::");
  assert.equal(normalizeIp("fe80::1%eth0"), "fe80::1");
  assert.equal(normalizeIp("::FFFF:7f00:1"), "::ffff:127.0.0.1");
  assert.equal(normalizeIp("1.2.3.4"), "1.2.3.4");
  for (const bad of ["", "example.com", "1.2.3", "1.2.3.256", "[::1]", "::1::2", "12345::", " 1.2.3.4", "1.2.3.4%eth0"]) {
    assert.equal(normalizeIp(bad), undefined, bad);
    assert.ok(floorReason(bad)?.includes("is not an IP address"), bad);
  }
  assert.ok((floorReason("x".repeat(10_000)) ?? "").length < 100);
});

test("property: an IPv4 address's wrappings are always denied, and name it", () => {
  fc.assert(
    fc.property(fc.ipV4(), (ip) => {
      for (const wrapped of [`::ffff:${ip}`, `64:ff9b::${ip}`, `::ffff:0:${ip}`]) {
        const reason = floorReason(wrapped);
        assert.ok(reason?.includes(`"${normalizeIp(ip)}"`), `${wrapped}: ${reason}`);
      }
    }),
    { numRuns: 2000 },
  );
});

test("property: normalizeIp agrees with the URL parser and is idempotent", () => {
  fc.assert(
    fc.property(fc.oneof(fc.ipV6(), fc.ipV4()), (ip) => {
      const text = normalizeIp(ip);
      assert.ok(text !== undefined);
      assert.equal(normalizeIp(text), text);
      const host = new URL(`http://${ip.includes(":") ? `[${ip}]` : ip}/`).hostname;
      assert.equal(new URL(`http://${text.includes(":") ? `[${text}]` : text}/`).hostname, host);
    }),
    { numRuns: 2000 },
  );
});

test("property: global unicast IPv6 outside the special-purpose blocks is allowed", () => {
  const group = fc.integer({ min: 0, max: 0xffff });
  // 2000::/3 without 2001::/23, 2001:db8::/32, 2002::/16, 2620:4f:8000::/48 and 3fff::/20.
  const first = fc.integer({ min: 0x2000, max: 0x3ffe }).filter((g) => g !== 0x2002);
  fc.assert(
    fc.property(first, fc.array(group, { minLength: 7, maxLength: 7 }), (g0, rest) => {
      if (g0 === 0x2001 && (rest[0]! < 0x200 || rest[0] === 0xdb8)) return;
      if (g0 === 0x2620 && rest[0] === 0x4f && rest[1] === 0x8000) return;
      const ip = [g0, ...rest].map((g) => g.toString(16)).join(":");
      assert.equal(floorReason(ip), undefined, ip);
    }),
    { numRuns: 2000 },
  );
});

test("property: any address in 10.0.0.0/8 is denied in every embedding", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), (a, b, c) => {
      for (const ip of embeddings(`10.${a}.${b}.${c}`)) assert.ok(floorReason(ip) !== undefined, ip);
    }),
    { numRuns: 300 },
  );
});
