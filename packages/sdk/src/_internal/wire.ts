/** The daemon's answer schemas (shared with the daemon through @mvm/protocol). */
import { z } from "zod";
import { ApiErrorBody, BundlePullInfo, BundlePushInfo, MAX_FORK_COUNT, ProgressEventSchema, SandboxInfo, SnapshotInfo, WarmPoolInfo } from "@mvm/protocol";

export {
  BuildStreamLine,
  CreateStreamLine,
  HealthInfoSchema,
  PingSchema,
  ImageInfoSchema,
  ImageInspectSchema,
  ImageListSchema,
  ProgressEventSchema,
  SandboxListSchema,
  WriteResultSchema,
  DirListing,
  ExecEvent,
  FileInfo,
  ProcessList,
  SandboxInfo,
  NetworkEventsPageSchema,
  SecretListSchema,
  SecretMetaSchema,
  SignedPlan,
  SnapshotInfo,
  SnapshotList,
  WarmPoolInfo,
  WarmPoolList,
  BundlePullInfo,
  BundlePushInfo,
} from "@mvm/protocol";

const StreamError = z.strictObject({ type: z.literal("error"), error: ApiErrorBody.shape.error });
const StreamProgress = z.strictObject({ type: z.literal("progress"), event: ProgressEventSchema });

/** Lines of the NDJSON answer to POST /v1/sandboxes/:id/snapshots. */
export const SnapshotStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), snapshot: SnapshotInfo }),
  StreamError,
]);

/** Lines of the NDJSON answer to POST /v1/sandboxes/:id/fork. */
export const ForkStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), sandboxes: z.array(SandboxInfo).min(1).max(MAX_FORK_COUNT) }),
  StreamError,
]);

/** Lines of the NDJSON answer to PUT /v1/pools. */
export const PoolStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), pool: WarmPoolInfo }),
  StreamError,
]);

/** Lines of the NDJSON answer to POST /v1/bundles/push. */
export const BundlePushStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), bundle: BundlePushInfo }),
  StreamError,
]);

/** Lines of the NDJSON answer to POST /v1/bundles/pull. */
export const BundlePullStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), bundle: BundlePullInfo }),
  StreamError,
]);
