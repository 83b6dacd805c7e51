/**
 * Strict, bounded schemas of the OCI documents a registry serves: content descriptors, image
 * manifests (a bundle is one, as an artifact) and image indexes. Unknown fields are refused; the
 * fields the OCI image spec defines are accepted with bounds. Parse with {@link parseOciManifest}
 * / {@link parseOciIndex}: the bytes go through the strict JSON decoder first.
 */
import { z } from "zod";
import { InvalidArgumentError, parseJsonStrict } from "@mvm/protocol";

/** Most bytes of a manifest or index read from anywhere (the OCI distribution spec's suggestion). */
export const MAX_OCI_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Most layers a manifest, or manifests an index, may name. */
export const MAX_OCI_DESCRIPTORS = 4096;

export const MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const MEDIA_TYPE_OCI_EMPTY = "application/vnd.oci.empty.v1+json";
export const MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";

/** `sha256:` and 64 lowercase hex digits: the only digest algorithm accepted. */
export const OciDigestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/, "a sha256 digest");
export type OciDigest = z.infer<typeof OciDigestSchema>;

const MediaTypeSchema = z
  .string()
  .max(255)
  .regex(/^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/, "a media type");
const AnnotationsSchema = z
  .record(z.string().max(1024), z.string().max(64 * 1024))
  .refine((m) => Object.keys(m).length <= 256, "at most 256 annotations");
const PlatformSchema = z.strictObject({
  architecture: z.string().max(64),
  os: z.string().max(64),
  "os.version": z.string().max(256).optional(),
  "os.features": z.array(z.string().max(256)).max(64).optional(),
  variant: z.string().max(64).optional(),
  features: z.array(z.string().max(256)).max(64).optional(),
});

/** A content descriptor: what a manifest says about one blob. */
export const OciDescriptorSchema = z.strictObject({
  mediaType: MediaTypeSchema,
  digest: OciDigestSchema,
  size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  urls: z.array(z.string().max(2048)).max(16).optional(),
  annotations: AnnotationsSchema.optional(),
  data: z.string().max(64 * 1024).optional(),
  artifactType: MediaTypeSchema.optional(),
  platform: PlatformSchema.optional(),
});
export type OciDescriptor = z.infer<typeof OciDescriptorSchema>;

/** An OCI image manifest (also the shape of an artifact manifest). */
export const OciManifestSchema = z.strictObject({
  schemaVersion: z.literal(2),
  mediaType: z.union([z.literal(MEDIA_TYPE_OCI_MANIFEST), z.literal(MEDIA_TYPE_DOCKER_MANIFEST)]).optional(),
  artifactType: MediaTypeSchema.optional(),
  config: OciDescriptorSchema,
  layers: z.array(OciDescriptorSchema).max(MAX_OCI_DESCRIPTORS),
  subject: OciDescriptorSchema.optional(),
  annotations: AnnotationsSchema.optional(),
});
export type OciManifest = z.infer<typeof OciManifestSchema>;

/** An OCI image index (or a Docker manifest list). */
export const OciIndexSchema = z.strictObject({
  schemaVersion: z.literal(2),
  mediaType: z.union([z.literal(MEDIA_TYPE_OCI_INDEX), z.literal(MEDIA_TYPE_DOCKER_LIST)]).optional(),
  artifactType: MediaTypeSchema.optional(),
  manifests: z.array(OciDescriptorSchema).max(MAX_OCI_DESCRIPTORS),
  subject: OciDescriptorSchema.optional(),
  annotations: AnnotationsSchema.optional(),
});
export type OciIndex = z.infer<typeof OciIndexSchema>;

function parseWith<T>(schema: z.ZodType<T>, bytes: Uint8Array, what: string): T {
  if (bytes.byteLength > MAX_OCI_MANIFEST_BYTES) {
    throw new InvalidArgumentError(`Invalid ${what}: ${bytes.byteLength} bytes is over the ${MAX_OCI_MANIFEST_BYTES}-byte limit`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (err) {
    throw new InvalidArgumentError(`Invalid ${what}: not UTF-8`, { cause: err });
  }
  let value: unknown;
  try {
    value = parseJsonStrict(text, { maxDepth: 16 });
  } catch (err) {
    throw new InvalidArgumentError(`Invalid ${what}: ${(err as Error).message}`, { cause: err });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidArgumentError(`Invalid ${what}: ${issue === undefined ? "schema" : `${issue.path.join(".") || "(root)"}: ${issue.message}`}`);
  }
  return parsed.data;
}

/** Parses manifest bytes strictly. @throws InvalidArgumentError */
export function parseOciManifest(bytes: Uint8Array): OciManifest {
  return parseWith(OciManifestSchema, bytes, "OCI manifest");
}

/** Parses index bytes strictly. @throws InvalidArgumentError */
export function parseOciIndex(bytes: Uint8Array): OciIndex {
  return parseWith(OciIndexSchema, bytes, "OCI index");
}
