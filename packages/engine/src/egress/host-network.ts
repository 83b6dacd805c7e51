/**
 * What the egress floor must keep a sandbox away from on this host, read from the kernel: every
 * address of every interface, the networks those interfaces are attached to (each address's
 * prefix and every directly connected route), the next hops of routes (the default gateways among
 * them) and the IPv4 neighbour table. Interfaces come from `os.networkInterfaces()`; routes from
 * /proc/net/route and /proc/net/ipv6_route; neighbours from /proc/net/arp. A file that cannot be
 * read contributes nothing (a host without IPv6 has no ipv6_route).
 */
import { readFileSync } from "node:fs";
import { endianness, networkInterfaces } from "node:os";
import { inPrefix, ipText, networkOf, parseIp, prefixText, type Prefix } from "./ip-text.js";

/** One thing of the host's network the floor refuses, and why. */
export interface HostEntry extends Prefix {
  /** Completes `"<ip>" is ...`. */
  readonly what: string;
}

/** A snapshot of the host's network as the floor sees it. */
export interface HostNetwork {
  /** The host's own addresses (single-address prefixes); a test allowance never opens these. */
  readonly own: readonly HostEntry[];
  /** Gateways, neighbours and attached networks. */
  readonly nearby: readonly HostEntry[];
}

/** Where {@link readHostNetwork} reads the kernel's tables. */
export interface HostNetworkSources {
  readonly interfaces: () => ReturnType<typeof networkInterfaces>;
  readonly readFile: (path: string) => string | undefined;
}

const RTF_GATEWAY = 0x2;
const RTF_REJECT = 0x200;

const fromProc = (path: string): string | undefined => {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
};

const DEFAULT_SOURCES: HostNetworkSources = { interfaces: networkInterfaces, readFile: fromProc };

/** A u32 of /proc/net/route (hex, host byte order) as IPv4 bytes. */
function procV4(hex: string): Uint8Array {
  const n = Number.parseInt(hex, 16) >>> 0;
  const big = Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  return endianness() === "LE" ? big.reverse() : big;
}

const bitsOf = (mask: Uint8Array): number => mask.reduce((sum, b) => sum + (b.toString(2).match(/1/g)?.length ?? 0), 0);

function procV6(hex: string): Uint8Array {
  return Uint8Array.from({ length: 16 }, (_, i) => Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16));
}

const single = (bytes: Uint8Array, what: string): HostEntry => ({ family: bytes.length === 4 ? 4 : 6, bytes, prefixBits: bytes.length * 8, what });

const attached = (net: Prefix, device: string): HostEntry => ({ ...net, what: `on a network attached to this host (${prefixText(net)} on ${device})` });

function gateway(bytes: Uint8Array, isDefault: boolean, destination: Prefix, device: string): HostEntry {
  return single(bytes, isDefault ? `a default gateway of this host (via ${device})` : `a gateway of this host (to ${prefixText(destination)} via ${device})`);
}

/** Routes of /proc/net/route: next hops and directly connected networks (reject routes skipped). */
function v4Routes(text: string | undefined, out: HostEntry[]): void {
  for (const line of (text ?? "").split("\n").slice(1)) {
    const [device, destHex, gatewayHex, flagsHex, , , , maskHex] = line.trim().split(/\s+/);
    if (device === undefined || maskHex === undefined || destHex === undefined || gatewayHex === undefined || flagsHex === undefined) continue;
    const flags = Number.parseInt(flagsHex, 16);
    if (flags & RTF_REJECT) continue;
    const destination = networkOf(procV4(destHex), bitsOf(procV4(maskHex)));
    if (flags & RTF_GATEWAY) out.push(gateway(procV4(gatewayHex), destination.prefixBits === 0, destination, device));
    else if (destination.prefixBits > 0) out.push(attached(destination, device));
  }
}

/** Routes of /proc/net/ipv6_route, as for IPv4; multicast and loopback routes are skipped. */
function v6Routes(text: string | undefined, out: HostEntry[]): void {
  for (const line of (text ?? "").split("\n")) {
    const [destHex, plenHex, , , hopHex, , , , flagsHex, device] = line.trim().split(/\s+/);
    if (device === undefined || flagsHex === undefined || destHex?.length !== 32 || hopHex?.length !== 32 || plenHex === undefined) continue;
    const flags = Number.parseInt(flagsHex, 16);
    if (flags & RTF_REJECT || device === "lo") continue;
    const destination = networkOf(procV6(destHex), Number.parseInt(plenHex, 16));
    if (destination.bytes[0] === 0xff) continue;
    if (flags & RTF_GATEWAY) out.push(gateway(procV6(hopHex), destination.prefixBits === 0, destination, device));
    else if (destination.prefixBits > 0) out.push(attached(destination, device));
  }
}

/** IPv4 neighbours of /proc/net/arp. */
function neighbours(text: string | undefined, out: HostEntry[]): void {
  for (const line of (text ?? "").split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    const parsed = parseIp(fields[0] ?? "");
    const device = fields[5];
    if (parsed !== undefined && device !== undefined) out.push(single(parsed.bytes, `a neighbour of this host (on ${device})`));
  }
}

const PROC_FILES = ["/proc/net/route", "/proc/net/ipv6_route", "/proc/net/arp"] as const;

/** Per sources, the last snapshot and the exact kernel text it was parsed from. */
const lastParsed = new WeakMap<HostNetworkSources, { raw: string; network: HostNetwork }>();

/**
 * Reads the host's network now: one getifaddrs call and three small procfs reads, every call
 * (about 0.1 ms on a busy 2-core host). What was read is parsed only when it differs from the
 * previous read through the same sources; otherwise that read's snapshot is returned.
 *
 * @example readHostNetwork().own.map((e) => e.what) // ["an address of this host (lo)", ...]
 */
export function readHostNetwork(sources: HostNetworkSources = DEFAULT_SOURCES): HostNetwork {
  const interfaces = sources.interfaces();
  const files = PROC_FILES.map((path) => sources.readFile(path));
  const raw = JSON.stringify([interfaces, files]);
  const last = lastParsed.get(sources);
  if (last?.raw === raw) return last.network;
  const network = parseHostNetwork(interfaces, files[0], files[1], files[2]);
  lastParsed.set(sources, { raw, network });
  return network;
}

function parseHostNetwork(
  interfaces: ReturnType<typeof networkInterfaces>,
  route: string | undefined,
  ipv6Route: string | undefined,
  arp: string | undefined,
): HostNetwork {
  const own: HostEntry[] = [];
  const nearby: HostEntry[] = [];
  for (const [device, infos] of Object.entries(interfaces)) {
    for (const info of infos ?? []) {
      const parsed = parseIp(info.address);
      if (parsed === undefined) continue;
      own.push(single(parsed.bytes, `an address of this host (${device})`));
      const bits = info.cidr === null ? undefined : Number(info.cidr.slice(info.cidr.lastIndexOf("/") + 1));
      if (bits !== undefined && Number.isInteger(bits)) nearby.push(attached(networkOf(parsed.bytes, bits), device));
    }
  }
  // Next hops first: a gateway is named as such even though its network is attached too.
  const routes: HostEntry[] = [];
  v4Routes(route, routes);
  v6Routes(ipv6Route, routes);
  neighbours(arp, routes);
  const hops = routes.filter((e) => e.prefixBits === e.bytes.length * 8);
  const nets = routes.filter((e) => e.prefixBits !== e.bytes.length * 8);
  // Shared by later reads of the same text: nothing may change it.
  return Object.freeze({ own: Object.freeze(own), nearby: Object.freeze([...hops, ...nets, ...nearby]) });
}

/** The entry of `entries` that contains `bytes`, if any. */
export function hostEntryOf(entries: readonly HostEntry[], bytes: Uint8Array): HostEntry | undefined {
  return entries.find((e) => inPrefix(bytes, e));
}

/** Canonical text of every host address in `network`, e.g. for tests and diagnostics. */
export function ownAddresses(network: HostNetwork): string[] {
  return network.own.map((e) => ipText(e.bytes));
}
