/**
 * IP address text and prefixes for the egress floor: parsing (an IPv6 zone is dropped), the
 * canonical text of an address, and prefix membership over the protocol's CIDR parser.
 */
import { ipAddressBytes, parseCidr, prefixMatches, type IpBytes } from "@mvm/protocol";

/** A parsed prefix: family, network bytes and prefix length. */
export interface Prefix {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
  readonly prefixBits: number;
}

/** Parses CIDR text that is known to be valid (tables, kernel data); throws otherwise. */
export function prefixOf(cidr: string): Prefix {
  const parsed = parseCidr(cidr);
  if (!parsed.ok) throw new Error(`Invalid prefix "${cidr}": ${parsed.reason}`);
  return parsed.value;
}

/** The prefix of `bytes` cut to its first `prefixBits` bits (host bits cleared). */
export function networkOf(bytes: Uint8Array, prefixBits: number): Prefix {
  const out = Uint8Array.from(bytes, (b, i) => {
    const keep = Math.max(0, Math.min(8, prefixBits - i * 8));
    return b & ((0xff << (8 - keep)) & 0xff);
  });
  return { family: bytes.length === 4 ? 4 : 6, bytes: out, prefixBits };
}

/** Whether the address `bytes` lies in `prefix` (same family only). */
export function inPrefix(bytes: Uint8Array, prefix: Prefix): boolean {
  return bytes.length === prefix.bytes.length && prefixMatches(bytes, prefix.bytes, prefix.prefixBits);
}

/** The text of `prefix`, e.g. "192.0.2.0/24". */
export function prefixText(prefix: Prefix): string {
  return `${ipText(prefix.bytes)}/${prefix.prefixBits}`;
}

/** An IP literal as bytes; an IPv6 zone ("fe80::1%eth0") names an interface, not another address. */
export function parseIp(ip: string): IpBytes | undefined {
  const zone = ip.indexOf("%");
  return ipAddressBytes(zone >= 0 && ip.slice(0, zone).includes(":") ? ip.slice(0, zone) : ip);
}

export const v4Text = (bytes: Uint8Array): string => Array.from(bytes).join(".");

const isMapped = (bytes: Uint8Array): boolean => bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;

/** RFC 5952 text of 16 bytes: lower-case, longest run of two or more zero groups as "::". */
export function v6Text(bytes: Uint8Array): string {
  if (isMapped(bytes)) return `::ffff:${v4Text(bytes.slice(12, 16))}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(":");
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

/** Canonical text of 4 or 16 address bytes. */
export const ipText = (bytes: Uint8Array): string => (bytes.length === 4 ? v4Text(bytes) : v6Text(bytes));

/**
 * The canonical text of an IP address: dotted decimal for IPv4; for IPv6 the RFC 5952 form
 * (lower case, compressed, `::ffff:a.b.c.d` for IPv4-mapped) without a zone. Undefined when `ip`
 * is not an IP address.
 *
 * @example normalizeIp("2001:DB8:0:0:0:0:0:1") // "2001:db8::1"
 */
export function normalizeIp(ip: string): string | undefined {
  const parsed = parseIp(ip);
  return parsed === undefined ? undefined : ipText(parsed.bytes);
}

/** Parses CIDR text from a caller; undefined when malformed or host bits are set. */
export function parseCidrOrUndefined(cidr: string): Prefix | undefined {
  const parsed = parseCidr(cidr);
  return parsed.ok ? parsed.value : undefined;
}
