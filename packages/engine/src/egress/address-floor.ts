/**
 * The address floor: addresses the egress gateway never dials, whatever the policy says. A name
 * an allowed rule covers may still resolve here (DNS rebinding), so every dialled address is
 * checked: against every IANA special-purpose block (special-purpose.ts; IPv6 forms that carry
 * an IPv4 address are refused whole, and the reason names the address they carry), and against
 * the host's own network as the kernel reports it at the time of the decision (host-network.ts).
 */
import { InvalidArgumentError } from "@mvm/protocol";
import { hostEntryOf, readHostNetwork, type HostNetwork } from "./host-network.js";
import { inPrefix, ipText, normalizeIp, parseCidrOrUndefined, parseIp, prefixOf, v4Text, type Prefix } from "./ip-text.js";
import { SPECIAL_PURPOSE_V4, SPECIAL_PURPOSE_V6, TEST_ALLOWANCE_SCOPE, type SpecialRange } from "./special-purpose.js";

export { normalizeIp };

/**
 * Test-only: address blocks the floor lets through although they are special-purpose or attached
 * to the host, so that egress tests can reach test hosts in network namespaces they made. Every
 * block must lie inside the benchmarking ranges 198.18.0.0/15 or 2001:2::/48; the host's own
 * addresses stay refused. Only code sets it (a gateway or engine constructor option): no network
 * policy, request, configuration file or environment variable can name it.
 */
export interface TestAllowance {
  /** CIDR blocks, e.g. `["198.18.7.2/32"]`. */
  readonly cidrs: readonly string[];
}

/** Options of {@link floorReason}. */
export interface FloorOptions {
  /** The host's network; without it only the special-purpose blocks are checked. */
  readonly host?: HostNetwork;
  /** Parsed by {@link testAllowancePrefixes}. */
  readonly allowance?: readonly Prefix[];
}

/** Most characters of a non-address quoted back in a reason. */
const MAX_QUOTED_CHARS = 64;

interface Special extends Prefix {
  readonly range: SpecialRange;
}

/** Most specific first: the first match names the reason. */
function compile(table: readonly SpecialRange[]): readonly Special[] {
  return table.map((range) => ({ ...prefixOf(range.cidr), range })).sort((a, b) => b.prefixBits - a.prefixBits);
}

const V4 = compile(SPECIAL_PURPOSE_V4);
const V6 = compile(SPECIAL_PURPOSE_V6);
const SCOPE = TEST_ALLOWANCE_SCOPE.map(prefixOf);

/**
 * The blocks of a test allowance, parsed and checked.
 * @throws InvalidArgumentError when a block is malformed or outside 198.18.0.0/15 and 2001:2::/48
 */
export function testAllowancePrefixes(allowance: TestAllowance | undefined): readonly Prefix[] {
  return (allowance?.cidrs ?? []).map((cidr) => {
    const prefix = parseCidrOrUndefined(cidr);
    if (prefix === undefined) throw new InvalidArgumentError(`Invalid test allowance "${cidr}": must be a CIDR block with zero host bits`);
    if (!SCOPE.some((s) => s.family === prefix.family && prefix.prefixBits >= s.prefixBits && inPrefix(prefix.bytes, s))) {
      throw new InvalidArgumentError(`Invalid test allowance "${cidr}": must lie inside ${TEST_ALLOWANCE_SCOPE.join(" or ")}`);
    }
    return prefix;
  });
}

/** The IPv4 addresses a wrapping IPv6 form carries, with their roles. */
function carried(bytes: Uint8Array, range: SpecialRange): { v4: Uint8Array; role?: string }[] {
  if (range.wraps === undefined) return [];
  if (range.wraps === "teredo") {
    return [
      { v4: bytes.slice(4, 8), role: "Teredo server" },
      { v4: bytes.slice(12, 16).map((b) => b ^ 0xff), role: "Teredo client" },
    ];
  }
  // RFC 8215 lets the operator choose the local-use NAT64 embedding; only the /96 one is read.
  if (range.cidr === "64:ff9b:1::/48" && !bytes.slice(6, 12).every((b) => b === 0)) return [];
  return [{ v4: bytes.slice(range.wraps[0], range.wraps[1]) }];
}

/** Why an IPv4 address is refused by the host rules or the table, without the quoted address. */
function v4What(v4: Uint8Array, host: HostNetwork | undefined): string | undefined {
  const entry = host === undefined ? undefined : (hostEntryOf(host.own, v4) ?? hostEntryOf(host.nearby, v4));
  if (entry !== undefined) return entry.what;
  const special = V4.find((s) => inPrefix(v4, s));
  return special === undefined ? undefined : `${special.range.what} (${special.range.cidr}, ${special.range.rfc})`;
}

function specialReason(text: string, bytes: Uint8Array, special: Special, host: HostNetwork | undefined): string {
  const { range } = special;
  let reason = `"${text}" is ${range.what} (${range.cidr}, ${range.rfc})`;
  if (range.cidr === "64:ff9b:1::/48" && carried(bytes, range).length === 0) return `${reason} with an ambiguous IPv4 embedding`;
  const parts = carried(bytes, range).map(({ v4, role }) => {
    const why = v4What(v4, host);
    return `"${v4Text(v4)}"${role === undefined ? "" : ` (${role})`}${why === undefined ? "" : `, which is ${why}`}`;
  });
  if (parts.length > 0) reason += ` carrying ${parts.join(" and ")}`;
  return reason;
}

/**
 * Why `ip` may never be reached from a sandbox, or undefined when it may. `ip` is an IPv4 or IPv6
 * literal; anything else is refused. In order: the host's own addresses (never opened); the test
 * allowance (opens what it names); the host's gateways, neighbours and attached networks; every
 * special-purpose block, where a wrapping IPv6 form (mapped, compatible, translated, NAT64,
 * 6to4, Teredo) also names the IPv4 address it carries.
 *
 * @example floorReason("10.1.2.3") // '"10.1.2.3" is a private address (10.0.0.0/8, RFC 1918)'
 * @example floorReason("8.8.8.8") // undefined
 */
export function floorReason(ip: string, options: FloorOptions = {}): string | undefined {
  const parsed = parseIp(ip);
  if (parsed === undefined) {
    const cut = ip.length > MAX_QUOTED_CHARS ? `${ip.slice(0, MAX_QUOTED_CHARS)}...` : ip;
    return `${JSON.stringify(cut)} is not an IP address`;
  }
  const { bytes } = parsed;
  const text = ipText(bytes);
  const { host } = options;
  const own = host === undefined ? undefined : hostEntryOf(host.own, bytes);
  if (own !== undefined) return `"${text}" is ${own.what}`;
  if (options.allowance?.some((p) => inPrefix(bytes, p))) return undefined;
  const nearby = host === undefined ? undefined : hostEntryOf(host.nearby, bytes);
  if (nearby !== undefined) return `"${text}" is ${nearby.what}`;
  const special = (parsed.family === 4 ? V4 : V6).find((s) => inPrefix(bytes, s));
  return special === undefined ? undefined : specialReason(text, bytes, special, host);
}

/**
 * Single addresses an operator vouches for (image builds: a Debian mirror or apt cache on a
 * private or special address). Each is let through as a /32 or /128; the host's own addresses
 * stay refused. Only the engine's configuration sets it, never a sandbox's policy.
 * @throws InvalidArgumentError when an entry is not an IP address
 */
export function operatorAddressPrefixes(addresses: readonly string[] | undefined): readonly Prefix[] {
  return (addresses ?? []).map((address) => {
    const parsed = parseIp(address);
    if (parsed === undefined) throw new InvalidArgumentError(`Invalid vouched address "${address.slice(0, MAX_QUOTED_CHARS)}": not an IP address`);
    const prefix = parseCidrOrUndefined(`${ipText(parsed.bytes)}/${parsed.family === 4 ? 32 : 128}`);
    if (prefix === undefined) throw new InvalidArgumentError(`Invalid vouched address "${address.slice(0, MAX_QUOTED_CHARS)}"`);
    return prefix;
  });
}

/** Options of {@link AddressFloor}. */
export interface AddressFloorOptions {
  /** Test-only; see {@link TestAllowance}. */
  readonly testAllowance?: TestAllowance;
  /** Operator-vouched single addresses; see {@link operatorAddressPrefixes}. */
  readonly vouchedAddresses?: readonly string[];
  /** Reads the host's network. @default readHostNetwork */
  readonly readHost?: () => HostNetwork;
  /** Oldest host snapshot a refusal may be judged on, in milliseconds. @default 1000 */
  readonly maxSnapshotAgeMs?: number;
  /** @default performance.now */
  readonly now?: () => number;
}

/**
 * The floor as the gateway applies it. The host's network is a cached snapshot, re-read when it
 * is older than `maxSnapshotAgeMs`, and always re-read before an address is let through: an
 * address the host gained after the snapshot is refused at the next decision, and a sandbox
 * hammering refused addresses costs no kernel reads. A snapshot that cannot be read refuses.
 *
 * @example
 * const floor = new AddressFloor();
 * floor.reason("198.19.55.173") // '"198.19.55.173" is a benchmarking address (198.18.0.0/15, RFC 2544)'
 */
export class AddressFloor {
  readonly #allowance: readonly Prefix[];
  readonly #readHost: () => HostNetwork;
  readonly #maxAgeMs: number;
  readonly #now: () => number;
  #snapshot: { host: HostNetwork; at: number } | undefined;

  /** @throws InvalidArgumentError when the test allowance is invalid (see {@link testAllowancePrefixes}) */
  constructor(options: AddressFloorOptions = {}) {
    this.#allowance = [...testAllowancePrefixes(options.testAllowance), ...operatorAddressPrefixes(options.vouchedAddresses)];
    this.#readHost = options.readHost ?? (() => readHostNetwork());
    this.#maxAgeMs = options.maxSnapshotAgeMs ?? 1000;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Why `ip` is refused, or undefined when it may be dialled (see {@link floorReason}). */
  reason(ip: string): string | undefined {
    const now = this.#now();
    const cached = this.#snapshot !== undefined && now - this.#snapshot.at <= this.#maxAgeMs ? this.#snapshot.host : undefined;
    if (cached !== undefined) {
      const refused = floorReason(ip, { host: cached, allowance: this.#allowance });
      if (refused !== undefined) return refused;
    }
    let host: HostNetwork;
    try {
      host = this.#readHost();
    } catch (err) {
      this.#snapshot = undefined;
      return `"${normalizeIp(ip) ?? ip}" cannot be checked: the host's network cannot be read: ${err instanceof Error ? err.message : String(err)}`;
    }
    this.#snapshot = { host, at: now };
    return floorReason(ip, { host, allowance: this.#allowance });
  }
}
