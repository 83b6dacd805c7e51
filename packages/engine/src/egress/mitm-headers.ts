/**
 * Header rewriting for intercepted HTTP/1.1: which headers stop at the gateway, how placeholders
 * become secret values on the way out, and how the request's Host is checked. Pure functions over
 * `rawHeaders`-style flat arrays (`[name, value, name, value, ...]`).
 */

/** One secret as the interceptor sees it. `value` never leaves the host except to its bound upstream. */
export interface InterceptSecret {
  readonly name: string;
  readonly placeholder: string;
  readonly value: string;
}

/** Headers that describe one hop, not the message; the gateway never forwards them. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "expect",
  "http2-settings",
]);

/** The header names the `Connection` headers of `raw` list as hop-by-hop (lowercase). */
function connectionTokens(raw: readonly string[]): Set<string> {
  const tokens = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() !== "connection") continue;
    for (const token of (raw[i + 1] ?? "").split(",")) {
      const name = token.trim().toLowerCase();
      if (name.length > 0) tokens.add(name);
    }
  }
  return tokens;
}

/** Whether a header (lowercase name) stops at the gateway. */
export function isHopByHop(lowerName: string, listed: ReadonlySet<string>): boolean {
  return HOP_BY_HOP.has(lowerName) || lowerName.startsWith("proxy-") || listed.has(lowerName);
}

/** A request's headers ready to go upstream, and the names of the secrets they now carry. */
export interface RewrittenRequest {
  readonly headers: string[];
  readonly used: readonly string[];
}

/**
 * Drops hop-by-hop and `proxy-*` headers, replaces every secret's placeholder by its value in every
 * header value, and when any secret went in, asks for an unencoded response (`accept-encoding:
 * identity`) so the response can be scanned for the secret.
 */
export function rewriteRequestHeaders(raw: readonly string[], secrets: readonly InterceptSecret[]): RewrittenRequest {
  const listed = connectionTokens(raw);
  const used = new Set<string>();
  const headers: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? "";
    const lower = name.toLowerCase();
    if (isHopByHop(lower, listed)) continue;
    let value = raw[i + 1] ?? "";
    for (const secret of secrets) {
      if (secret.placeholder.length === 0 || !value.includes(secret.placeholder)) continue;
      value = value.split(secret.placeholder).join(secret.value);
      used.add(secret.name);
    }
    headers.push(name, value);
  }
  if (used.size === 0) return { headers, used: [] };
  const identity: string[] = [];
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i]?.toLowerCase() !== "accept-encoding") identity.push(headers[i] ?? "", headers[i + 1] ?? "");
  }
  identity.push("accept-encoding", "identity");
  return { headers: identity, used: [...used] };
}

/**
 * A response's headers ready to go back to the workload: hop-by-hop headers dropped, every value
 * passed through `redact`, and `content-length` dropped when `dropLength` (a redacted body may
 * change length, so it goes back chunked).
 */
export function rewriteResponseHeaders(raw: readonly string[], redact: (value: string) => string, dropLength: boolean): string[] {
  const listed = connectionTokens(raw);
  const headers: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? "";
    const lower = name.toLowerCase();
    if (isHopByHop(lower, listed) || (dropLength && lower === "content-length")) continue;
    headers.push(redact(name), redact(raw[i + 1] ?? ""));
  }
  return headers;
}

/**
 * Whether every `Host` header of a request names `host` (optionally with `:port`), so a request
 * carrying a secret cannot ask the upstream for a different virtual host. Exactly one is required.
 */
export function hostHeaderMatches(raw: readonly string[], host: string, port: number): boolean {
  let seen = 0;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() !== "host") continue;
    seen++;
    const value = (raw[i + 1] ?? "").trim().toLowerCase().replace(/\.$/, "");
    const bare = value.endsWith(`:${port}`) ? value.slice(0, -`:${port}`.length).replace(/\.$/, "") : value;
    if (bare !== host) return false;
  }
  return seen === 1;
}

/** Whether a response body is encoded in a way a byte scan cannot see through. */
export function isEncoded(raw: readonly string[]): boolean {
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() !== "content-encoding") continue;
    const codings = (raw[i + 1] ?? "").split(",").map((c) => c.trim().toLowerCase());
    if (codings.some((c) => c !== "" && c !== "identity")) return true;
  }
  return false;
}
