/**
 * The gateway's own DNS resolver. Names a sandbox asks for are resolved on the host with direct
 * DNS queries (c-ares through `node:dns/promises` `Resolver`), never `getaddrinfo`: no
 * /etc/hosts, no nsswitch, no search domains.
 */
import { Resolver } from "node:dns/promises";
import type { RecordWithTtl } from "node:dns";
import { isIP } from "node:net";
import { AbortedError, InvalidArgumentError, dnsNameProblem } from "@mvm/protocol";
import { normalizeIp } from "./address-floor.js";

/** Most addresses one resolution keeps. */
export const MAX_RESOLVED_ADDRESSES = 32;
/** Most characters of a hostile name quoted back in a message. */
const MAX_QUOTED_CHARS = 260;
const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_TRIES = 2;
const MAX_TRIES = 10;
const MAX_SERVERS = 16;

/** Options of {@link EgressResolver}. */
export interface ResolverOptions {
  /**
   * DNS servers to ask, each `"ip"`, `"ip:port"` or `"[ipv6]:port"`.
   * @default the system's servers (read from /etc/resolv.conf by c-ares on each resolution)
   */
  readonly servers?: readonly string[];
  /**
   * Longest time a positive answer is reused, in seconds (the records' TTL when shorter); 0 turns
   * the cache off. Answers are only reused within the `cacheScope` a caller names (the gateway uses
   * the sandbox id, so one sandbox cannot time another's lookups). @default 30
   */
  readonly maxCacheSeconds?: number;
  /** Most cached answers. @default 4096 */
  readonly cacheEntries?: number;
  /** Deadline of one whole resolution (both queries, every try), in milliseconds. @default 5000 */
  readonly timeoutMs?: number;
  /** Attempts per server before a query gives up. @default 2 */
  readonly tries?: number;
}

/** The addresses a name resolved to. */
export interface Resolved {
  /** All A then all AAAA addresses, normalized, deduplicated, at most 32. */
  readonly addresses: readonly string[];
}

/** Why a resolution failed: the name does not exist or has no address, the deadline passed, or anything else. */
export type ResolveErrorCode = "not-found" | "timeout" | "failed";

/** A name could not be resolved. `code` says why. */
export class ResolveError extends Error {
  override readonly name = "ResolveError";
  readonly code: ResolveErrorCode;
  /** The name as it was asked for (cut to a bounded length). */
  readonly host: string;

  constructor(code: ResolveErrorCode, host: string, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.host = host;
  }
}

const quote = (text: string): string =>
  JSON.stringify(text.length > MAX_QUOTED_CHARS ? `${text.slice(0, MAX_QUOTED_CHARS)}...` : text);

/** Why `server` is not `ip`, `ip:port` or `[ipv6]:port`, or undefined when it is one. */
export function dnsServerProblem(server: string): string | undefined {
  if (isIP(server) !== 0) return undefined;
  const bracketed = /^\[([^\]]+)\]:([0-9]{1,5})$/.exec(server);
  const plain = /^([0-9.]+):([0-9]{1,5})$/.exec(server);
  const match = bracketed ?? plain;
  if (match === null) return 'must be "ip", "ip:port" or "[ipv6]:port"';
  const [, ip = "", port = ""] = match;
  if (isIP(ip) !== (bracketed === null ? 4 : 6)) return `"${ip}" is not an IPv${bracketed === null ? 4 : 6} address`;
  const portNumber = Number(port);
  if (portNumber < 1 || portNumber > 65535) return "port must be 1 to 65535";
  return undefined;
}

/**
 * Resolves host names for the egress gateway with direct DNS queries to fixed servers.
 *
 * @example
 * const resolver = new EgressResolver({ servers: ["1.1.1.1", "[2606:4700:4700::1111]:53"] });
 * const { addresses } = await resolver.resolve("example.com", AbortSignal.timeout(10_000));
 */
export class EgressResolver {
  readonly #servers: readonly string[] | undefined;
  readonly #timeoutMs: number;
  readonly #tries: number;
  /** One c-ares channel per resolution in flight, so one abort cancels only its own queries. */
  readonly #active = new Set<Resolver>();
  /** Positive answers by scope and name, kept for their TTL (at most maxCacheSeconds). */
  readonly #cache = new Map<string, { addresses: readonly string[]; expiresAt: number }>();
  readonly #maxCacheMs: number;
  readonly #cacheEntries: number;

  constructor(options: ResolverOptions = {}) {
    const { servers, timeoutMs = DEFAULT_TIMEOUT_MS, tries = DEFAULT_TRIES, maxCacheSeconds = 30, cacheEntries = 4096 } = options;
    if (!Number.isInteger(maxCacheSeconds) || maxCacheSeconds < 0 || !Number.isInteger(cacheEntries) || cacheEntries < 1) {
      throw new InvalidArgumentError(`Invalid DNS cache settings: maxCacheSeconds ${maxCacheSeconds}, cacheEntries ${cacheEntries}`);
    }
    this.#maxCacheMs = maxCacheSeconds * 1000;
    this.#cacheEntries = cacheEntries;
    if (servers !== undefined) {
      if (servers.length < 1 || servers.length > MAX_SERVERS) {
        throw new InvalidArgumentError(`Invalid DNS servers: need 1 to ${MAX_SERVERS}, got ${servers.length}`);
      }
      for (const server of servers) {
        const problem = dnsServerProblem(server);
        if (problem !== undefined) throw new InvalidArgumentError(`Invalid DNS server ${quote(server)}: ${problem}`);
      }
      this.#servers = [...servers];
    }
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 2 ** 31 - 1) {
      throw new InvalidArgumentError(`Invalid DNS timeout "${timeoutMs}": must be a positive integer of milliseconds`);
    }
    if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) {
      throw new InvalidArgumentError(`Invalid DNS tries "${tries}": must be an integer 1 to ${MAX_TRIES}`);
    }
    this.#timeoutMs = timeoutMs;
    this.#tries = tries;
  }

  /**
   * Resolves A and AAAA records of `name` in parallel. An IP literal is returned unchanged
   * without any query. One trailing dot and upper case are accepted.
   *
   * @throws {ResolveError} `not-found` when the name does not exist or has neither A nor AAAA
   *   records, `timeout` when `timeoutMs` passes, `failed` otherwise (server failure, refused,
   *   invalid name, {@link cancel}).
   * @throws {AbortedError} when `signal` aborts.
   */
  async resolve(name: string, signal?: AbortSignal, options: { cacheScope?: string } = {}): Promise<Resolved> {
    if (isIP(name) !== 0) return { addresses: [name] };
    const host = (name.endsWith(".") ? name.slice(0, -1) : name).toLowerCase();
    const problem = dnsNameProblem(host);
    if (problem !== undefined) throw new ResolveError("failed", host, `Cannot resolve ${quote(name)}: not a valid host name (${problem})`);
    throwIfAborted(host, signal);
    const cacheKey = options.cacheScope === undefined || this.#maxCacheMs === 0 ? undefined : `${options.cacheScope}\0${host}`;
    if (cacheKey !== undefined) {
      const hit = this.#cache.get(cacheKey);
      if (hit !== undefined && hit.expiresAt > Date.now()) return { addresses: hit.addresses };
      this.#cache.delete(cacheKey);
    }

    const resolver = new Resolver({ timeout: Math.max(1, Math.floor(this.#timeoutMs / this.#tries)), tries: this.#tries });
    if (this.#servers !== undefined) resolver.setServers(this.#servers);
    let timedOut = false;
    const onAbort = (): void => resolver.cancel();
    const timer = setTimeout(() => {
      timedOut = true;
      resolver.cancel();
    }, this.#timeoutMs);
    signal?.addEventListener("abort", onAbort, { once: true });
    this.#active.add(resolver);
    let results: [PromiseSettledResult<RecordWithTtl[]>, PromiseSettledResult<RecordWithTtl[]>];
    try {
      results = await Promise.allSettled([resolver.resolve4(host, { ttl: true }), resolver.resolve6(host, { ttl: true })]);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      this.#active.delete(resolver);
    }
    throwIfAborted(host, signal);
    if (timedOut) throw new ResolveError("timeout", host, `Cannot resolve "${host}": no answer within ${this.#timeoutMs} ms`);

    const addresses = new Set<string>();
    let ttlSeconds = Number.POSITIVE_INFINITY;
    for (const result of results) {
      if (result.status !== "fulfilled") continue;
      for (const record of result.value) {
        const ip = normalizeIp(record.address);
        if (ip !== undefined && addresses.size < MAX_RESOLVED_ADDRESSES) addresses.add(ip);
        ttlSeconds = Math.min(ttlSeconds, record.ttl);
      }
    }
    if (addresses.size === 0) throw classify(host, results);
    const answer = [...addresses];
    const keepMs = Math.min(this.#maxCacheMs, ttlSeconds * 1000);
    if (cacheKey !== undefined && keepMs > 0) {
      if (this.#cache.size >= this.#cacheEntries) this.#cache.delete(this.#cache.keys().next().value!);
      this.#cache.set(cacheKey, { addresses: answer, expiresAt: Date.now() + keepMs });
    }
    return { addresses: answer };
  }

  /** Cancels every resolution in flight; each rejects with a `failed` {@link ResolveError}. */
  cancel(): void {
    for (const resolver of this.#active) resolver.cancel();
  }
}

function throwIfAborted(host: string, signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(`Resolving "${host}" was aborted`, { cause: signal.reason });
}

/** The error for a resolution that produced no address. */
function classify(host: string, results: readonly PromiseSettledResult<unknown>[]): ResolveError {
  const failures = results.flatMap((r) => (r.status === "rejected" ? [r.reason as unknown] : []));
  const codes = failures.map((e) => (e as { code?: unknown } | null)?.code);
  const cause = failures[0];
  const options = cause === undefined ? {} : { cause };
  if (codes.includes("ENOTFOUND")) return new ResolveError("not-found", host, `Cannot resolve "${host}": name not found`, options);
  if (codes.includes("ETIMEOUT")) return new ResolveError("timeout", host, `Cannot resolve "${host}": no answer from the DNS server`, options);
  if (codes.every((c) => c === "ENODATA")) return new ResolveError("not-found", host, `Cannot resolve "${host}": no A or AAAA records`, options);
  if (codes.includes("ECANCELLED")) return new ResolveError("failed", host, `Cannot resolve "${host}": resolution cancelled`, options);
  const code = codes.find((c) => c !== "ENODATA");
  return new ResolveError("failed", host, `Cannot resolve "${host}": DNS error ${typeof code === "string" ? code : "unknown"}`, options);
}
