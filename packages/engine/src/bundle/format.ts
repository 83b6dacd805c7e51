/**
 * The bundle format: how a snapshot (with its image) or an image alone travels between hosts.
 *
 * ```
 * bundle.json  canonical JSON; its sha256 is the bundle digest (what a pull is pinned to)
 *   { "mediaType": "application/vnd.mvm.bundle.v1+json", "version": 1,
 *     "kind": "snapshot" | "image", "createdAt": "<ISO 8601 UTC>",
 *     "snapshot"?: { "digest": "sha256:…", "manifest": <snapshot manifest, unsigned>,
 *                    "labels": { … } },
 *     "image":     { "digest": "sha256:…", "tar": { "sizeBytes": N, "chunks": ["<blake3>" | null, …] } },
 *     "index":     { "digest": "sha256:…", "size": N } }
 * index        canonical JSON, named by sha256 and size in bundle.json
 *   { "version": 1, "packs": [ { "digest": "sha256:…", "size": N,
 *                                "chunks": [ ["<blake3>", length], … ] }, … ] }
 * pack         the bytes of its chunks, one after another, in the index's order; named by
 *              sha256 and size in the index
 * ```
 *
 * Every chunk a blob names (snapshot parts and the image tar; `null` is an all-zero chunk, not
 * carried) is in exactly one pack, once, with the length its place in the blob gives it; the
 * index names no other chunk. The snapshot manifest travels without its signature (a signature
 * is the sending host's; the receiving host signs its own record after verifying every chunk);
 * its digest is the same on every host. The image travels as a tar of its tree, written in the
 * order of the image's own manifest, so the image digest is checked after extraction.
 *
 * Decoders trust nothing: size first, then UTF-8, strict JSON (duplicate keys refused), the exact
 * canonical encoding, a known version, the strict schema, then the cross-checks. Every failure is
 * `SnapshotMismatchError`.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { SnapshotMismatchError, Sha256DigestSchema, canonicalJson, parseJsonStrict, type Sha256Digest } from "@mvm/protocol";
import { BlobRefSchema, chunkLength, type BlobRef } from "../store/blobs.js";
import { CHUNK_SIZE, isChunkId, type ChunkId } from "../store/chunks.js";
import { SnapshotManifestSchema, manifestDigest } from "../store/manifest.js";

export const BUNDLE_MEDIA_TYPE = "application/vnd.mvm.bundle.v1+json";
export const BUNDLE_VERSION = 1;
/** Largest bundle.json read: a snapshot manifest at its limit and an image's chunk list. */
export const MAX_BUNDLE_JSON_BYTES = 16 * 1024 * 1024;
/** Largest index read (about 80 bytes per chunk: 256 GiB of chunks). */
export const MAX_INDEX_BYTES = 16 * 1024 * 1024;
/** Largest pack read or written, in bytes. */
export const MAX_PACK_BYTES = 256 * 1024 * 1024;
/** Most packs one bundle may have. */
export const MAX_PACKS = 4000;
/** Size a pusher fills a pack to before starting the next, in bytes. */
export const TARGET_PACK_BYTES = 64 * 1024 * 1024;

/** The snapshot's record labels (the limits its source enforced among them), as the record allows them. */
const LabelsSchema = z
  .record(z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/), z.string().max(256))
  .refine((l) => Object.keys(l).length <= 32, "at most 32 labels");
const DescriptorSchema = z.strictObject({ digest: Sha256DigestSchema, size: z.number().int().min(0).max(MAX_INDEX_BYTES) });

export const BundleJsonSchema = z
  .strictObject({
    mediaType: z.literal(BUNDLE_MEDIA_TYPE),
    version: z.literal(BUNDLE_VERSION),
    kind: z.enum(["snapshot", "image"]),
    createdAt: z.iso.datetime({ offset: false }),
    snapshot: z.strictObject({ digest: Sha256DigestSchema, manifest: SnapshotManifestSchema, labels: LabelsSchema }).optional(),
    image: z.strictObject({ digest: Sha256DigestSchema, tar: BlobRefSchema }),
    index: DescriptorSchema,
  })
  .refine((b) => (b.kind === "snapshot") === (b.snapshot !== undefined), "a snapshot bundle, and only it, carries a snapshot")
  .refine((b) => b.snapshot === undefined || b.snapshot.manifest.shape.imageDigest === b.image.digest, "the snapshot's image is not the bundle's image");
export type BundleJson = z.infer<typeof BundleJsonSchema>;

const PackSchema = z.strictObject({
  digest: Sha256DigestSchema,
  size: z.number().int().min(1).max(MAX_PACK_BYTES),
  chunks: z
    .array(z.tuple([z.string().refine(isChunkId, "not a chunk id"), z.number().int().min(1).max(CHUNK_SIZE)]))
    .min(1)
    .max(262_144),
});
export const BundleIndexSchema = z.strictObject({
  version: z.literal(BUNDLE_VERSION),
  packs: z.array(PackSchema).max(MAX_PACKS),
});
export type BundleIndex = z.infer<typeof BundleIndexSchema>;
export type BundlePack = BundleIndex["packs"][number];

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** sha256 of bytes, as `sha256:<hex>`. */
export function sha256Of(bytes: Uint8Array): Sha256Digest {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}` as Sha256Digest;
}

/** Canonical JSON text → value, refusing anything but the one canonical encoding. */
function decodeCanonical(bytes: Uint8Array, max: number, what: string, maxDepth: number): unknown {
  if (bytes.byteLength > max) throw new SnapshotMismatchError(`${what} of ${bytes.byteLength} bytes is over the ${max}-byte limit`);
  let value: unknown;
  try {
    const text = strictUtf8.decode(bytes);
    value = parseJsonStrict(text, { maxDepth });
    if (canonicalJson(value) !== text) throw new Error("not in canonical form");
  } catch (err) {
    throw new SnapshotMismatchError(`${what} is not canonical JSON: ${(err as Error).message.slice(0, 200)}`, { cause: err });
  }
  return value;
}

function schemaFailure(what: string, error: z.ZodError): SnapshotMismatchError {
  const issue = error.issues[0];
  return new SnapshotMismatchError(`${what} is malformed: ${issue === undefined ? "schema" : `${issue.path.join(".") || "(root)"}: ${issue.message}`}`.slice(0, 400), { cause: error });
}

function versionOf(value: unknown): unknown {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as { version?: unknown }).version : undefined;
}

/**
 * Decodes bundle.json bytes whose sha256 must be `digest` (checked before anything is parsed).
 * @throws SnapshotMismatchError
 */
export function decodeBundleJson(bytes: Uint8Array, digest: string): BundleJson {
  const actual = sha256Of(bytes);
  if (actual !== digest) throw new SnapshotMismatchError(`Bundle ${digest} does not match its bytes (sha256 ${actual})`);
  const value = decodeCanonical(bytes, MAX_BUNDLE_JSON_BYTES, "bundle.json", 12);
  const version = versionOf(value);
  if (version !== BUNDLE_VERSION) throw new SnapshotMismatchError(`Bundle version ${JSON.stringify(version)?.slice(0, 40) ?? "(none)"} is not supported (this engine reads version ${BUNDLE_VERSION})`);
  const parsed = BundleJsonSchema.safeParse(value);
  if (!parsed.success) throw schemaFailure("bundle.json", parsed.error);
  const bundle = parsed.data;
  if (bundle.snapshot !== undefined && manifestDigest(bundle.snapshot.manifest) !== bundle.snapshot.digest) {
    throw new SnapshotMismatchError(`bundle.json names snapshot ${bundle.snapshot.digest}, its manifest is ${manifestDigest(bundle.snapshot.manifest)}`);
  }
  return bundle;
}

/** Encodes bundle.json (canonical) and returns its bytes and digest. */
export function encodeBundleJson(bundle: BundleJson): { bytes: Buffer; digest: Sha256Digest } {
  const checked = BundleJsonSchema.parse(bundle);
  const bytes = Buffer.from(canonicalJson(checked), "utf8");
  return { bytes, digest: sha256Of(bytes) };
}

/** Every blob a bundle names, each chunk with the length its place gives it. */
export function bundleBlobs(bundle: BundleJson): BlobRef[] {
  const blobs: BlobRef[] = [bundle.image.tar as BlobRef];
  if (bundle.snapshot !== undefined) for (const blob of Object.values(bundle.snapshot.manifest.blobs)) if (blob !== undefined) blobs.push(blob as BlobRef);
  return blobs;
}

/** The chunks a bundle's blobs need, by id, with their length. @throws SnapshotMismatchError on one id with two lengths */
export function neededChunks(bundle: BundleJson): Map<ChunkId, number> {
  const needed = new Map<ChunkId, number>();
  for (const blob of bundleBlobs(bundle)) {
    blob.chunks.forEach((id, i) => {
      if (id === null) return;
      const length = chunkLength(blob.sizeBytes, i);
      const seen = needed.get(id);
      if (seen !== undefined && seen !== length) throw new SnapshotMismatchError(`Bundle names chunk ${id} with two lengths (${seen} and ${length})`);
      needed.set(id, length);
    });
  }
  return needed;
}

/**
 * Decodes index bytes named by `bundle.index` (sha256 and size checked first) and checks it
 * against the bundle: each pack's size is the sum of its chunks; every chunk the bundle needs is
 * in exactly one place, with its length; no other chunk, and no pack digest twice.
 * @throws SnapshotMismatchError
 */
export function decodeIndex(bytes: Uint8Array, bundle: BundleJson): BundleIndex {
  if (bytes.byteLength !== bundle.index.size) throw new SnapshotMismatchError(`Bundle index has ${bytes.byteLength} bytes, bundle.json says ${bundle.index.size}`);
  const actual = sha256Of(bytes);
  if (actual !== bundle.index.digest) throw new SnapshotMismatchError(`Bundle index ${bundle.index.digest} does not match its bytes (sha256 ${actual})`);
  const value = decodeCanonical(bytes, MAX_INDEX_BYTES, "Bundle index", 6);
  const version = versionOf(value);
  if (version !== BUNDLE_VERSION) throw new SnapshotMismatchError(`Bundle index version ${JSON.stringify(version)?.slice(0, 40) ?? "(none)"} is not supported`);
  const parsed = BundleIndexSchema.safeParse(value);
  if (!parsed.success) throw schemaFailure("Bundle index", parsed.error);
  const index = parsed.data;
  const needed = neededChunks(bundle);
  const seen = new Set<string>();
  const packDigests = new Set<string>();
  for (const pack of index.packs) {
    if (packDigests.has(pack.digest)) throw new SnapshotMismatchError(`Bundle index names pack ${pack.digest} twice`);
    packDigests.add(pack.digest);
    let total = 0;
    for (const [id, length] of pack.chunks) {
      const want = needed.get(id as ChunkId);
      if (want === undefined) throw new SnapshotMismatchError(`Bundle index names chunk ${id}, which no blob of the bundle needs`);
      if (want !== length) throw new SnapshotMismatchError(`Bundle index gives chunk ${id} ${length} bytes, the bundle needs ${want}`);
      if (seen.has(id)) throw new SnapshotMismatchError(`Bundle index names chunk ${id} twice`);
      seen.add(id);
      total += length;
    }
    if (total !== pack.size) throw new SnapshotMismatchError(`Bundle pack ${pack.digest} is ${pack.size} bytes, its chunks add up to ${total}`);
  }
  if (seen.size !== needed.size) throw new SnapshotMismatchError(`Bundle index carries ${seen.size} of the ${needed.size} chunks the bundle needs`);
  return index;
}

/** Encodes an index (canonical) and returns its bytes and digest. */
export function encodeIndex(index: BundleIndex): { bytes: Buffer; digest: Sha256Digest } {
  const checked = BundleIndexSchema.parse(index);
  const bytes = Buffer.from(canonicalJson(checked), "utf8");
  return { bytes, digest: sha256Of(bytes) };
}

