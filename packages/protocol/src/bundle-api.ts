/**
 * Bundles on the API: push a snapshot (with its image) or an image to a location, pull one by its
 * digest. Schemas only; the format, the transports and what is verified where are in the engine
 * (engine/src/bundle/) and docs/BUNDLES.md.
 *
 * Locations: `file:///absolute/dir`, `oci://host[:port]/repository[:tag]` (https),
 * `oci+http://host:port/repository` (loopback only) and, for pulls only, `https://host/path`.
 * A pull source ends in `@sha256:<64 hex>`, the bundle digest a push reports.
 */
import { z } from "zod";
import { Sha256DigestSchema } from "./api-base.js";
import { SnapshotInfo, SnapshotRetention } from "./snapshot-api.js";

/** Longest bundle location accepted. */
export const MAX_BUNDLE_URI_CHARS = 2048;

/** Body of POST /v1/bundles/push. */
export const PushBundleRequest = z.strictObject({
  /** A snapshot (`snap_…`, or the digest of one) or an image (a reference or digest). */
  source: z.string().min(1).max(512),
  /** Where to: `file:///dir`, `oci://host/repository[:tag]`, `oci+http://127.0.0.1:PORT/repository`. */
  destination: z.string().min(1).max(MAX_BUNDLE_URI_CHARS),
});
export type PushBundleRequest = z.infer<typeof PushBundleRequest>;

/** What a push made. */
export const BundlePushInfo = z.strictObject({
  /** `sha256:` of bundle.json: what a pull is pinned to. */
  digest: Sha256DigestSchema,
  /** The pull source: the location and `@sha256:…`. */
  uri: z.string().max(MAX_BUNDLE_URI_CHARS + 80),
  kind: z.enum(["snapshot", "image"]),
  /** Bytes written: bundle.json, index and packs. */
  bytes: z.number().int().min(0),
  packs: z.number().int().min(0),
  chunks: z.number().int().min(0),
});
export type BundlePushInfo = z.infer<typeof BundlePushInfo>;

/** Body of POST /v1/bundles/pull. */
export const PullBundleRequest = z.strictObject({
  /** `LOCATION@sha256:<64 hex>`. */
  source: z.string().min(1).max(MAX_BUNDLE_URI_CHARS + 80),
  /** How long a pulled snapshot is kept; required for snapshot bundles. */
  retention: SnapshotRetention.optional(),
});
export type PullBundleRequest = z.infer<typeof PullBundleRequest>;

/** What a pull stored. */
export const BundlePullInfo = z.strictObject({
  digest: Sha256DigestSchema,
  kind: z.enum(["snapshot", "image"]),
  image: z.strictObject({ digest: Sha256DigestSchema, refs: z.array(z.string().max(512)).max(1024) }),
  /** The snapshot made on this host (snapshot bundles). */
  snapshot: SnapshotInfo.optional(),
  /** Bytes fetched: bundle.json, index and the packs that held missing chunks. */
  fetchedBytes: z.number().int().min(0),
  packsFetched: z.number().int().min(0),
  packs: z.number().int().min(0),
  /** Chunks already on this host (re-verified), not fetched. */
  chunksReused: z.number().int().min(0),
});
export type BundlePullInfo = z.infer<typeof BundlePullInfo>;
