/**
 * Schemas of the daemon's answers that the engine API otherwise describes only as TypeScript
 * types (health, images, progress, list envelopes, NDJSON stream lines). The SDK's daemon client
 * validates every answer with them.
 */
import { z } from "zod";
import { ApiErrorBody, BackendName, SandboxInfo, Sha256DigestSchema, Tier } from "./api.js";

export const ProgressEventSchema = z.strictObject({
  phase: z.string().max(64),
  message: z.string().max(4096),
  fraction: z.number().min(0).max(1).optional(),
});

const BackendReportSchema = z.strictObject({
  backend: BackendName,
  tier: Tier,
  usable: z.boolean(),
  checks: z
    .array(
      z.strictObject({
        name: z.string().max(64),
        ok: z.boolean(),
        detail: z.string().max(4096),
        hint: z.string().max(4096).optional(),
      }),
    )
    .max(256),
  enforceable: z.strictObject({ memory: z.boolean(), pids: z.boolean(), cpu: z.boolean() }),
});

export const HealthInfoSchema = z.strictObject({
  version: z.string().max(64),
  defaultBackend: BackendName.nullable(),
  defaultReason: z.string().max(4096).optional(),
  backends: z.array(BackendReportSchema).max(16),
});

export const ImageInfoSchema = z.strictObject({
  digest: Sha256DigestSchema,
  refs: z.array(z.string().max(512)).max(4096),
  sizeBytes: z.number().int().min(0),
  createdAt: z.string().max(64),
});

export const SandboxListSchema = z.strictObject({ sandboxes: z.array(SandboxInfo).max(100_000) });
export const ImageListSchema = z.strictObject({ images: z.array(ImageInfoSchema).max(100_000) });
export const WriteResultSchema = z.strictObject({ bytes: z.number().int().min(0) });

const StreamError = z.strictObject({ type: z.literal("error"), error: ApiErrorBody.shape.error });
const StreamProgress = z.strictObject({ type: z.literal("progress"), event: ProgressEventSchema });

/** Lines of the NDJSON answer to POST /v1/sandboxes. */
export const CreateStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), sandbox: SandboxInfo }),
  StreamError,
]);

/** Lines of the NDJSON answer to POST /v1/images/build. */
export const BuildStreamLine = z.discriminatedUnion("type", [
  StreamProgress,
  z.strictObject({ type: z.literal("result"), image: ImageInfoSchema }),
  StreamError,
]);
