/**
 * Network policy as data: which outbound connections a sandbox may make. The JSON form is
 * versioned and strictly validated; everything not allowed by a rule is denied.
 */
import { isIP } from "node:net";
import { z } from "zod";
import { InvalidArgumentError } from "./errors.js";

import { MAX_CIDR_PORTS, MAX_POLICY_RULES } from "./limits.js";

export { MAX_CIDR_PORTS, MAX_POLICY_RULES } from "./limits.js";

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Why `name` is not a valid lower-case ASCII DNS name (punycode allowed), or undefined when it
 * is. IP literals and names ending in an all-digit label are refused.
 */
export function dnsNameProblem(name: string): string | undefined {
  if (name.length < 1 || name.length > 253) return "must be 1 to 253 characters";
  if (isIP(name) !== 0) return "must not be an IP literal (use a cidr rule)";
  const labels = name.split(".");
  for (const label of labels) {
    if (!LABEL.test(label)) {
      return `label "${label}" must be 1 to 63 of [a-z0-9-], not starting or ending with '-'`;
    }
  }
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? "")) return "last label must not be all digits";
  return undefined;
}

/** Why `host` is not a valid host rule value (DNS name or `*.` wildcard), or undefined. */
export function hostPatternProblem(host: string): string | undefined {
  if (host.startsWith("*.")) {
    const suffix = host.slice(2);
    const problem = dnsNameProblem(suffix);
    if (problem !== undefined) return problem;
    if (suffix.split(".").length < 2) return "wildcard needs at least two labels after '*.'";
    return undefined;
  }
  return dnsNameProblem(host);
}

const HostPattern = z.string().superRefine((host, ctx) => {
  const problem = hostPatternProblem(host);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
});

export const PortSchema = z.number().int().min(1).max(65535);

/** A parsed address: family and its bytes (4 for IPv4, 16 for IPv6). */
export interface IpBytes {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
}

/** Bytes of an IP address accepted by `node:net`'s isIP, or undefined when it is not one. */
export function ipAddressBytes(address: string): IpBytes | undefined {
  const family = isIP(address);
  if (family === 4) return { family: 4, bytes: Uint8Array.from(address.split("."), Number) };
  if (family !== 6) return undefined;
  // Zone ids ("fe80::1%eth0") are refused: they have no meaning for egress rules.
  if (address.includes("%")) return undefined;
  let text = address;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(":");
  const last = text.slice(lastColon + 1);
  if (last.includes(".")) {
    tail.push(...last.split(".").map(Number));
    text = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [head, rest] = text.split("::") as [string, string | undefined];
  const groups = (s: string): string[] => (s === "" ? [] : s.split(":"));
  const headGroups = groups(head);
  const restGroups = rest === undefined ? [] : groups(rest);
  const fill = rest === undefined ? 0 : 8 - headGroups.length - restGroups.length;
  const all = [...headGroups, ...Array<string>(fill).fill("0"), ...restGroups];
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => {
    const v = parseInt(g, 16);
    bytes[i * 2] = v >> 8;
    bytes[i * 2 + 1] = v & 0xff;
  });
  if (tail.length === 4) bytes.set(tail, 12);
  return { family: 6, bytes };
}

/** A parsed CIDR block. */
export interface ParsedCidr {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
  readonly prefixBits: number;
}

/** Parse `addr/prefix`; `ok: false` with a reason when malformed or any host bit is set. */
export function parseCidr(cidr: string): { ok: true; value: ParsedCidr } | { ok: false; reason: string } {
  const slash = cidr.indexOf("/");
  if (slash < 0) return { ok: false, reason: "must be address/prefix" };
  const ip = ipAddressBytes(cidr.slice(0, slash));
  if (ip === undefined) return { ok: false, reason: "address is not an IPv4 or IPv6 address" };
  const prefixText = cidr.slice(slash + 1);
  const max = ip.family === 4 ? 32 : 128;
  if (!/^(0|[1-9][0-9]{0,2})$/.test(prefixText) || Number(prefixText) > max) {
    return { ok: false, reason: `prefix must be an integer 0 to ${max}` };
  }
  const prefixBits = Number(prefixText);
  if (!prefixMatches(ip.bytes, new Uint8Array(ip.bytes.length), prefixBits, true)) {
    return { ok: false, reason: "host bits must be zero" };
  }
  return { ok: true, value: { family: ip.family, bytes: ip.bytes, prefixBits } };
}

/**
 * With `hostBitsZero` false: whether `a` and `b` agree on their first `bits` bits. With it
 * true: whether every bit of `a` after the first `bits` is zero (`b` is ignored).
 */
export function prefixMatches(a: Uint8Array, b: Uint8Array, bits: number, hostBitsZero = false): boolean {
  for (let i = 0; i < a.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    const mask = (0xff << (8 - keep)) & 0xff;
    const av = a[i] ?? 0;
    if (hostBitsZero) {
      if ((av & ~mask & 0xff) !== 0) return false;
    } else if ((av & mask) !== ((b[i] ?? 0) & mask)) {
      return false;
    }
  }
  return true;
}

const CidrText = z.string().max(64).superRefine((cidr, ctx) => {
  const parsed = parseCidr(cidr);
  if (!parsed.ok) ctx.addIssue({ code: "custom", message: parsed.reason });
});

export const HttpsRuleSchema = z.strictObject({ kind: z.literal("https"), host: HostPattern });
export const HttpRuleSchema = z.strictObject({ kind: z.literal("http"), host: HostPattern });
export const TcpRuleSchema = z.strictObject({ kind: z.literal("tcp"), host: HostPattern, port: PortSchema });
export const CidrRuleSchema = z.strictObject({
  kind: z.literal("cidr"),
  cidr: CidrText,
  /** Allowed destination ports, or "any". */
  ports: z.union([z.array(PortSchema).min(1).max(MAX_CIDR_PORTS), z.literal("any")]),
});
export const NetworkRuleSchema = z.discriminatedUnion("kind", [
  HttpsRuleSchema,
  HttpRuleSchema,
  TcpRuleSchema,
  CidrRuleSchema,
]);
export type NetworkRule = z.infer<typeof NetworkRuleSchema>;

export const NetworkPolicySchema = z.strictObject({
  version: z.literal(1),
  default: z.literal("deny"),
  rules: z.array(NetworkRuleSchema).max(MAX_POLICY_RULES),
});
export type NetworkPolicyJson = z.infer<typeof NetworkPolicySchema>;

function fieldPath(path: readonly PropertyKey[]): string {
  return path.length === 0 ? "policy" : path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "");
}

function deepFreeze(json: NetworkPolicyJson): NetworkPolicyJson {
  for (const rule of json.rules) {
    if (rule.kind === "cidr" && Array.isArray(rule.ports)) Object.freeze(rule.ports);
    Object.freeze(rule);
  }
  Object.freeze(json.rules);
  return Object.freeze(json);
}

/** An immutable, validated network policy. Every `allow*` returns a new policy. */
export class NetworkPolicy {
  readonly #json: NetworkPolicyJson;

  private constructor(json: NetworkPolicyJson) {
    this.#json = deepFreeze(json);
  }

  /** A policy with no rules: every connection is denied. */
  static denyByDefault(): NetworkPolicy {
    return new NetworkPolicy({ version: 1, default: "deny", rules: [] });
  }

  /** Validate JSON; throws InvalidArgumentError naming the first bad field. */
  static fromJSON(value: unknown): NetworkPolicy {
    const result = NetworkPolicySchema.safeParse(value);
    if (!result.success) {
      const issue = result.error.issues[0];
      const field = fieldPath(issue?.path ?? []);
      throw new InvalidArgumentError(`Invalid network policy field "${field}": ${issue?.message ?? "invalid"}`, {
        cause: result.error,
      });
    }
    return new NetworkPolicy(result.data);
  }

  /** The rules, in order (frozen). */
  get rules(): readonly NetworkRule[] {
    return this.#json.rules;
  }

  /** Allow HTTPS (port 443) to `host` (a DNS name or `*.suffix`). */
  allowHttps(host: string): NetworkPolicy {
    return this.#with({ kind: "https", host });
  }

  /** Allow plain HTTP (port 80) to `host`. */
  allowHttp(host: string): NetworkPolicy {
    return this.#with({ kind: "http", host });
  }

  /** Allow TCP to `host` on `port`. */
  allowTcp(host: string, port: number): NetworkPolicy {
    return this.#with({ kind: "tcp", host, port });
  }

  /** Allow connections to addresses in `cidr` on `ports` (default "any"). */
  allowCidr(cidr: string, ports: readonly number[] | "any" = "any"): NetworkPolicy {
    return this.#with({ kind: "cidr", cidr, ports: ports === "any" ? "any" : [...ports] });
  }

  /** The JSON form: a fresh, mutable copy. */
  toJSON(): NetworkPolicyJson {
    return structuredClone(this.#json);
  }

  #with(rule: unknown): NetworkPolicy {
    const json = this.toJSON();
    return NetworkPolicy.fromJSON({ ...json, rules: [...json.rules, rule] });
  }
}
