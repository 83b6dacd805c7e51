/**
 * Build provenance: a signed record of what went into a built image and what came out.
 *
 * Wire form, `<images>/blobs/sha256/<hex>/provenance.json`, canonical JSON:
 *
 *   { "provenance": { "version": 1, "imageDigest", "ref", "suite", "packages", "installed",
 *                     "mirrors", "sourceDateEpoch", "mmdebstrap", "builder" },
 *     "signature":  { "alg": "ed25519", "keyId": "sha256:<SPKI DER>", "value": "<128 hex>" } }
 *   signature.value   = Ed25519(host key, "mvm.image-provenance.v1\n" ‖ canonicalJson(provenance))
 *   provenance digest = sha256(canonicalJson(provenance))   (what a plan's IR names)
 *
 * `installed` comes from the built tree's dpkg status database: bytes the build wrote, so they are
 * read size-bounded and checked field by field. The record holds no time: two builds of one
 * reference from one mirror state write the same record.
 */
import { createHash, sign, verify, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { z } from "zod";
import {
  AdmissionError,
  BuildProvenanceSchema,
  IMAGE_PROVENANCE_VERSION,
  InstalledPackage,
  InvalidArgumentError,
  MAX_PROVENANCE_PACKAGES,
  NotFoundError,
  Sha256DigestSchema,
  canonicalJson,
  parseJsonStrict,
  type BuildProvenance,
  type Sha256Digest,
} from "@mvm/protocol";
import { keyIdOf } from "../admission/plan.js";
import { hostKeyPath, loadHostKey } from "../audit/keys.js";
import { readSmallFile, writeFileAtomic } from "../store/atomic.js";
import { digestOf } from "./digest.js";
import { isSha256Digest, quote } from "./ref.js";

export const PROVENANCE_VERSION = IMAGE_PROVENANCE_VERSION;
/** Bytes signed = this prefix + canonical JSON of the provenance. */
export const PROVENANCE_SIGNATURE_DOMAIN = "mvm.image-provenance.v1\n";
export const PROVENANCE_FILE = "provenance.json";
/** Largest provenance file read, in bytes. */
export const MAX_PROVENANCE_BYTES = 4 * 1024 * 1024;
/** Largest dpkg status database read from a built tree, in bytes. */
export const MAX_DPKG_STATUS_BYTES = 32 * 1024 * 1024;
/** Largest image manifest read to check it against its digest, in bytes. */
const MAX_MANIFEST_BYTES = 512 * 1024 * 1024;
/** Most installed packages recorded. */
export const MAX_INSTALLED_PACKAGES = MAX_PROVENANCE_PACKAGES;

export { BuildProvenanceSchema, InstalledPackage };
export type { BuildProvenance };

const ProvenanceFileSchema = z.strictObject({
  provenance: z.unknown(),
  signature: z.strictObject({ alg: z.literal("ed25519"), keyId: Sha256DigestSchema, value: z.string().regex(/^[0-9a-f]{128}$/) }),
});

function signedBytes(provenance: BuildProvenance): Buffer {
  return Buffer.from(PROVENANCE_SIGNATURE_DOMAIN + canonicalJson(provenance), "utf8");
}

/** sha256 of the canonical JSON of a provenance record: the digest a plan names. */
export function provenanceDigest(provenance: BuildProvenance): Sha256Digest {
  return `sha256:${createHash("sha256").update(canonicalJson(provenance)).digest("hex")}` as Sha256Digest;
}

/**
 * Reads the installed packages from a dpkg status database (`var/lib/dpkg/status` of a built
 * tree), bounded in size and entries; a stanza with a malformed field fails the whole read.
 * @throws AdmissionError when the file is missing, too large or malformed.
 */
export async function readInstalledPackages(rootfs: string): Promise<InstalledPackage[]> {
  const path = join(rootfs, "var/lib/dpkg/status");
  let text: string;
  try {
    text = (await readSmallFile(path, MAX_DPKG_STATUS_BYTES)).toString("utf8");
  } catch (err) {
    throw new AdmissionError(`Cannot record provenance: cannot read the built image's dpkg status: ${(err as Error).message}`, { cause: err });
  }
  const out: InstalledPackage[] = [];
  for (const stanza of text.split(/\n\n+/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split("\n")) {
      const m = /^(Package|Status|Version|Architecture):[ \t]*(.*)$/.exec(line);
      if (m?.[1]) fields.set(m[1], (m[2] ?? "").trim());
    }
    if (!fields.has("Package")) continue;
    if (fields.get("Status") !== "install ok installed") continue;
    const parsed = InstalledPackage.safeParse({ package: fields.get("Package"), version: fields.get("Version"), architecture: fields.get("Architecture") });
    if (!parsed.success) {
      throw new AdmissionError(`Cannot record provenance: malformed dpkg status entry for package ${quote(fields.get("Package") ?? "")}`);
    }
    out.push(parsed.data);
    if (out.length > MAX_INSTALLED_PACKAGES) throw new AdmissionError(`Cannot record provenance: more than ${MAX_INSTALLED_PACKAGES} installed packages`);
  }
  return out.sort((a, b) => (a.package < b.package ? -1 : a.package > b.package ? 1 : a.architecture < b.architecture ? -1 : 1));
}

/** Validates and signs a provenance record; returns its wire form (canonical JSON, UTF-8). */
export function encodeSignedProvenance(provenance: BuildProvenance, privateKey: KeyObject): Buffer {
  const parsed = BuildProvenanceSchema.safeParse(provenance);
  if (!parsed.success) throw new InvalidArgumentError(`Cannot sign provenance: ${parsed.error.issues[0]?.message ?? "invalid"}`, { cause: parsed.error });
  const value = sign(null, signedBytes(parsed.data), privateKey).toString("hex");
  return Buffer.from(canonicalJson({ provenance: parsed.data, signature: { alg: "ed25519", keyId: keyIdOf(privateKey), value } }), "utf8");
}

/** A provenance record whose signature and image digest checked out. */
export interface VerifiedProvenance {
  readonly provenance: BuildProvenance;
  /** sha256 of the record's canonical JSON. */
  readonly digest: Sha256Digest;
  /** The signing key's id (`sha256:` of its SPKI DER). */
  readonly keyId: Sha256Digest;
}

/**
 * Decodes the wire form and checks it: strict schema, signed by `publicKey`, for `imageDigest`.
 * @throws AdmissionError naming what failed.
 */
export function decodeSignedProvenance(bytes: Uint8Array, publicKey: KeyObject, imageDigest: string): VerifiedProvenance {
  let json: unknown;
  try {
    json = parseJsonStrict(Buffer.from(bytes).toString("utf8"));
  } catch (err) {
    throw new AdmissionError(`Provenance of image ${imageDigest} is not valid JSON`, { cause: err });
  }
  const outer = ProvenanceFileSchema.safeParse(json);
  if (!outer.success) throw new AdmissionError(`Provenance of image ${imageDigest} is malformed: expected {provenance, signature}`, { cause: outer.error });
  const inner = BuildProvenanceSchema.safeParse(outer.data.provenance);
  if (!inner.success) {
    throw new AdmissionError(`Provenance of image ${imageDigest} is malformed: ${inner.error.issues[0]?.path.join(".") ?? ""} ${inner.error.issues[0]?.message ?? ""}`.trim(), { cause: inner.error });
  }
  const keyId = keyIdOf(publicKey);
  if (outer.data.signature.keyId !== keyId) {
    throw new AdmissionError(`Provenance of image ${imageDigest} is signed by key "${outer.data.signature.keyId}", not this host's "${keyId}"`);
  }
  if (!verify(null, signedBytes(inner.data), publicKey, Buffer.from(outer.data.signature.value, "hex"))) {
    throw new AdmissionError(`Provenance of image ${imageDigest} has a bad signature`);
  }
  if (inner.data.imageDigest !== imageDigest) {
    throw new AdmissionError(`Provenance names image ${inner.data.imageDigest}, not ${imageDigest}`);
  }
  return { provenance: inner.data, digest: provenanceDigest(inner.data), keyId };
}

/** Writes a signed provenance record beside an image (atomic replace). */
export async function writeProvenance(blobDir: string, provenance: BuildProvenance, privateKey: KeyObject): Promise<Sha256Digest> {
  await writeFileAtomic(join(blobDir, PROVENANCE_FILE), encodeSignedProvenance(provenance, privateKey));
  return provenanceDigest(provenance);
}

export interface VerifyProvenanceOptions {
  /** The image store's root. @default `<stateDir>/images` */
  imagesDir?: string;
  /** Key to check the signature with. @default the host key in `<stateDir>/keys` */
  publicKey?: KeyObject;
  /** Re-hash the stored manifest against `imageDigest`. @default true */
  checkManifest?: boolean;
}

/**
 * Checks that image `imageDigest` in a state directory's image store was built here: its
 * provenance record exists, is well formed, is signed by the host key, names this image, and the
 * image's stored manifest still hashes to `imageDigest` (unless `checkManifest` is false).
 * Recomputing the tree itself is `ImageStore.verify`.
 * @returns the verified record and its digest.
 * @throws InvalidArgumentError for a malformed digest; NotFoundError when the image or its
 *   provenance record is not there (imported images have none); AdmissionError when the record
 *   or the manifest does not check out.
 * @example const { digest } = await verifyProvenance("/var/lib/mvm", "sha256:…");
 */
export async function verifyProvenance(stateDir: string, imageDigest: string, options: VerifyProvenanceOptions = {}): Promise<VerifiedProvenance> {
  if (!isSha256Digest(imageDigest)) throw new InvalidArgumentError(`Invalid image digest ${quote(imageDigest)}: expected "sha256:" and 64 lowercase hex digits`);
  const blobDir = join(options.imagesDir ?? join(stateDir, "images"), "blobs", "sha256", imageDigest.slice("sha256:".length));
  if (options.checkManifest !== false) {
    const manifest = await readSmallFile(join(blobDir, "manifest.json"), MAX_MANIFEST_BYTES).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") throw new NotFoundError(`Image ${imageDigest} not found`);
      throw err;
    });
    if (digestOf(manifest) !== imageDigest) throw new AdmissionError(`Image ${imageDigest}: its stored manifest no longer hashes to its digest`);
  }
  const bytes = await readSmallFile(join(blobDir, PROVENANCE_FILE), MAX_PROVENANCE_BYTES).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") {
      throw new NotFoundError(`Image ${imageDigest} has no provenance record`, { hint: "only images built on this host (mvmctl image build) have one" });
    }
    throw err;
  });
  const publicKey = options.publicKey ?? (await loadHostKey(hostKeyPath(stateDir))).publicKey;
  return decodeSignedProvenance(bytes, publicKey, imageDigest);
}
