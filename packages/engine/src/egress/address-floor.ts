/**
 * The address floor: addresses the egress gateway never dials, whatever the policy says. A name
 * an allowed rule covers may still resolve here (DNS rebinding), so every dialled address is
 * checked, including IPv4 addresses wrapped inside IPv6 forms that reach them.
 */
import { networkInterfaces } from "node:os";
import { ipAddressBytes, parseCidr, prefixMatches, type IpBytes } from "@mvm/protocol";

/** Options of {@link floorReason}. */
export interface FloorOptions {
  /** The host's own addresses (all interfaces), normalized strings (see {@link normalizeIp}). */
  readonly hostAddresses?: ReadonlySet<string>;
}

interface Range {
  readonly bytes: Uint8Array;
  readonly prefixBits: number;
  /** Completes `"<ip>" is ...`. */
  readonly what: string;
}

/** Most characters of a non-address quoted back in a reason. */
const MAX_QUOTED_CHARS = 64;

function ranges(table: readonly (readonly [cidr: string, what: string])[]): readonly Range[] {
  return table.map(([cidr, what]) => {
    const parsed = parseCidr(cidr);
    if (!parsed.ok) throw new Error(`Invalid floor range "${cidr}": ${parsed.reason}`);
    return { bytes: parsed.value.bytes, prefixBits: parsed.value.prefixBits, what };
  });
}

// Most specific first: the first match names the reason.
const V4_FLOOR = ranges([
  ["169.254.169.254/32", "the cloud metadata service (link-local 169.254.169.254)"],
  ["255.255.255.255/32", "the limited broadcast address"],
  ["0.0.0.0/8", 'a "this network" address (0.0.0.0/8)'],
  ["127.0.0.0/8", "a loopback address (127.0.0.0/8)"],
  ["10.0.0.0/8", "a private address (RFC 1918)"],
  ["172.16.0.0/12", "a private address (RFC 1918)"],
  ["192.168.0.0/16", "a private address (RFC 1918)"],
  ["100.64.0.0/10", "a shared carrier-grade NAT address (RFC 6598)"],
  ["169.254.0.0/16", "a link-local address (169.254.0.0/16)"],
  ["192.0.0.0/24", "an IETF protocol assignment address (192.0.0.0/24)"],
  ["224.0.0.0/4", "a multicast address (224.0.0.0/4)"],
  ["240.0.0.0/4", "a reserved address (240.0.0.0/4)"],
]);

const V6_FLOOR = ranges([
  ["::/128", "the unspecified address (::)"],
  ["::1/128", "the loopback address (::1)"],
  ["fd00:ec2::254/128", "the cloud metadata service (unique local fd00:ec2::254)"],
  ["fc00::/7", "a unique local address (fc00::/7)"],
  ["fe80::/10", "a link-local address (fe80::/10)"],
  ["fec0::/10", "a site-local address (fec0::/10)"],
  ["ff00::/8", "a multicast address (ff00::/8)"],
  ["100::/64", "a discard-only address (100::/64)"],
]);

/** An IPv4 address carried inside an IPv6 one, and the name of the carrying form. */
interface Embedded {
  readonly v4: Uint8Array;
  readonly form: string;
}

const prefix = (cidr: string): Range => ranges([[cidr, ""]])[0] as Range;
const MAPPED = prefix("::ffff:0:0/96");
const TRANSLATED = prefix("::ffff:0:0:0/96");
const COMPATIBLE = prefix("::/96");
const NAT64 = prefix("64:ff9b::/96");
const NAT64_LOCAL = prefix("64:ff9b:1::/48");
const SIX_TO_FOUR = prefix("2002::/16");
const TEREDO = prefix("2001::/32");

const inRange = (bytes: Uint8Array, range: Range): boolean => prefixMatches(bytes, range.bytes, range.prefixBits);

/**
 * Every IPv4 address an IPv6 address reaches or names, by form. A local-use NAT64 address whose
 * embedding is not the /96 one is returned with a null v4 so it is refused outright.
 */
function embeddedV4(bytes: Uint8Array): (Embedded | { readonly v4: null; readonly form: string })[] {
  const out: (Embedded | { readonly v4: null; readonly form: string })[] = [];
  if (inRange(bytes, MAPPED)) out.push({ v4: bytes.slice(12, 16), form: "IPv4-mapped" });
  if (inRange(bytes, TRANSLATED)) out.push({ v4: bytes.slice(12, 16), form: "IPv4-translated" });
  if (inRange(bytes, COMPATIBLE)) out.push({ v4: bytes.slice(12, 16), form: "IPv4-compatible" });
  if (inRange(bytes, NAT64)) out.push({ v4: bytes.slice(12, 16), form: "NAT64" });
  if (inRange(bytes, NAT64_LOCAL)) {
    // RFC 8215 lets the operator choose the embedding; only the /96 one is unambiguous.
    const slash96 = bytes.slice(6, 12).every((b) => b === 0);
    out.push(slash96 ? { v4: bytes.slice(12, 16), form: "local-use NAT64" } : { v4: null, form: "local-use NAT64" });
  }
  if (inRange(bytes, SIX_TO_FOUR)) out.push({ v4: bytes.slice(2, 6), form: "6to4" });
  if (inRange(bytes, TEREDO)) {
    out.push({ v4: bytes.slice(4, 8), form: "Teredo server" });
    out.push({ v4: bytes.slice(12, 16).map((b) => b ^ 0xff), form: "Teredo client" });
  }
  return out;
}

const v4Text = (bytes: Uint8Array): string => Array.from(bytes).join(".");

/** RFC 5952 text of 16 bytes: lower-case, longest run of two or more zero groups as "::". */
function v6Text(bytes: Uint8Array): string {
  if (inRange(bytes, MAPPED)) return `::ffff:${v4Text(bytes.slice(12, 16))}`;
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

function parse(ip: string): IpBytes | undefined {
  // An IPv6 zone ("fe80::1%eth0") names an interface, not a different address.
  const zone = ip.indexOf("%");
  return ipAddressBytes(zone >= 0 && ip.slice(0, zone).includes(":") ? ip.slice(0, zone) : ip);
}

/**
 * The canonical text of an IP address: dotted decimal for IPv4; for IPv6 the RFC 5952 form
 * (lower case, compressed, `::ffff:a.b.c.d` for IPv4-mapped) without a zone. Undefined when `ip`
 * is not an IP address.
 *
 * @example normalizeIp("2001:DB8:0:0:0:0:0:1") // "2001:db8::1"
 */
export function normalizeIp(ip: string): string | undefined {
  const parsed = parse(ip);
  if (parsed === undefined) return undefined;
  return parsed.family === 4 ? v4Text(parsed.bytes) : v6Text(parsed.bytes);
}

function isHostAddress(text: string, hosts: ReadonlySet<string> | undefined): boolean {
  if (hosts === undefined) return false;
  if (hosts.has(text)) return true;
  for (const host of hosts) if (normalizeIp(host) === text) return true;
  return false;
}

function v4Floor(bytes: Uint8Array, hosts: ReadonlySet<string> | undefined): string | undefined {
  const range = V4_FLOOR.find((r) => inRange(bytes, r));
  if (range !== undefined) return range.what;
  return isHostAddress(v4Text(bytes), hosts) ? "an address of this host" : undefined;
}

/**
 * Why `ip` may never be reached from a sandbox, or undefined when it may. `ip` is an IPv4 or
 * IPv6 literal; anything else is refused. Checks the fixed floor (loopback, private, link-local,
 * metadata, multicast, reserved, ...), the host's own addresses from `options.hostAddresses`, and
 * the IPv4 address inside IPv4-mapped, -translated and -compatible, NAT64, 6to4 and Teredo forms.
 *
 * @example floorReason("10.1.2.3") // '"10.1.2.3" is a private address (RFC 1918)'
 * @example floorReason("8.8.8.8") // undefined
 */
export function floorReason(ip: string, options: FloorOptions = {}): string | undefined {
  const parsed = parse(ip);
  if (parsed === undefined) {
    const cut = ip.length > MAX_QUOTED_CHARS ? `${ip.slice(0, MAX_QUOTED_CHARS)}...` : ip;
    return `${JSON.stringify(cut)} is not an IP address`;
  }
  const hosts = options.hostAddresses;
  if (parsed.family === 4) {
    const what = v4Floor(parsed.bytes, hosts);
    return what === undefined ? undefined : `"${v4Text(parsed.bytes)}" is ${what}`;
  }
  const text = v6Text(parsed.bytes);
  const range = V6_FLOOR.find((r) => inRange(parsed.bytes, r));
  if (range !== undefined) return `"${text}" is ${range.what}`;
  if (isHostAddress(text, hosts)) return `"${text}" is an address of this host`;
  for (const embedded of embeddedV4(parsed.bytes)) {
    if (embedded.v4 === null) return `"${text}" is a ${embedded.form} address with an ambiguous embedding`;
    const what = v4Floor(embedded.v4, hosts);
    if (what !== undefined) return `"${text}" embeds "${v4Text(embedded.v4)}" (${embedded.form}), which is ${what}`;
  }
  return undefined;
}

/**
 * The host's own addresses on every interface from `os.networkInterfaces()`, normalized with
 * {@link normalizeIp}. Pass them as `FloorOptions.hostAddresses` so a sandbox cannot reach the
 * host through an address outside the fixed floor.
 */
export function hostAddresses(): Set<string> {
  const out = new Set<string>();
  for (const infos of Object.values(networkInterfaces())) {
    for (const info of infos ?? []) {
      const text = normalizeIp(info.address);
      if (text !== undefined) out.add(text);
    }
  }
  return out;
}
