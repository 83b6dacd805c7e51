/**
 * Snapshot records: what the registry knows about one snapshot beyond its content. A record binds
 * the engine's facts (id, kind, source sandbox, retention, last use, labels, boot-shape key) to a
 * signed manifest, and is itself signed with the same host key, so nothing the engine acts on
 * (what to restore, what to remove and when) comes from unsigned bytes.
 *
 * Wire form, one file `records/<id>`, canonical JSON:
 *
 *   { "record":    { "version": 1, "id", "digest", "kind", "source", "retention", "memory",
 *                    "key"?, "labels", "lastUsedAt" },
 *     "manifest":  <the signed manifest, as manifest.ts encodes it>,
 *     "signature": { "alg": "ed25519", "keyId": "sha256:<SPKI DER>", "value": "<128 hex>" } }
 *   signature.value = Ed25519(host key, "mvm.snapshot-record.v1\n" ‖ canonicalJson(record))
 *
 * `record.digest` must equal the manifest's digest: the record signature covers the manifest
 * through it. The decoder is as strict as the manifest's and every failure is
 * `SnapshotMismatchError`.
 */
import { sign, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import {
  InvalidArgumentError,
  SnapshotIdSchema,
  SnapshotMismatchError,
  SnapshotRetention,
  Sha256DigestSchema,
  canonicalJson,
  parseJsonStrict,
  type SnapshotRetention as ApiRetention,
} from "@mvm/protocol";
import { keyIdOf } from "../admission/plan.js";
import { MAX_MANIFEST_BYTES, decodeSignedManifest, manifestDigest, type SignedManifest } from "./manifest.js";

export const RECORD_VERSION = 1;
/** Bytes signed = this prefix + canonical JSON of the record. */
export const RECORD_SIGNATURE_DOMAIN = "mvm.snapshot-record.v1\n";
/** Largest record file read: a manifest at its limit and room for the rest. */
export const MAX_RECORD_BYTES = MAX_MANIFEST_BYTES + 64 * 1024;
/** Longest an engine-made snapshot may stay unused before retention removes it, seconds: 1 year. */
export const MAX_UNUSED_SECONDS = 365 * 24 * 3600;

/**
 * How long a stored snapshot is kept: the API's `{ ttlSeconds }` or `{ manual: true }`, or, for
 * engine-made boot snapshots only, `{ unusedSeconds }`: removed once that long has passed since
 * its last use (`SnapshotStore.touch`) or its creation.
 */
export type StoredRetention = ApiRetention | { readonly unusedSeconds: number };

const UnusedRetention = z.strictObject({ unusedSeconds: z.number().int().min(1).max(MAX_UNUSED_SECONDS) });
const Printable = (max: number) => z.string().min(1).max(max).regex(/^[\x21-\x7e]+$/);

export const SnapshotRecordSchema = z
  .strictObject({
    version: z.literal(RECORD_VERSION),
    id: SnapshotIdSchema,
    digest: Sha256DigestSchema,
    /** `user`: taken through the API; `boot`: made by the engine (the saved VM of a shape). */
    kind: z.enum(["user", "boot"]),
    /** The sandbox it was taken from (or, for boot snapshots, what made it). */
    source: z.string().min(1).max(64),
    retention: z.union([SnapshotRetention, UnusedRetention]),
    /** Whether process memory is in it. */
    memory: z.boolean(),
    /** Boot snapshots: the shape key they are found by. */
    key: Printable(128).optional(),
    labels: z.record(Printable(64), z.string().max(256)).refine((l) => Object.keys(l).length <= 32, "at most 32 labels"),
    lastUsedAt: z.iso.datetime({ offset: false }),
  })
  .refine((r) => (r.kind === "boot") === ("unusedSeconds" in r.retention), "unusedSeconds retention is for boot snapshots only, and they need it")
  .refine((r) => (r.kind === "boot") === (r.key !== undefined), "boot snapshots, and only they, carry a key");
export type SnapshotRecord = z.infer<typeof SnapshotRecordSchema>;

const RecordFileSchema = z.strictObject({
  record: z.unknown(),
  manifest: z.unknown(),
  signature: z.strictObject({
    alg: z.literal("ed25519"),
    keyId: Sha256DigestSchema,
    value: z.string().regex(/^[0-9a-f]{128}$/),
  }),
});

function signedBytes(record: SnapshotRecord): Buffer {
  return Buffer.from(RECORD_SIGNATURE_DOMAIN + canonicalJson(record), "utf8");
}

/** Validates and signs a record with its manifest (already in wire form); returns the file's bytes. */
export function encodeRecord(record: SnapshotRecord, manifestWire: Uint8Array, privateKey: KeyObject): Buffer {
  const parsed = SnapshotRecordSchema.safeParse(record);
  if (!parsed.success) throw new InvalidArgumentError(`Cannot sign snapshot record: ${parsed.error.issues[0]?.message ?? "invalid"}`, { cause: parsed.error });
  const manifest = parseJsonStrict(Buffer.from(manifestWire).toString("utf8"), { maxDepth: 8 });
  const value = sign(null, signedBytes(parsed.data), privateKey).toString("hex");
  return Buffer.from(canonicalJson({ record: parsed.data, manifest, signature: { alg: "ed25519", keyId: keyIdOf(privateKey), value } }), "utf8");
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

export interface DecodedRecord {
  readonly record: SnapshotRecord;
  readonly manifest: SignedManifest;
  /** The embedded manifest in its own wire form (as `encodeSignedManifest` made it). */
  readonly manifestWire: Buffer;
}

/**
 * Decodes and verifies a record file against `publicKey`: canonical JSON, a known version, the
 * strict schema, key and signature, then the embedded manifest (manifest.ts) and that its digest
 * is the one the record names.
 * @throws SnapshotMismatchError on anything else.
 */
export function decodeRecord(bytes: Uint8Array, publicKey: KeyObject): DecodedRecord {
  if (bytes.byteLength > MAX_RECORD_BYTES) throw new SnapshotMismatchError(`Snapshot record of ${bytes.byteLength} bytes is over ${MAX_RECORD_BYTES}`);
  let value: unknown;
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
    value = parseJsonStrict(text, { maxDepth: 10 });
    if (canonicalJson(value) !== text) throw new Error("not in canonical form");
  } catch (err) {
    throw new SnapshotMismatchError(`Snapshot record is not canonical JSON: ${(err as Error).message}`, { cause: err });
  }
  const outer = RecordFileSchema.safeParse(value);
  if (!outer.success) throw new SnapshotMismatchError("Snapshot record is malformed: expected {record, manifest, signature}", { cause: outer.error });
  const version = (outer.data.record as { version?: unknown } | null)?.version;
  if (version !== RECORD_VERSION) {
    throw new SnapshotMismatchError(`Snapshot record version ${JSON.stringify(version) ?? "(none)"} is not supported (this engine reads version ${RECORD_VERSION})`);
  }
  const inner = SnapshotRecordSchema.safeParse(outer.data.record);
  if (!inner.success) {
    const issue = inner.error.issues[0];
    throw new SnapshotMismatchError(`Snapshot record is malformed: ${issue?.path.join(".") ?? ""} ${issue?.message ?? ""}`.trim(), { cause: inner.error });
  }
  const keyId = keyIdOf(publicKey);
  const { signature } = outer.data;
  if (signature.keyId !== keyId) throw new SnapshotMismatchError(`Snapshot record is signed by key "${signature.keyId}", expected "${keyId}"`);
  if (!verify(null, signedBytes(inner.data), publicKey, Buffer.from(signature.value, "hex"))) {
    throw new SnapshotMismatchError("Snapshot record has a bad signature");
  }
  const manifestWire = Buffer.from(canonicalJson(outer.data.manifest), "utf8");
  const manifest = decodeSignedManifest(manifestWire, publicKey);
  const digest = manifestDigest(manifest.manifest);
  if (digest !== inner.data.digest) throw new SnapshotMismatchError(`Snapshot record names manifest ${inner.data.digest}, its manifest is ${digest}`);
  return { record: inner.data, manifest, manifestWire };
}
