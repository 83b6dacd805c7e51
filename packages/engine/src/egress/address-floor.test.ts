import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { floorReason, hostAddresses, normalizeIp } from "./address-floor.js";

/** Every floor range: first, last and one inside address, and a word the reason must contain. */
const DENIED: readonly (readonly [range: string, addresses: readonly string[], word: string])[] = [
  ["0.0.0.0/8", ["0.0.0.0", "0.255.255.255", "0.1.2.3"], "this network"],
  ["127.0.0.0/8", ["127.0.0.0", "127.255.255.255", "127.0.0.1"], "loopback"],
  ["10.0.0.0/8", ["10.0.0.0", "10.255.255.255", "10.1.2.3"], "RFC 1918"],
  ["172.16.0.0/12", ["172.16.0.0", "172.31.255.255", "172.20.1.1"], "RFC 1918"],
  ["192.168.0.0/16", ["192.168.0.0", "192.168.255.255", "192.168.1.1"], "RFC 1918"],
  ["100.64.0.0/10", ["100.64.0.0", "100.127.255.255", "100.100.1.1"], "carrier-grade NAT"],
  ["169.254.0.0/16", ["169.254.0.0", "169.254.255.255", "169.254.1.1"], "link-local"],
  ["169.254.169.254/32", ["169.254.169.254"], "metadata"],
  ["192.0.0.0/24", ["192.0.0.0", "192.0.0.255", "192.0.0.8"], "IETF protocol assignment"],
  ["224.0.0.0/4", ["224.0.0.0", "239.255.255.255", "224.0.0.251"], "multicast"],
  ["240.0.0.0/4", ["240.0.0.0", "255.255.255.254", "250.1.2.3"], "reserved"],
  ["255.255.255.255/32", ["255.255.255.255"], "broadcast"],
  ["::/128", ["::", "0:0:0:0:0:0:0:0"], "unspecified"],
  ["::1/128", ["::1", "0:0:0:0:0:0:0:1"], "loopback"],
  ["fc00::/7", ["fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fd12:3456::1"], "unique local"],
  ["fd00:ec2::254/128", ["fd00:ec2::254", "FD00:0EC2:0:0:0:0:0:0254"], "metadata"],
  ["fe80::/10", ["fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"], "link-local"],
  ["fec0::/10", ["fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fec0::1"], "site-local"],
  ["ff00::/8", ["ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ff02::1"], "multicast"],
  ["100::/64", ["100::", "100::ffff:ffff:ffff:ffff", "100::1"], "discard"],
];

test("every floor range is denied at its first, last and an inside address", () => {
  for (const [range, addresses, word] of DENIED) {
    for (const ip of addresses) {
      const reason = floorReason(ip);
      assert.ok(reason !== undefined, `${ip} (${range}) must be denied`);
      assert.ok(reason.includes(word), `${ip}: reason ${JSON.stringify(reason)} must mention ${word}`);
      assert.ok(reason.startsWith(`"${normalizeIp(ip)}" is `), reason);
    }
  }
  assert.equal(floorReason("10.1.2.3"), '"10.1.2.3" is a private address (RFC 1918)');
});

test("neighbours just outside the floor are allowed", () => {
  const allowed = [
    "1.0.0.0", "9.255.255.255", "11.0.0.0", "126.255.255.255", "128.0.0.0",
    "172.15.255.255", "172.32.0.0", "192.167.255.255", "192.169.0.0",
    "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0",
    "191.255.255.255", "192.0.1.0", "192.0.2.1", "223.255.255.255",
    "198.18.0.2", "198.19.255.255", "8.8.8.8", "1.1.1.1",
    "2606:4700::1", "2001:4860:4860::8888", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::1",
    "::2:0:0", "100:0:0:1::", "0:0:0:0:0:1:0:0", "64:ff9b::808:808", "2002:808:808::1",
    "::ffff:8.8.8.8", "64:ff9b:1::808:808",
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

test("every embedding of a floor IPv4 address is denied with the embedded address named", () => {
  for (const v4 of ["127.0.0.1", "10.0.0.1", "169.254.169.254"]) {
    for (const ip of embeddings(v4)) {
      const reason = floorReason(ip);
      assert.ok(reason !== undefined, `${ip} embeds ${v4} and must be denied`);
      assert.ok(reason.includes(`"${v4}"`), `${ip}: ${reason}`);
    }
  }
  assert.ok(floorReason("64:ff9b::a9fe:a9fe")?.includes("metadata"));
  assert.ok(floorReason("::ffff:127.0.0.1")?.includes("IPv4-mapped"));
  assert.ok(floorReason("2002:0a00:0001::1")?.includes("6to4"));
});

test("the same embeddings of a public IPv4 address are allowed", () => {
  for (const ip of embeddings("8.8.8.8")) assert.equal(floorReason(ip), undefined, ip);
});

test("a local-use NAT64 address without the /96 embedding is refused outright", () => {
  assert.ok(floorReason("64:ff9b:1:808:8:800::")?.includes("ambiguous"));
});

test("the host's own addresses are denied, directly and through embeddings", () => {
  const hosts = new Set(["203.0.113.7", "2606:4700::6810:84e5", "2001:DB8:0:0::9"]);
  for (const ip of ["203.0.113.7", "2606:4700::6810:84e5", "2606:4700:0:0:0:0:6810:84E5", "2001:db8::9"]) {
    assert.ok(floorReason(ip, { hostAddresses: hosts })?.includes("an address of this host"), ip);
    assert.equal(floorReason(ip), undefined, ip);
  }
  for (const ip of embeddings("203.0.113.7")) {
    assert.ok(floorReason(ip, { hostAddresses: hosts })?.includes("an address of this host"), ip);
  }
  assert.equal(floorReason("203.0.113.8", { hostAddresses: hosts }), undefined);
});

test("hostAddresses lists this machine's interface addresses, normalized", () => {
  const own = hostAddresses();
  assert.ok(own.has("127.0.0.1"));
  for (const ip of own) {
    assert.equal(normalizeIp(ip), ip);
    assert.ok(floorReason(ip, { hostAddresses: own }) !== undefined, ip);
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

test("property: an IPv4 address and its IPv4-mapped form get the same verdict", () => {
  fc.assert(
    fc.property(fc.ipV4(), (ip) => {
      assert.equal(floorReason(ip) === undefined, floorReason(`::ffff:${ip}`) === undefined);
      assert.equal(floorReason(ip) === undefined, floorReason(`64:ff9b::${ip}`) === undefined);
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

test("property: public global unicast IPv6 outside the listed prefixes is allowed", () => {
  const group = fc.integer({ min: 0, max: 0xffff });
  // 2000::/3 without 2001::/32 (Teredo) and 2002::/16 (6to4).
  const first = fc.integer({ min: 0x2000, max: 0x3fff }).filter((g) => g !== 0x2002);
  fc.assert(
    fc.property(first, fc.array(group, { minLength: 7, maxLength: 7 }), (g0, rest) => {
      if (g0 === 0x2001 && rest[0] === 0) return;
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
