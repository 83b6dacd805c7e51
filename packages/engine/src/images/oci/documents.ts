/**
 * Strict, bounded parsers of the JSON documents an OCI image is made of: the image index (and
 * Docker's manifest list) and the image manifest (OCI or Docker v2 schema 2), whose schemas are the
 * registry client's (oci/manifest.ts), the image config, an OCI layout's `oci-layout` marker and a
 * docker-archive's `manifest.json`.
 *
 * Every document is read with a byte cap, decoded by the strict JSON decoder (duplicate keys,
 * `__proto__` and deep nesting refused) and validated with a strict schema: a field the spec does
 * not define is refused, every string and array has a bound. A document that breaks a rule is an
 * {@link OciImageError} naming the document and the first bad field.
 */
import { z } from "zod";
import { InvalidArgumentError, parseJsonStrict, type Sha256Digest } from "@mvm/protocol";
import { describeIssue } from "../../admission/ir.js";
import {
  MEDIA_TYPE_DOCKER_LIST,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_MANIFEST,
  OciDescriptorSchema,
  OciIndexSchema,
  OciManifestSchema,
  type OciDescriptor,
  type OciIndex,
  type OciManifest,
} from "../../oci/manifest.js";

/** Most bytes of a manifest, an index, `index.json` or a docker-archive `manifest.json`. */
export const MAX_OCI_DOCUMENT_BYTES = 4 * 1024 * 1024;
/** Most bytes of an image config. */
export const MAX_OCI_CONFIG_BYTES = 8 * 1024 * 1024;
/** Most layers one image may have. */
export const MAX_OCI_LAYERS = 256;
/** Deepest JSON nesting accepted in any OCI document. */
const MAX_JSON_DEPTH = 32;

const MEDIA_OCI_INDEX = MEDIA_TYPE_OCI_INDEX;
const MEDIA_OCI_MANIFEST = MEDIA_TYPE_OCI_MANIFEST;
const MEDIA_DOCKER_LIST = MEDIA_TYPE_DOCKER_LIST;
const MEDIA_DOCKER_MANIFEST = MEDIA_TYPE_DOCKER_MANIFEST;

/** Layer media types accepted, and the compression each one declares. */
export const LAYER_MEDIA_TYPES = {
  "application/vnd.oci.image.layer.v1.tar": "none",
  "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
  "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
  "application/vnd.docker.image.rootfs.diff.tar": "none",
} as const;
export type LayerCompression = (typeof LAYER_MEDIA_TYPES)[keyof typeof LAYER_MEDIA_TYPES];

/** What broke: the caller can tell a lying image from a malformed one. */
export type OciFault =
  | "schema" // a document is malformed or breaks a bound
  | "too-large" // a document, blob or layer is over its cap
  | "digest-mismatch" // a blob's bytes do not hash to the digest that names it
  | "diff-id-mismatch" // a layer's uncompressed bytes do not hash to the config's diff_id
  | "size-mismatch" // a blob's length differs from its descriptor
  | "missing-blob" // a blob the image names is not where it should be
  | "platform" // no linux/amd64 manifest in an index
  | "unsafe-entry"; // a layer entry the extraction rules refuse

/** An OCI image, layout or archive that is malformed, lies about its content, or is unsafe. */
export class OciImageError extends InvalidArgumentError {
  constructor(
    readonly fault: OciFault,
    message: string,
    options?: { cause?: unknown; hint?: string },
  ) {
    super(message, options);
  }
}

const Digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, "a sha256 digest") as unknown as z.ZodType<Sha256Digest>;

/** A content descriptor, an image index (or Docker list), an image manifest (OCI or Docker v2.2): the registry client's schemas. */
export const Descriptor = OciDescriptorSchema;
export type Descriptor = OciDescriptor;
export const ImageIndex = OciIndexSchema;
export type ImageIndex = OciIndex;
export const ImageManifest = OciManifestSchema;
export type ImageManifest = OciManifest;

const ShortString = z.string().max(4096);
const StringList = z.array(ShortString).max(1024);
const EmptyObjectMap = z.record(z.string().max(256), z.strictObject({})).refine((m) => Object.keys(m).length <= 1024, "at most 1024 keys");

/** The execution defaults an image config carries (`config` in the OCI image config). */
export const ImageRunConfig = z.object({
  User: z.string().max(256).optional(),
  ExposedPorts: EmptyObjectMap.nullable().optional(),
  Env: z.array(z.string().max(128 * 1024)).max(4096).nullable().optional(),
  Entrypoint: StringList.nullable().optional(),
  Cmd: StringList.nullable().optional(),
  Volumes: EmptyObjectMap.nullable().optional(),
  WorkingDir: z.string().max(4096).optional(),
  Labels: z.record(z.string().max(1024), z.string().max(64 * 1024)).nullable().optional(),
  StopSignal: z.string().max(64).optional(),
  ArgsEscaped: z.boolean().optional(),
}).passthrough();

/**
 * The image config. The fields the OCI spec defines are checked; Docker writes more (container,
 * docker_version, …) that are accepted only as bounded values and never used.
 */
export const ImageConfig = z
  .object({
    created: z.string().max(64).optional(),
    author: z.string().max(4096).optional(),
    architecture: z.string().max(64),
    os: z.string().max(64),
    "os.version": z.string().max(256).optional(),
    variant: z.string().max(64).optional(),
    config: ImageRunConfig.nullable().optional(),
    rootfs: z.strictObject({ type: z.literal("layers"), diff_ids: z.array(Digest).max(MAX_OCI_LAYERS) }),
    history: z.array(z.record(z.string().max(64), z.union([z.string().max(64 * 1024), z.boolean()]))).max(4096).optional(),
  })
  .passthrough();
export type ImageConfig = z.infer<typeof ImageConfig>;

/** The `oci-layout` marker file of an image layout directory. */
export const OciLayoutMarker = z.strictObject({ imageLayoutVersion: z.literal("1.0.0") });

/** One image of a docker-archive (`docker save`, `skopeo copy … docker-archive:`). */
export const DockerArchiveEntry = z.strictObject({
  Config: z.string().min(1).max(512),
  RepoTags: z.array(z.string().max(512)).max(256).nullable().optional(),
  Layers: z.array(z.string().min(1).max(512)).max(MAX_OCI_LAYERS),
  LayerSources: z.record(z.string().regex(/^sha256:[0-9a-f]{64}$/), Descriptor).optional(),
});
/** A docker-archive's `manifest.json`: exactly one image is accepted. */
export const DockerArchiveManifest = z.array(DockerArchiveEntry).min(1).max(1);
export type DockerArchiveManifest = z.infer<typeof DockerArchiveManifest>;

/**
 * Decodes and validates one OCI document from its bytes.
 * @throws OciImageError (`too-large` or `schema`) naming `what`.
 */
export function parseOciDocument<T>(schema: z.ZodType<T>, bytes: Uint8Array, what: string, maxBytes = MAX_OCI_DOCUMENT_BYTES): T {
  if (bytes.byteLength > maxBytes) throw new OciImageError("too-large", `Cannot read ${what}: ${bytes.byteLength} bytes, over the limit of ${maxBytes}`);
  let value: unknown;
  try {
    value = parseJsonStrict(new TextDecoder("utf-8", { fatal: true }).decode(bytes), { maxDepth: MAX_JSON_DEPTH });
  } catch (cause) {
    throw new OciImageError("schema", `Cannot read ${what}: not strict JSON: ${(cause as Error).message}`, { cause });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new OciImageError("schema", `Cannot read ${what}: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  return parsed.data;
}

/** A parsed manifest or index: the document's media type decides, falling back on its shape. */
export type ManifestOrIndex = { kind: "index"; index: ImageIndex } | { kind: "manifest"; manifest: ImageManifest };

/**
 * Parses a document that may be an index or a manifest (what a registry tag or a layout's
 * `index.json` entry points at). `mediaType` is the descriptor's or the response's.
 */
export function parseManifestOrIndex(bytes: Uint8Array, mediaType: string | undefined, what: string): ManifestOrIndex {
  if (mediaType === MEDIA_OCI_INDEX || mediaType === MEDIA_DOCKER_LIST) return { kind: "index", index: parseOciDocument(ImageIndex, bytes, what) };
  if (mediaType === MEDIA_OCI_MANIFEST || mediaType === MEDIA_DOCKER_MANIFEST) return { kind: "manifest", manifest: parseOciDocument(ImageManifest, bytes, what) };
  throw new OciImageError("schema", `Cannot read ${what}: media type ${JSON.stringify(String(mediaType).slice(0, 100))} is neither an image manifest nor an index`);
}

/**
 * Picks the linux/amd64 image manifest of an index (the only platform the backends run).
 * An entry without a platform is taken only when it is the index's one image manifest.
 * @throws OciImageError (`platform`) when there is none, or more than one.
 */
export function selectPlatform(index: ImageIndex, what: string): Descriptor {
  const images = index.manifests.filter((d) => d.mediaType === MEDIA_OCI_MANIFEST || d.mediaType === MEDIA_DOCKER_MANIFEST || d.mediaType === MEDIA_OCI_INDEX || d.mediaType === MEDIA_DOCKER_LIST);
  const matching = images.filter((d) => d.platform?.os === "linux" && d.platform.architecture === "amd64" && (d.platform.variant === undefined || d.platform.variant === "v1"));
  if (matching.length === 1) return matching[0]!;
  if (matching.length === 0 && images.length === 1 && images[0]!.platform === undefined) return images[0]!;
  throw new OciImageError(
    "platform",
    matching.length === 0 ? `Cannot choose an image from ${what}: it has no linux/amd64 manifest` : `Cannot choose an image from ${what}: it has ${matching.length} linux/amd64 manifests`,
  );
}

/** The compression a layer's media type declares. @throws OciImageError for a media type that is not a layer. */
export function layerCompression(mediaType: string, what: string): LayerCompression {
  const c = (LAYER_MEDIA_TYPES as Record<string, LayerCompression>)[mediaType];
  if (c === undefined) throw new OciImageError("schema", `Cannot use ${what}: media type ${JSON.stringify(mediaType.slice(0, 100))} is not an image layer`);
  return c;
}

/**
 * Checks a manifest against its config: as many layers as diff_ids, a linux/amd64 config.
 * @throws OciImageError (`schema` or `platform`).
 */
export function checkManifestAgainstConfig(manifest: ImageManifest, config: ImageConfig, what: string): void {
  if (manifest.layers.length !== config.rootfs.diff_ids.length) {
    throw new OciImageError("schema", `Cannot use ${what}: the manifest lists ${manifest.layers.length} layer(s), the config ${config.rootfs.diff_ids.length} diff_id(s)`);
  }
  checkConfigPlatform(config, what);
}

export function checkConfigPlatform(config: ImageConfig, what: string): void {
  if (config.os !== "linux" || config.architecture !== "amd64") {
    throw new OciImageError("platform", `Cannot use ${what}: its config is for ${JSON.stringify(`${config.os.slice(0, 64)}/${config.architecture.slice(0, 64)}`)}, not linux/amd64`);
  }
}

/** The execution defaults of an image, as the engine records and applies them. */
export interface ImageDefaults {
  user?: string;
  env?: Record<string, string>;
  workingDir?: string;
  entrypoint?: string[];
  cmd?: string[];
}

/**
 * Extracts the defaults the engine uses from a config. `Env` entries are `NAME=value`; an entry
 * without `=`, with a name that is not a portable variable name, or named `__proto__` is refused.
 */
export function imageDefaults(config: ImageConfig, what: string): ImageDefaults {
  const c = config.config ?? undefined;
  const out: ImageDefaults = {};
  if (c === undefined || c === null) return out;
  if (c.User !== undefined && c.User !== "") out.user = c.User;
  if (c.WorkingDir !== undefined && c.WorkingDir !== "") {
    if (!c.WorkingDir.startsWith("/") || c.WorkingDir.includes("\0")) throw new OciImageError("schema", `Cannot use ${what}: WorkingDir ${JSON.stringify(c.WorkingDir.slice(0, 200))} is not an absolute path`);
    out.workingDir = c.WorkingDir;
  }
  if (c.Env) {
    const env: Record<string, string> = {};
    for (const entry of c.Env) {
      const eq = entry.indexOf("=");
      const name = eq < 0 ? entry : entry.slice(0, eq);
      if (eq <= 0 || !/^[A-Za-z_][A-Za-z0-9_]{0,255}$/.test(name) || name === "__proto__" || entry.includes("\0")) {
        throw new OciImageError("schema", `Cannot use ${what}: Env entry ${JSON.stringify(entry.slice(0, 100))} is not NAME=value`);
      }
      env[name] = entry.slice(eq + 1);
    }
    if (Object.keys(env).length > 0) out.env = env;
  }
  if (c.Entrypoint && c.Entrypoint.length > 0) out.entrypoint = [...c.Entrypoint];
  if (c.Cmd && c.Cmd.length > 0) out.cmd = [...c.Cmd];
  return out;
}
