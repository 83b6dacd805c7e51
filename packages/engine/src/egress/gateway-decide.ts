/**
 * The gateway's decision for one target: policy match, host-side resolution, the address floor,
 * and the cidr re-check with the address that will be dialled.
 */
import { isIP } from "node:net";
import { dnsNameProblem, type NetworkPolicyJson } from "@mvm/protocol";
import { matchPolicy, normalizeHost, type EgressRequest, type MatchResult } from "./policy-match.js";
import { SocksReply, type SocksReplyCode } from "./gateway-socks.js";
import type { EgressResolver } from "./resolver.js";

export type EgressKind = EgressRequest["kind"];

/** Most blocked addresses named in one denial reason. */
const MAX_NAMED_BLOCKED = 4;
/** Most characters of a hostile target quoted back in a reason. */
const MAX_QUOTED_CHARS = 260;

export type Decision =
  | {
      readonly allowed: true;
      readonly protocol: EgressKind;
      readonly host?: string;
      readonly ip: string;
      readonly port: number;
      readonly rule: number;
    }
  | {
      readonly allowed: false;
      readonly protocol: EgressKind;
      readonly host?: string;
      readonly ip?: string;
      readonly port: number;
      readonly reason: string;
      readonly socksReply: SocksReplyCode;
      readonly httpStatus: 403 | 502 | 504;
    };

export interface DecideInput {
  readonly policy: NetworkPolicyJson;
  /** Host name or IP literal as the workload sent it (IPv6 may be bracketed). */
  readonly target: string;
  readonly port: number;
  /** "tunnel" for CONNECT and SOCKS, "http" for a forwarded absolute-URI request. */
  readonly mode: "tunnel" | "http";
  readonly resolver: Pick<EgressResolver, "resolve">;
  /** Why an address must never be dialled, or undefined when it may be. */
  readonly addressCheck: (ip: string) => string | undefined;
  readonly normalizeIp: (ip: string) => string | undefined;
  readonly signal: AbortSignal;
  /** Partitions the resolver's cache (the sandbox id). */
  readonly cacheScope?: string;
}

/** A hostile string, quoted and escaped for a reason, cut to a bounded length. */
export function quote(text: string): string {
  const cut = text.length > MAX_QUOTED_CHARS ? `${text.slice(0, MAX_QUOTED_CHARS)}...` : text;
  return JSON.stringify(cut);
}

/** Whether `target` names an IP address (brackets allowed around IPv6); its normalized text if so. */
export function ipLiteral(target: string, normalizeIp: (ip: string) => string | undefined): string | undefined {
  const bare = target.startsWith("[") && target.endsWith("]") ? target.slice(1, -1) : target;
  if (isIP(bare) === 0) return undefined;
  return normalizeIp(bare) ?? bare;
}

/**
 * Decides one target. Never throws: resolver failures and aborts become denials.
 * @example await decide({ policy, target: "api.example.com", port: 443, mode: "tunnel", ... })
 */
export async function decide(input: DecideInput): Promise<Decision> {
  const { policy, port, mode } = input;
  const literal = ipLiteral(input.target, input.normalizeIp);
  if (literal !== undefined) return decideAddress(input, literal);

  const host = normalizeHost(input.target);
  const kinds: EgressKind[] = mode === "http" ? ["http"] : port === 443 ? ["https", "tcp"] : ["tcp"];
  const first = kinds[0] ?? "tcp";
  const problem = dnsNameProblem(host);
  if (problem !== undefined) {
    return deny(first, undefined, undefined, port, `Denied ${first} to ${quote(input.target)} port ${port}: not a valid host name (${problem})`, SocksReply.notAllowed, 403);
  }
  const byHost = kinds.find((kind) => matchesAs(policy, kind, { host, port }).allowed);
  const policyReason = (ip?: string): string => {
    const m = matchPolicy(policy, { kind: first, host, port, ...(ip === undefined ? {} : { ip }) });
    return m.allowed ? `Denied ${first} to "${host}" port ${port}` : m.reason;
  };
  const cidrMayMatch = policy.rules.some((r) => r.kind === "cidr" && (r.ports === "any" || r.ports.includes(port)));
  // Names no rule can allow are never resolved: the sandbox must not make the host look names up.
  if (byHost === undefined && !cidrMayMatch) return deny(first, host, undefined, port, policyReason(), SocksReply.notAllowed, 403);

  let addresses: readonly string[];
  try {
    addresses = (await input.resolver.resolve(host, input.signal, input.cacheScope === undefined ? {} : { cacheScope: input.cacheScope })).addresses;
  } catch (err) {
    if (byHost === undefined) return deny(first, host, undefined, port, policyReason(), SocksReply.notAllowed, 403);
    const code = (err as { code?: unknown } | null)?.code;
    const fallback = code === "not-found" ? "name not found" : code === "timeout" ? "resolution timed out" : "resolution failed";
    const reason = err instanceof Error && err.message !== "" ? err.message : `Cannot resolve "${host}": ${fallback}`;
    const reply = code === "failed" || (code !== "not-found" && code !== "timeout") ? SocksReply.generalFailure : SocksReply.hostUnreachable;
    return deny(byHost, host, undefined, port, reason, reply, code === "timeout" ? 504 : 502);
  }

  const blocked: string[] = [];
  let survivor: string | undefined;
  for (const raw of new Set(addresses)) {
    const ip = input.normalizeIp(raw) ?? raw;
    const floor = input.addressCheck(ip);
    if (floor !== undefined) {
      blocked.push(floor);
      continue;
    }
    survivor ??= ip;
    for (const kind of kinds) {
      const m = matchesAs(policy, kind, { host, ip, port });
      if (m.allowed) return { allowed: true, protocol: kind, host, ip, port, rule: m.rule };
    }
  }
  if (survivor === undefined) {
    const named = blocked.slice(0, MAX_NAMED_BLOCKED).join("; ");
    const more = blocked.length > MAX_NAMED_BLOCKED ? ` (and ${blocked.length - MAX_NAMED_BLOCKED} more)` : "";
    const reason = blocked.length === 0 ? `"${host}" resolves to no address` : `"${host}" resolves only to blocked addresses: ${named}${more}`;
    return deny(byHost ?? first, host, undefined, port, reason, blocked.length === 0 ? SocksReply.hostUnreachable : SocksReply.notAllowed, blocked.length === 0 ? 502 : 403);
  }
  return deny(first, host, survivor, port, policyReason(survivor), SocksReply.notAllowed, 403);
}

/**
 * matchPolicy for `kind`, except that "https" (which brings the SNI check) is only granted by an
 * https rule: tcp and cidr rules allow any bytes, so they are matched as "tcp".
 */
function matchesAs(policy: NetworkPolicyJson, kind: EgressKind, req: Omit<EgressRequest, "kind">): MatchResult {
  if (kind !== "https") return matchPolicy(policy, { kind, ...req });
  for (let i = 0; i < policy.rules.length; i++) {
    const rule = policy.rules[i];
    if (rule?.kind === "https" && matchPolicy({ ...policy, rules: [rule] }, { kind, ...req }).allowed) return { allowed: true, rule: i };
  }
  return { allowed: false, reason: `Denied https to "${req.host ?? req.ip ?? ""}" port ${req.port}: no https rule allows it` };
}

/** IP literal targets: floor first, then cidr rules only (no host is passed to the matcher). */
function decideAddress(input: DecideInput, ip: string): Decision {
  const protocol: EgressKind = input.mode === "http" ? "http" : "tcp";
  const floor = input.addressCheck(ip);
  if (floor !== undefined) {
    return deny(protocol, undefined, ip, input.port, `Denied ${protocol} to "${ip}" port ${input.port}: ${floor}`, SocksReply.notAllowed, 403);
  }
  const m = matchPolicy(input.policy, { kind: protocol, ip, port: input.port });
  if (!m.allowed) return deny(protocol, undefined, ip, input.port, m.reason, SocksReply.notAllowed, 403);
  return { allowed: true, protocol, ip, port: input.port, rule: m.rule };
}

function deny(
  protocol: EgressKind,
  host: string | undefined,
  ip: string | undefined,
  port: number,
  reason: string,
  socksReply: SocksReplyCode,
  httpStatus: 403 | 502 | 504,
): Decision {
  return {
    allowed: false,
    protocol,
    ...(host === undefined ? {} : { host }),
    ...(ip === undefined ? {} : { ip }),
    port,
    reason,
    socksReply,
    httpStatus,
  };
}
