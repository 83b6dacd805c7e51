/**
 * Snapshots on the API: what a snapshot is called, how long it is kept, what the caller asks for
 * when taking one, forking a sandbox, and what the engine answers. Schemas only.
 *
 * A snapshot is named two ways: its id (`snap_` + 20 base32 characters, given by the engine that
 * took it) and its digest (`sha256:` of its manifest's canonical JSON, which names every chunk
 * of its content). Either may be passed wherever a snapshot is named.
 */
import { z } from "zod";
import { Sha256DigestSchema, Tier } from "./api-base.js";

export const SnapshotIdSchema = z.string().regex(/^snap_[a-z2-7]{20}$/);
export type SnapshotId = string & { readonly __brand: "SnapshotId" };

/** A snapshot named by id or digest. */
export const SnapshotRefSchema = z.union([SnapshotIdSchema, Sha256DigestSchema]);

/** Longest a snapshot may be kept by TTL, seconds: 90 days. */
export const MAX_SNAPSHOT_TTL_SECONDS = 90 * 24 * 3600;
/** Most sandboxes one fork call starts. */
export const MAX_FORK_COUNT = 16;

/**
 * How long a snapshot is kept. Always explicit: `{ ttlSeconds }` removes it that long after it
 * was taken; `{ manual: true }` keeps it until it is deleted.
 */
export const SnapshotRetention = z.union([
  z.strictObject({ ttlSeconds: z.number().int().min(60).max(MAX_SNAPSHOT_TTL_SECONDS) }),
  z.strictObject({ manual: z.literal(true) }),
]);
export type SnapshotRetention = z.infer<typeof SnapshotRetention>;

/** Body of POST /v1/sandboxes/:id/snapshots. */
export const SnapshotApiRequest = z.strictObject({
  retention: SnapshotRetention,
  /**
   * Capture process memory too (the VM tier's default, and all it supports). `false` captures
   * the filesystem state only (/work and /tmp; the container tier's default, and all it supports).
   * A request the sandbox's tier cannot honour is refused with UNSUPPORTED_CAPABILITY.
   */
  memory: z.boolean().optional(),
  /**
   * Allow a snapshot of a sandbox that was given secrets in its environment (`posture: "env"`):
   * their values are then in the snapshot. Mediated secrets are placeholders and need no consent.
   */
  includeEnvSecrets: z.boolean().optional(),
  /** At most 31 labels (the engine keeps one of its own); keys beginning `mvm/` are the engine's. */
  labels: z
    .record(
      z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/).refine((k) => !k.startsWith("mvm/"), "keys beginning mvm/ are reserved for the engine"),
      z.string().max(256),
    )
    .refine((l) => Object.keys(l).length <= 31, "at most 31 labels")
    .optional(),
});
export type SnapshotApiRequest = z.infer<typeof SnapshotApiRequest>;

/** Body of POST /v1/sandboxes/:id/fork. */
export const ForkApiRequest = z.strictObject({
  /** How many sandboxes to start from the sandbox's current state. @default 1 */
  count: z.number().int().min(1).max(MAX_FORK_COUNT).optional(),
});
export type ForkApiRequest = z.infer<typeof ForkApiRequest>;

const PartSize = z.strictObject({
  /** Size of the part as restored, bytes. */
  bytes: z.number().int().min(0),
  /** Bytes actually stored (zero chunks elided, before dedup with other snapshots). */
  storedBytes: z.number().int().min(0),
  chunks: z.number().int().min(0),
  zeroChunks: z.number().int().min(0),
});

export const SnapshotInfo = z.strictObject({
  id: SnapshotIdSchema,
  digest: Sha256DigestSchema,
  createdAt: z.string().max(64),
  /** When retention removes it; absent for `{ manual: true }`. */
  expiresAt: z.string().max(64).optional(),
  retention: SnapshotRetention,
  tier: Tier,
  /** Whether process memory is in it (restores continue running processes). */
  memory: z.boolean(),
  /** The sandbox it was taken from. */
  source: z.string().max(64),
  image: z.strictObject({ digest: Sha256DigestSchema }),
  sizes: z.strictObject({
    ram: PartSize.optional(),
    device: PartSize.optional(),
    work: PartSize.optional(),
    tmp: PartSize.optional(),
  }),
  labels: z.record(z.string().max(64), z.string().max(256)),
});
export type SnapshotInfo = z.infer<typeof SnapshotInfo>;

export const SnapshotList = z.strictObject({ snapshots: z.array(SnapshotInfo).max(100_000) });
