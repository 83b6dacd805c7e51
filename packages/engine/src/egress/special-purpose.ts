/**
 * The special-purpose address tables the egress floor refuses: every entry of IANA's IPv4 and
 * IPv6 Special-Purpose Address Registries (iana-ipv4-special-registry, iana-ipv6-special-registry,
 * as amended by RFC 8190), including the entries the registries mark globally reachable, plus
 * multicast, the deprecated IPv4-compatible, IPv4-translated and site-local forms, and the cloud
 * metadata addresses. Each entry names the RFC that assigned it. The most specific entry that
 * contains an address names the reason it is refused.
 */

/** One special-purpose block. */
export interface SpecialRange {
  /** The block, as CIDR text. */
  readonly cidr: string;
  /** Completes `"<ip>" is ...`, e.g. "a benchmarking address". */
  readonly what: string;
  /** The assigning document(s). */
  readonly rfc: string;
  /**
   * The IPv6 form carries an IPv4 address in these bytes; "teredo" carries two (server in
   * bytes 4..8, client obfuscated in 12..16).
   */
  readonly wraps?: readonly [start: number, end: number] | "teredo";
}

/** IPv4: the IANA IPv4 Special-Purpose Address Registry, multicast and the metadata service. */
export const SPECIAL_PURPOSE_V4: readonly SpecialRange[] = [
  { cidr: "0.0.0.0/8", what: 'a "this network" address', rfc: "RFC 791 §3.2" },
  { cidr: "0.0.0.0/32", what: 'the "this host on this network" address', rfc: "RFC 1122 §3.2.1.3" },
  { cidr: "10.0.0.0/8", what: "a private address", rfc: "RFC 1918" },
  { cidr: "100.64.0.0/10", what: "a shared carrier-grade NAT address", rfc: "RFC 6598" },
  { cidr: "127.0.0.0/8", what: "a loopback address", rfc: "RFC 1122 §3.2.1.3" },
  { cidr: "169.254.0.0/16", what: "a link-local address", rfc: "RFC 3927" },
  { cidr: "169.254.169.254/32", what: "the cloud metadata service (link-local)", rfc: "RFC 3927" },
  { cidr: "172.16.0.0/12", what: "a private address", rfc: "RFC 1918" },
  { cidr: "192.0.0.0/24", what: "an IETF protocol assignment address", rfc: "RFC 6890 §2.1" },
  { cidr: "192.0.0.0/29", what: "an IPv4 service continuity (DS-Lite) address", rfc: "RFC 7335" },
  { cidr: "192.0.0.8/32", what: "the IPv4 dummy address", rfc: "RFC 7600" },
  { cidr: "192.0.0.9/32", what: "the Port Control Protocol anycast address", rfc: "RFC 7723" },
  { cidr: "192.0.0.10/32", what: "the TURN anycast address", rfc: "RFC 8155" },
  { cidr: "192.0.0.170/32", what: "a NAT64/DNS64 discovery address", rfc: "RFC 8880, RFC 7050 §2.2" },
  { cidr: "192.0.0.171/32", what: "a NAT64/DNS64 discovery address", rfc: "RFC 8880, RFC 7050 §2.2" },
  { cidr: "192.0.2.0/24", what: "a documentation address (TEST-NET-1)", rfc: "RFC 5737" },
  { cidr: "192.31.196.0/24", what: "an AS112 address", rfc: "RFC 7535" },
  { cidr: "192.52.193.0/24", what: "an AMT address", rfc: "RFC 7450" },
  { cidr: "192.88.99.0/24", what: "a deprecated 6to4 relay anycast address", rfc: "RFC 7526" },
  { cidr: "192.168.0.0/16", what: "a private address", rfc: "RFC 1918" },
  { cidr: "192.175.48.0/24", what: "an AS112 direct delegation address", rfc: "RFC 7534" },
  { cidr: "198.18.0.0/15", what: "a benchmarking address", rfc: "RFC 2544" },
  { cidr: "198.51.100.0/24", what: "a documentation address (TEST-NET-2)", rfc: "RFC 5737" },
  { cidr: "203.0.113.0/24", what: "a documentation address (TEST-NET-3)", rfc: "RFC 5737" },
  { cidr: "224.0.0.0/4", what: "a multicast address", rfc: "RFC 5771" },
  { cidr: "240.0.0.0/4", what: "a reserved address", rfc: "RFC 1112 §4" },
  { cidr: "255.255.255.255/32", what: "the limited broadcast address", rfc: "RFC 919 §7, RFC 8190" },
];

/** IPv6: the IANA IPv6 Special-Purpose Address Registry, multicast, deprecated forms and metadata. */
export const SPECIAL_PURPOSE_V6: readonly SpecialRange[] = [
  { cidr: "::/128", what: "the unspecified address", rfc: "RFC 4291" },
  { cidr: "::1/128", what: "the loopback address", rfc: "RFC 4291" },
  { cidr: "::/96", what: "an IPv4-compatible address (deprecated)", rfc: "RFC 4291 §2.5.5.1", wraps: [12, 16] },
  { cidr: "::ffff:0:0/96", what: "an IPv4-mapped address", rfc: "RFC 4291", wraps: [12, 16] },
  { cidr: "::ffff:0:0:0/96", what: "an IPv4-translated address", rfc: "RFC 2765", wraps: [12, 16] },
  { cidr: "64:ff9b::/96", what: "a NAT64 address", rfc: "RFC 6052", wraps: [12, 16] },
  { cidr: "64:ff9b:1::/48", what: "a local-use NAT64 address", rfc: "RFC 8215", wraps: [12, 16] },
  { cidr: "100::/64", what: "a discard-only address", rfc: "RFC 6666" },
  { cidr: "100:0:0:1::/64", what: "a dummy IPv6 prefix address", rfc: "RFC 9780" },
  { cidr: "2001::/23", what: "an IETF protocol assignment address", rfc: "RFC 2928" },
  { cidr: "2001::/32", what: "a Teredo address", rfc: "RFC 4380, RFC 8190", wraps: "teredo" },
  { cidr: "2001:1::1/128", what: "the Port Control Protocol anycast address", rfc: "RFC 7723" },
  { cidr: "2001:1::2/128", what: "the TURN anycast address", rfc: "RFC 8155" },
  { cidr: "2001:1::3/128", what: "the DNS-SD service registration protocol anycast address", rfc: "RFC 9665" },
  { cidr: "2001:2::/48", what: "a benchmarking address", rfc: "RFC 5180" },
  { cidr: "2001:3::/32", what: "an AMT address", rfc: "RFC 7450" },
  { cidr: "2001:4:112::/48", what: "an AS112 address", rfc: "RFC 7535" },
  { cidr: "2001:10::/28", what: "a deprecated ORCHID address", rfc: "RFC 4843" },
  { cidr: "2001:20::/28", what: "an ORCHIDv2 address", rfc: "RFC 7343" },
  { cidr: "2001:30::/28", what: "a drone remote ID (DET) address", rfc: "RFC 9374" },
  { cidr: "2001:db8::/32", what: "a documentation address", rfc: "RFC 3849" },
  { cidr: "2002::/16", what: "a 6to4 address", rfc: "RFC 3056", wraps: [2, 6] },
  { cidr: "2620:4f:8000::/48", what: "an AS112 direct delegation address", rfc: "RFC 7534" },
  { cidr: "3fff::/20", what: "a documentation address", rfc: "RFC 9637" },
  { cidr: "5f00::/16", what: "a segment routing (SRv6) SID", rfc: "RFC 9602" },
  { cidr: "fc00::/7", what: "a unique local address", rfc: "RFC 4193" },
  { cidr: "fd00:ec2::254/128", what: "the cloud metadata service (unique local)", rfc: "RFC 4193" },
  { cidr: "fe80::/10", what: "a link-local address", rfc: "RFC 4291" },
  { cidr: "fec0::/10", what: "a site-local address (deprecated)", rfc: "RFC 3879" },
  { cidr: "ff00::/8", what: "a multicast address", rfc: "RFC 4291 §2.7" },
];

/**
 * The ranges a test allowance may open: the IPv4 and IPv6 benchmarking blocks, which nothing in
 * production dials, which the floor refuses without an allowance, and which test hosts use.
 */
export const TEST_ALLOWANCE_SCOPE: readonly string[] = ["198.18.0.0/15", "2001:2::/48"];
