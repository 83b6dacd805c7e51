/**
 * Image build provenance as the API carries it: the record the engine signs for each `debian:`
 * build (inputs, resolved package versions, output digest) and what `inspectImage` reports about
 * it. The signed file's format is described in docs/BUILDS.md.
 */
import { z } from "zod";
import { Sha256DigestSchema } from "./api-base.js";

export const IMAGE_PROVENANCE_VERSION = 1;

const PackageName = z.string().regex(/^[a-z0-9][a-z0-9+.-]{0,99}$/);
const DebVersion = z.string().regex(/^[A-Za-z0-9.+~:-]{1,128}$/);
const Printable = (max: number) => z.string().min(1).max(max).regex(/^[\x20-\x7e]+$/);

/** One package installed in a built image, as its dpkg database lists it. */
export const InstalledPackage = z.strictObject({ package: PackageName, version: DebVersion, architecture: z.string().regex(/^[a-z0-9-]{1,32}$/) });
export type InstalledPackage = z.infer<typeof InstalledPackage>;

/** Most installed packages one provenance record lists. */
export const MAX_PROVENANCE_PACKAGES = 20_000;

/** What went into one `debian:` build and what came out. Holds no time: equal builds, equal records. */
export const BuildProvenanceSchema = z.strictObject({
  version: z.literal(IMAGE_PROVENANCE_VERSION),
  /** The image the build produced. */
  imageDigest: Sha256DigestSchema,
  /** The canonical reference built, e.g. `debian:bookworm+python3`. */
  ref: Printable(600),
  suite: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/),
  /** Packages the reference asked for, sorted. */
  packages: z.array(PackageName).max(64),
  /** Every package installed in the image, with the version the mirror served, sorted by name. */
  installed: z.array(InstalledPackage).max(MAX_PROVENANCE_PACKAGES),
  /** The apt lines mmdebstrap was given. */
  mirrors: z.array(Printable(1024)).min(1).max(16),
  /** SOURCE_DATE_EPOCH of the build, in seconds. */
  sourceDateEpoch: z.number().int().nonnegative(),
  mmdebstrap: z.strictObject({ version: Printable(64), variant: z.literal("minbase"), mode: z.literal("unshare") }),
  /**
   * Who ran the build: `netns-unshare` is the builder boundary (the build user, no route, egress
   * only to the mirror); `none` an engine that is not root, building as its own uid.
   */
  builder: z.strictObject({ boundary: z.enum(["netns-unshare", "none"]), user: Printable(64), uid: z.number().int().min(1) }),
});
export type BuildProvenance = z.infer<typeof BuildProvenanceSchema>;

/** The provenance part of an image inspection. */
export const ImageProvenanceStatus = z.discriminatedUnion("status", [
  z.strictObject({
    status: z.literal("verified"),
    /** sha256 of the record's canonical JSON: what a plan's IR names. */
    digest: Sha256DigestSchema,
    /** The key that signed it (sha256 of its SPKI DER). */
    keyId: Sha256DigestSchema,
    record: BuildProvenanceSchema,
  }),
  /** The image has no record (imported, or built before records existed). */
  z.strictObject({ status: z.literal("none") }),
  /** A record is there but does not check out: the reason says why. */
  z.strictObject({ status: z.literal("invalid"), reason: z.string().max(1024) }),
]);
export type ImageProvenanceStatus = z.infer<typeof ImageProvenanceStatus>;

/** What an OCI image records: its digests, the pinned reference it was pulled as, its config's user, entrypoint and cmd. */
export const ImageOciInfoSchema = z.strictObject({
  manifestDigest: Sha256DigestSchema.optional(),
  configDigest: Sha256DigestSchema,
  reference: z.string().max(1024).optional(),
  user: z.string().max(256).optional(),
  entrypoint: z.array(z.string().max(4096)).max(1024).optional(),
  cmd: z.array(z.string().max(4096)).max(1024).optional(),
});

/** Answer of GET /v1/images/inspect?ref=REF. */
export const ImageInspectSchema = z.strictObject({
  digest: Sha256DigestSchema,
  refs: z.array(z.string().max(512)).max(4096),
  sizeBytes: z.number().int().min(0),
  createdAt: z.string().max(64),
  oci: ImageOciInfoSchema.optional(),
  source: z.strictObject({ kind: z.enum(["debian", "tar", "dir", "oci-layout", "docker-archive", "registry"]), detail: z.string().max(4096) }),
  provenance: ImageProvenanceStatus,
});
export type ImageInspect = z.infer<typeof ImageInspectSchema>;
