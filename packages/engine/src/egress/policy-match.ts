/**
 * Decide whether one outbound connection is allowed by a network policy. Pure: no DNS, no I/O.
 */
import {
  dnsNameProblem,
  ipAddressBytes,
  parseCidr,
  prefixMatches,
  type IpBytes,
  type NetworkPolicy,
  type NetworkPolicyJson,
  type NetworkRule,
} from "@mvm/protocol";

/** One connection attempt as the gateway sees it. */
export interface EgressRequest {
  readonly kind: "https" | "http" | "tcp";
  /** Requested name (SNI, Host header or CONNECT target), if any. */
  readonly host?: string;
  /** Resolved destination address, if known. */
  readonly ip?: string;
  readonly port: number;
}

export type MatchResult = { allowed: true; rule: number } | { allowed: false; reason: string };

/** Lower-case and drop one trailing dot. */
export function normalizeHost(host: string): string {
  const lower = host.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/** Whether normalized `host` matches a rule's host pattern (exact or `*.suffix`). */
export function hostMatches(pattern: string, host: string): boolean {
  if (pattern.startsWith("*.")) {
    const suffix = pattern.slice(1); // ".example.com"
    return host.length > suffix.length && host.endsWith(suffix);
  }
  return host === pattern;
}

/** IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4; anything else is returned as is. */
function unmap(ip: IpBytes): IpBytes {
  if (ip.family !== 6) return ip;
  const b = ip.bytes;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return ip;
  if (b[10] !== 0xff || b[11] !== 0xff) return ip;
  return { family: 4, bytes: b.slice(12) };
}

function ruleMatches(rule: NetworkRule, req: EgressRequest, host: string | undefined, ip: IpBytes | undefined): boolean {
  switch (rule.kind) {
    case "https":
      return req.kind === "https" && req.port === 443 && host !== undefined && hostMatches(rule.host, host);
    case "http":
      return req.kind === "http" && req.port === 80 && host !== undefined && hostMatches(rule.host, host);
    case "tcp":
      return req.port === rule.port && host !== undefined && hostMatches(rule.host, host);
    case "cidr": {
      if (ip === undefined) return false;
      if (rule.ports !== "any" && !rule.ports.includes(req.port)) return false;
      const parsed = parseCidr(rule.cidr);
      if (!parsed.ok) return false;
      const block = unmap(parsed.value);
      // A mapped block (::ffff:0:0/96 and longer) is compared as IPv4 with 96 fewer bits.
      const bits = block.family === 4 && parsed.value.family === 6 ? parsed.value.prefixBits - 96 : parsed.value.prefixBits;
      if (block.family !== ip.family || bits < 0) return false;
      return prefixMatches(ip.bytes, block.bytes, bits);
    }
  }
}

function describe(req: EgressRequest): string {
  const target = req.host ?? req.ip ?? "(no destination)";
  const via = req.host !== undefined && req.ip !== undefined ? ` (${req.ip})` : "";
  return `${req.kind} to "${target}"${via} port ${req.port}`;
}

/**
 * First rule of `policy` that allows `request`, or a denial naming what was asked. Host rules
 * match `request.host` (when it is a valid DNS name); cidr rules match `request.ip`. Anything unmatched is denied.
 */
export function matchPolicy(policy: NetworkPolicy | NetworkPolicyJson, request: EgressRequest): MatchResult {
  if (!Number.isInteger(request.port) || request.port < 1 || request.port > 65535) {
    return { allowed: false, reason: `Denied ${describe(request)}: port out of range` };
  }
  // A name that is not a valid DNS name (empty labels, IP literal, non-ASCII) matches no host rule.
  const normalized = request.host === undefined ? undefined : normalizeHost(request.host);
  const host = normalized !== undefined && dnsNameProblem(normalized) === undefined ? normalized : undefined;
  let ip: IpBytes | undefined;
  if (request.ip !== undefined) {
    const parsed = ipAddressBytes(request.ip);
    if (parsed === undefined) return { allowed: false, reason: `Denied ${describe(request)}: ip is not an address` };
    ip = unmap(parsed);
  }
  const rules = policy.rules;
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i];
    if (rule !== undefined && ruleMatches(rule, request, host, ip)) return { allowed: true, rule: i };
  }
  return { allowed: false, reason: `Denied ${describe(request)}: no rule allows it` };
}
