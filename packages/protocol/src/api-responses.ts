/**
 * Schemas of the daemon's answers that the engine API otherwise describes only as TypeScript
 * types (health, images, progress, list envelopes, NDJSON stream lines). The SDK's daemon client
 * validates every answer with them.
 */
import { z } from "zod";
import { ApiErrorBody, AuditReceiptRef, BackendName, SandboxInfo, Sha256DigestSchema, Tier } from "./api.js";
import { MAX_SECRET_REF_HOSTS, MAX_SECRET_VALUE_BYTES } from "./limits.js";
import { ImageOciInfoSchema } from "./image-provenance.js";
import { NetworkEventSchema } from "./network-event.js";

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

/** Answer of GET /v1/ping: the daemon answers, without probing anything. */
export const PingSchema = z.strictObject({ version: z.string().max(64) });

export const ImageInfoSchema = z.strictObject({
  digest: Sha256DigestSchema,
  refs: z.array(z.string().max(512)).max(4096),
  sizeBytes: z.number().int().min(0),
  createdAt: z.string().max(64),
  oci: ImageOciInfoSchema.optional(),
});

export const SandboxListSchema = z.strictObject({ sandboxes: z.array(SandboxInfo).max(100_000) });
export const ImageListSchema = z.strictObject({ images: z.array(ImageInfoSchema).max(100_000) });
export const WriteResultSchema = z.strictObject({ bytes: z.number().int().min(0), receipt: AuditReceiptRef.optional() });

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

/** Most network events one page carries. */
export const MAX_NETWORK_EVENTS_PAGE = 1000;

/** GET /v1/sandboxes/:id/network/events: events numbered from 1; `next` is the `after` of the next page. */
export const NetworkEventsPageSchema = z.strictObject({
  events: z.array(z.strictObject({ seq: z.number().int().min(1), event: NetworkEventSchema })).max(MAX_NETWORK_EVENTS_PAGE),
  next: z.number().int().min(0),
  /** Events dropped from the front of the sandbox's bounded event buffer so far. */
  dropped: z.number().int().min(0),
});
export type NetworkEventsPage = z.infer<typeof NetworkEventsPageSchema>;

/** What the engine says about a stored secret: never its value. */
export const SecretMetaSchema = z.strictObject({
  name: z.string().max(128),
  hosts: z.array(z.string().max(253)).max(32),
  bytes: z.number().int().min(0),
  createdAt: z.string().max(64),
  updatedAt: z.string().max(64),
});
export type SecretMeta = z.infer<typeof SecretMetaSchema>;
export const SecretListSchema = z.strictObject({ secrets: z.array(SecretMetaSchema).max(100_000) });

/** Body of PUT /v1/secrets/:name. */
export const SetSecretApiRequest = z.strictObject({
  value: z.string().min(1).max(MAX_SECRET_VALUE_BYTES),
  hosts: z.array(z.string().max(253)).max(MAX_SECRET_REF_HOSTS).optional(),
});
