/**
 * Warm pools on the API: sandboxes an engine keeps started ahead of demand, so that a create
 * matching one of them is served at once. Schemas only; the rules are in the engine
 * (capabilities/pools.ts) and docs/POOLS.md.
 *
 * A pool is named by the sandbox it keeps: the create request it starts its sandboxes with. A
 * later create whose resolved workload is the same (image digest, backend and tier, limits, /work
 * size, environment, egress policy) claims one: it is admitted under its own plan, gets its own
 * TTL, labels and command, and is never handed to anyone else. Requests with secrets, published
 * ports, a snapshot or a plan of their own cannot define a pool.
 */
import { z } from "zod";
import { BackendName, Sha256DigestSchema, Tier } from "./api-base.js";
import { CreateSandboxRequest, Resources } from "./api.js";

/** Most sandboxes one pool keeps warm. */
export const MAX_WARM_POOL_SIZE = 16;
/** Most pools one engine keeps. */
export const MAX_WARM_POOLS = 16;

/** Body of PUT /v1/pools: the sandbox to keep warm and how many. Size 0 removes the pool. */
export const WarmPoolRequest = z.strictObject({
  sandbox: CreateSandboxRequest,
  size: z.number().int().min(0).max(MAX_WARM_POOL_SIZE),
});
export type WarmPoolRequest = z.infer<typeof WarmPoolRequest>;

export const WarmPoolId = z.string().regex(/^pool_[0-9a-f]{16}$/);

/** A pool as the engine reports it. */
export const WarmPoolInfo = z.strictObject({
  /** `pool_` + 16 hex digits of the digest of the workload it keeps. */
  id: WarmPoolId,
  size: z.number().int().min(0).max(MAX_WARM_POOL_SIZE),
  /** Started and ready to be claimed. */
  ready: z.number().int().min(0).max(MAX_WARM_POOL_SIZE),
  /** Being started. */
  starting: z.number().int().min(0).max(MAX_WARM_POOL_SIZE),
  /** Claims served since the pool was set. */
  claimed: z.number().int().min(0),
  backend: BackendName,
  tier: Tier,
  image: z.strictObject({ ref: z.string().max(512), digest: Sha256DigestSchema }),
  resources: Resources,
  workMiB: z.number().int(),
  /** Why the last start failed, while the pool retries. */
  lastError: z.string().max(1024).optional(),
});
export type WarmPoolInfo = z.infer<typeof WarmPoolInfo>;

/** Answer of GET /v1/pools. */
export const WarmPoolList = z.strictObject({ pools: z.array(WarmPoolInfo).max(MAX_WARM_POOLS) });
