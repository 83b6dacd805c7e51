/**
 * Warm pools: sandboxes started ahead of demand, each handed to exactly one later create of the
 * same workload.
 *
 * A pool is defined by a create request. The engine resolves it once (backend and probe, image
 * digest, limits after defaults, environment, egress policy) into a key, and keeps `size`
 * sandboxes of it running, each admitted under a plan of its own (intent `pool:warm`) and warmed
 * up (its agent has answered a request, so its session is loaded). A create whose resolved
 * workload has the same key claims one instead of starting a sandbox: the claim is admitted under
 * the create's own plan and recorded (`sandbox.claimed`), the sandbox takes the create's labels,
 * TTL and command, and it leaves the pool for good. Until claimed, a pooled sandbox is invisible:
 * not listed, and every call naming it is NotFound. The pool refills in the background; a start
 * that fails is retried with a growing delay, and the failure is reported on the pool.
 *
 * Only workloads that are the same whenever they start can be pooled: no secrets (resolved at
 * start), no published ports (host ports), no snapshot, no plan of their own.
 */
import {
  InvalidArgumentError,
  MAX_WARM_POOLS,
  WarmPoolRequest,
  canonicalJson,
  type CallOptions,
  type CreateSandboxRequest,
  type WarmPoolInfo,
  type WorkloadIR,
} from "@mvm/protocol";
import type { Backend, ProbeResult } from "../backends/types.js";
import { callSignal } from "../_internal/signals.js";
import { sha256Hex } from "../audit/entry.js";
import { assertOpen, parse, type EngineCore } from "./core.js";

/** TTL of a pooled sandbox before it is claimed; one that reaches it is replaced. */
export const WARM_MEMBER_TTL_SECONDS = 3600;
/** Delay before retrying a failed start, doubled after each failure up to the maximum. */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 60_000;

export interface WarmPool {
  readonly id: string;
  readonly key: string;
  readonly request: CreateSandboxRequest;
  size: number;
  /** Ready sandboxes, oldest first. */
  readonly ready: string[];
  starting: number;
  claimed: number;
  readonly info: Omit<WarmPoolInfo, "size" | "ready" | "starting" | "claimed" | "lastError">;
  lastError: string | undefined;
  retryMs: number;
  retryTimer: NodeJS.Timeout | undefined;
  /** Starts in flight, awaited when the engine closes. */
  readonly inflight: Set<Promise<void>>;
  /** Starts one sandbox for the pool and resolves with its id once it is warm. */
  readonly start: (pool: WarmPool) => Promise<string>;
}

/**
 * What decides whether two creates start the same sandbox: everything but command, intent, TTL and
 * labels, and whether it is a function's (its sandboxes have the call wrapper pre-started).
 */
export function poolKey(ir: WorkloadIR, backend: Backend, workMiB: number): string | undefined {
  if (ir.secrets.length > 0 || ir.ports.length > 0 || ir.fromSnapshot !== undefined) return undefined;
  return sha256Hex(
    canonicalJson({
      backend: backend.name,
      tier: ir.requiredTier,
      imageDigest: ir.imageDigest,
      envSha256: ir.envSha256,
      resources: ir.resources,
      network: ir.network,
      workMiB,
      // A function's pool pre-starts the call wrapper in each sandbox (sandboxes.ts): only creates
      // of a function claim one, so no other workload finds a wrapper it did not start.
      ...(ir.function !== undefined ? { prestart: "fn-wrapper" } : {}),
    }),
  );
}

/** What a create hands the pool capability: its resolved workload. */
export interface Resolved {
  readonly ir: WorkloadIR;
  readonly backend: Backend;
  readonly probe: ProbeResult;
  readonly workMiB: number;
  readonly imageRef: string;
}

/**
 * Sets (or with size 0 removes) the pool of `request.sandbox`. Resolving the workload may build
 * its image. Returns the pool as it is now (its sandboxes start in the background).
 */
export async function setWarmPool(
  core: EngineCore,
  request: WarmPoolRequest,
  resolve: (req: CreateSandboxRequest, options: CallOptions) => Promise<Resolved>,
  startMember: (pool: WarmPool) => Promise<string>,
  options: CallOptions = {},
): Promise<WarmPoolInfo> {
  assertOpen(core);
  const req = parse(WarmPoolRequest, request, "warm pool");
  const sandbox = req.sandbox;
  const refuse = (what: string): never => {
    throw new InvalidArgumentError(`A warm pool cannot keep sandboxes with ${what}`, {
      hint: "Pool the sandbox without it; creates with it start their own sandbox",
    });
  };
  if (sandbox.secrets !== undefined && Object.keys(sandbox.secrets).length > 0) refuse("secrets (they are resolved when a sandbox starts)");
  if (sandbox.ports !== undefined && sandbox.ports.length > 0) refuse("published ports");
  if (sandbox.plan !== undefined) refuse("a plan of its own (each claim is admitted under the claimant's plan)");
  if (sandbox.fromSnapshot !== undefined) refuse("a snapshot to start from");
  if (sandbox.onTtl === "pause") refuse('onTtl "pause" (a claim brings its own)');
  const resolved = await resolve(sandbox, options);
  callSignal(options)?.throwIfAborted();
  const key = poolKey(resolved.ir, resolved.backend, resolved.workMiB)!;
  let pool = core.pools.get(key);
  if (req.size === 0) {
    if (pool !== undefined) await removePool(core, pool);
    return infoOf(pool ?? newPool(key, sandbox, resolved, startMember), 0);
  }
  if (pool === undefined) {
    if (core.pools.size >= MAX_WARM_POOLS) {
      throw new InvalidArgumentError(`This engine already keeps ${MAX_WARM_POOLS} warm pools`, { hint: "Remove one (size 0) first" });
    }
    pool = newPool(key, sandbox, resolved, startMember);
    core.pools.set(key, pool);
  }
  pool.size = req.size;
  // A smaller pool lets its extra ready sandboxes go.
  while (pool.ready.length > pool.size) void core.warm.get(pool.ready.shift()!)?.stop("killed").catch(() => {});
  refill(core, pool);
  return infoOf(pool);
}

export function listWarmPools(core: EngineCore): WarmPoolInfo[] {
  return [...core.pools.values()].map((p) => infoOf(p));
}

function newPool(key: string, request: CreateSandboxRequest, r: Resolved, start: WarmPool["start"]): WarmPool {
  const id = `pool_${key.slice(0, 16)}`;
  const { workMiB: _w, ...resources } = r.ir.resources;
  return {
    id,
    key,
    request: { ...request },
    size: 0,
    ready: [],
    starting: 0,
    claimed: 0,
    info: {
      id,
      backend: r.backend.name,
      tier: r.probe.tier,
      image: { ref: r.imageRef, digest: r.ir.imageDigest },
      resources,
      workMiB: r.workMiB,
    },
    lastError: undefined,
    retryMs: RETRY_FIRST_MS,
    retryTimer: undefined,
    inflight: new Set(),
    start,
  };
}

function infoOf(pool: WarmPool, size = pool.size): WarmPoolInfo {
  return {
    ...pool.info,
    size,
    ready: pool.ready.length,
    starting: pool.starting,
    claimed: pool.claimed,
    ...(pool.lastError !== undefined ? { lastError: pool.lastError.slice(0, 1024) } : {}),
  };
}

async function removePool(core: EngineCore, pool: WarmPool): Promise<void> {
  core.pools.delete(pool.key);
  pool.size = 0;
  clearTimeout(pool.retryTimer);
  await Promise.all(pool.ready.splice(0).map((id) => core.warm.get(id)?.stop("killed").catch(() => {})));
}

/** Starts sandboxes until the pool has `size` ready or starting; failures back off and retry. */
export function refill(core: EngineCore, pool: WarmPool): void {
  if (core.closing || pool.retryTimer !== undefined) return;
  while (core.pools.get(pool.key) === pool && pool.ready.length + pool.starting < pool.size) {
    pool.starting++;
    const started: Promise<void> = pool.start(pool).then(
      (id) => {
        pool.starting--;
        pool.lastError = undefined;
        pool.retryMs = RETRY_FIRST_MS;
        if (core.closing || core.pools.get(pool.key) !== pool || pool.ready.length >= pool.size) {
          void core.warm.get(id)?.stop("killed").catch(() => {});
          return;
        }
        pool.ready.push(id);
      },
      (err: unknown) => {
        pool.starting--;
        pool.lastError = err instanceof Error ? err.message : String(err);
        if (core.closing || core.pools.get(pool.key) !== pool) return;
        pool.retryTimer = setTimeout(() => {
          pool.retryTimer = undefined;
          refill(core, pool);
        }, pool.retryMs);
        pool.retryTimer.unref();
        pool.retryMs = Math.min(RETRY_MAX_MS, pool.retryMs * 2);
      },
    );
    pool.inflight.add(started);
    void started.finally(() => pool.inflight.delete(started));
  }
}

/** At engine close: no more starts or retries, and the starts in flight have settled (their sandboxes stopped). */
export async function closePools(core: EngineCore): Promise<void> {
  const pools = [...core.pools.values()];
  core.pools.clear();
  for (const pool of pools) clearTimeout(pool.retryTimer);
  await Promise.allSettled(pools.flatMap((p) => [...p.inflight]));
}

/**
 * Takes a ready sandbox of the pool with `key` for a create, if there is one: it leaves the
 * pool's ready list at once, so no other create can take it. The caller finishes the claim
 * (moving it from `core.warm` to `core.live`) or stops it.
 */
export function takeWarm(core: EngineCore, key: string | undefined): { pool: WarmPool; id: string } | undefined {
  const pool = key === undefined ? undefined : core.pools.get(key);
  if (pool === undefined) return undefined;
  while (pool.ready.length > 0) {
    const id = pool.ready.shift()!;
    if (core.warm.get(id)?.info.state !== "running") continue;
    pool.claimed++;
    refill(core, pool);
    return { pool, id };
  }
  return undefined;
}

/** A pooled sandbox ended before it was claimed (its TTL, a crash): the pool replaces it. */
export function memberEnded(core: EngineCore, id: string): void {
  for (const pool of core.pools.values()) {
    const at = pool.ready.indexOf(id);
    if (at >= 0) {
      pool.ready.splice(at, 1);
      refill(core, pool);
    }
  }
}
