/**
 * Snapshot manifests: what a saved state is made of (one blob per part: guest RAM, device state,
 * work disk, /tmp) and the shape it needs to be restored (tier, image, kernel, QEMU, vCPUs, RAM).
 *
 * Stored and moved as the canonical JSON of `{manifest, signature}`, the signature an Ed25519
 * over a domain prefix and the canonical JSON of the manifest, made with the host key that signs
 * plans. `decodeSignedManifest` trusts nothing: bounded size, strict UTF-8, byte-for-byte
 * canonical (so duplicate keys and a second encoding are refused), a known `version` first, then
 * the strict schema, then the key and the signature. Every failure is `SnapshotMismatchError`.
 */
import { createHash, sign, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import { canonicalJson, InvalidArgumentError, SnapshotMismatchError, Sha256DigestSchema, Tier, type Sha256Digest } from "@mvm/protocol";
import { keyIdOf } from "../admission/plan.js";
import { BlobRefSchema } from "./blobs.js";

export const MANIFEST_VERSION = 1;
/** Bytes signed = this prefix + canonical JSON of the manifest. */
export const MANIFEST_SIGNATURE_DOMAIN = "mvm.snapshot-manifest.v1\n";
/** Largest encoded signed manifest read, in bytes (a 64 GiB guest lists 32 768 chunks, ~2.2 MB). */
export const MAX_MANIFEST_BYTES = 8 * 1024 * 1024;

const Label = z.string().min(1).max(128).regex(/^[\x21-\x7e]+$/);

/** The shape a snapshot needs: a restore on anything else is refused. */
export const SnapshotShapeSchema = z.strictObject({
  tier: Tier,
  imageDigest: Sha256DigestSchema,
  /** vm: sha256 of the kernel, initramfs and QEMU identity (binary and argument shape). */
  kernelDigest: Sha256DigestSchema.optional(),
  initramfsDigest: Sha256DigestSchema.optional(),
  qemu: Label.optional(),
  cpus: z.number().int().min(1).max(256).optional(),
  memoryMiB: z.number().int().min(1).max(1024 * 1024).optional(),
  workMiB: z.number().int().min(1).max(1024 * 1024),
});
export type SnapshotShape = z.infer<typeof SnapshotShapeSchema>;

export const SnapshotManifestSchema = z.strictObject({
  version: z.literal(MANIFEST_VERSION),
  createdAt: z.iso.datetime({ offset: false }),
  shape: SnapshotShapeSchema,
  blobs: z.strictObject({
    ram: BlobRefSchema.optional(),
    device: BlobRefSchema.optional(),
    work: BlobRefSchema.optional(),
    tmp: BlobRefSchema.optional(),
  }),
  labels: z.record(Label, z.string().max(256)).refine((l) => Object.keys(l).length <= 32, "at most 32 labels").optional(),
});
export type SnapshotManifest = z.infer<typeof SnapshotManifestSchema>;

const SignedManifestSchema = z.strictObject({
  manifest: z.unknown(),
  signature: z.strictObject({
    alg: z.literal("ed25519"),
    keyId: Sha256DigestSchema,
    value: z.string().regex(/^[0-9a-f]{128}$/),
  }),
});
export interface SignedManifest {
  readonly manifest: SnapshotManifest;
  readonly signature: { readonly alg: "ed25519"; readonly keyId: string; readonly value: string };
}

function signedBytes(manifest: SnapshotManifest): Buffer {
  return Buffer.from(MANIFEST_SIGNATURE_DOMAIN + canonicalJson(manifest), "utf8");
}

/** `sha256:` of the manifest's canonical JSON: the snapshot's digest. */
export function manifestDigest(manifest: SnapshotManifest): Sha256Digest {
  return `sha256:${createHash("sha256").update(canonicalJson(manifest)).digest("hex")}` as Sha256Digest;
}

/** Validates and signs a manifest; returns its wire form (canonical JSON, UTF-8). */
export function encodeSignedManifest(manifest: SnapshotManifest, privateKey: KeyObject): Buffer {
  if (privateKey.type !== "private" || privateKey.asymmetricKeyType !== "ed25519") {
    throw new InvalidArgumentError(`Cannot sign manifest: key must be an Ed25519 private key, got "${privateKey.asymmetricKeyType ?? privateKey.type}"`);
  }
  const parsed = SnapshotManifestSchema.safeParse(manifest);
  if (!parsed.success) throw new InvalidArgumentError(`Cannot sign manifest: ${parsed.error.issues[0]?.message ?? "invalid"}`, { cause: parsed.error });
  const value = sign(null, signedBytes(parsed.data), privateKey).toString("hex");
  return Buffer.from(canonicalJson({ manifest: parsed.data, signature: { alg: "ed25519", keyId: keyIdOf(privateKey), value } }), "utf8");
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Decodes and verifies the wire form of a signed manifest against `publicKey`.
 * @throws SnapshotMismatchError on anything but a well-formed manifest of a known version, signed
 *   by that key.
 */
export function decodeSignedManifest(bytes: Uint8Array, publicKey: KeyObject): SignedManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) throw new SnapshotMismatchError(`Snapshot manifest of ${bytes.byteLength} bytes is over ${MAX_MANIFEST_BYTES}`);
  let value: unknown;
  try {
    const text = strictUtf8.decode(bytes);
    value = JSON.parse(text);
    if (canonicalJson(value) !== text) throw new Error("not in canonical form");
  } catch (err) {
    throw new SnapshotMismatchError(`Snapshot manifest is not canonical JSON: ${(err as Error).message}`, { cause: err });
  }
  const outer = SignedManifestSchema.safeParse(value);
  if (!outer.success) throw new SnapshotMismatchError("Snapshot manifest is malformed: expected {manifest, signature}", { cause: outer.error });
  const version = (outer.data.manifest as { version?: unknown } | null)?.version;
  if (version !== MANIFEST_VERSION) {
    throw new SnapshotMismatchError(`Snapshot manifest version ${JSON.stringify(version) ?? "(none)"} is not supported (this engine reads version ${MANIFEST_VERSION})`);
  }
  const inner = SnapshotManifestSchema.safeParse(outer.data.manifest);
  if (!inner.success) {
    const issue = inner.error.issues[0];
    throw new SnapshotMismatchError(`Snapshot manifest is malformed: ${issue?.path.join(".") ?? ""} ${issue?.message ?? ""}`.trim(), { cause: inner.error });
  }
  const keyId = keyIdOf(publicKey);
  const { signature } = outer.data;
  if (signature.keyId !== keyId) throw new SnapshotMismatchError(`Snapshot manifest is signed by key "${signature.keyId}", expected "${keyId}"`);
  if (!verify(null, signedBytes(inner.data), publicKey, Buffer.from(signature.value, "hex"))) {
    throw new SnapshotMismatchError("Snapshot manifest has a bad signature");
  }
  return { manifest: inner.data, signature };
}
