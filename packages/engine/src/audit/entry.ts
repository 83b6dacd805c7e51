/**
 * One audit entry: a strict, versioned schema, its canonical bytes, its hash and its signature.
 *
 * An entry is `{ v: 1, seq, ts, prev, event, hash, sig }`:
 * - `seq` counts from 1 without gaps; `ts` is the append time (ISO 8601, UTC, milliseconds);
 * - `prev` is sha256 (hex) of the previous entry's line (its canonical JSON, hash and sig
 *   included, without the newline), or 64 zeros for the first entry;
 * - `hash` is sha256 (hex) of `canonicalJson({ v, seq, ts, prev, event })`;
 * - `sig` is the Ed25519 signature of the 32 hash bytes, base64.
 *
 * Events carry identifiers, digests, counts and enums only: argv and file paths are stored as
 * sha256 digests, and no field accepts free text, so no field can carry a secret value.
 */
import { createHash, sign, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import { canonicalJson } from "@mvm/protocol";

/** 64 lowercase hex digits: a sha256 digest without prefix. */
export const HexDigestSchema = z.string().regex(/^[0-9a-f]{64}$/);
/** The `prev` of the first entry. */
export const GENESIS_PREV = "0".repeat(64);

const SandboxId = z.string().regex(/^sbx_[a-z2-7]{20}$/);
const ImageDigest = z.string().regex(/^sha256:[0-9a-f]{64}$/);
/** Identifiers minted by the engine (plan, exec and policy ids): short, no spaces, no secrets. */
const OpaqueId = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/);
const Count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const Hostname = z.string().regex(/^(?=.{1,253}$)[a-z0-9*]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/);
const Timestamp = z.iso.datetime({ precision: 3 });

/** Why a plan or request was refused: a stable code, never free text. */
export const DenialReason = z.enum([
  "signature_invalid",
  "plan_expired",
  "plan_not_yet_valid",
  "nonce_replayed",
  "policy_violation",
  "capability_unsupported",
  "malformed",
  /** The create request did not describe the plan's workload. */
  "request_mismatch",
]);

const SnapshotIdField = z.string().regex(/^snap_[a-z2-7]{20}$/);

export const AuditEventSchema = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("plan.admitted"), planId: OpaqueId, planDigest: HexDigestSchema }),
  z.strictObject({ type: z.literal("plan.denied"), planId: OpaqueId.optional(), planDigest: HexDigestSchema, reason: DenialReason }),
  z.strictObject({
    type: z.literal("sandbox.created"),
    sandboxId: SandboxId,
    planId: OpaqueId.optional(),
    imageDigest: ImageDigest,
    backend: z.enum(["namespace", "vm"]),
  }),
  /** A warm sandbox (started under a plan of intent pool:warm) handed to a create admitted under `planId`. */
  z.strictObject({ type: z.literal("sandbox.claimed"), sandboxId: SandboxId, planId: OpaqueId, pool: z.string().regex(/^pool_[0-9a-f]{16}$/) }),
  z.strictObject({ type: z.literal("sandbox.killed"), sandboxId: SandboxId, by: z.enum(["caller", "engine", "oom", "crash"]) }),
  z.strictObject({ type: z.literal("sandbox.expired"), sandboxId: SandboxId, ttlSeconds: Count }),
  /** `by`: a caller's pause, or the TTL running out under `onTtl: "pause"`; `ttl`: whether the TTL runs on while paused. */
  z.strictObject({
    type: z.literal("sandbox.paused"),
    sandboxId: SandboxId,
    by: z.enum(["caller", "ttl"]),
    ttl: z.enum(["running", "frozen", "spent"]),
  }),
  z.strictObject({ type: z.literal("sandbox.resumed"), sandboxId: SandboxId, pausedMs: Count }),
  /** A caller set the TTL of a live sandbox: it ends `ttlSeconds` after this entry (time left at resume when frozen). */
  z.strictObject({ type: z.literal("sandbox.ttl_set"), sandboxId: SandboxId, ttlSeconds: Count }),
  /** A guest port published on a live sandbox (ports published at create are in its plan). */
  z.strictObject({ type: z.literal("port.published"), sandboxId: SandboxId, guest: z.int().min(1).max(65535), host: z.int().min(1).max(65535) }),
  z.strictObject({
    type: z.literal("exec.started"),
    sandboxId: SandboxId,
    execId: OpaqueId,
    /** sha256 of canonicalJson(argv): the argv itself is never stored. */
    argvDigest: HexDigestSchema,
    argc: Count,
  }),
  z.strictObject({
    type: z.literal("exec.finished"),
    sandboxId: SandboxId,
    execId: OpaqueId,
    exitCode: z.number().int().min(0).max(255).nullable(),
    signal: z.string().regex(/^SIG[A-Z0-9]{1,10}$/).nullable(),
    timedOut: z.boolean(),
    durationMs: Count,
  }),
  z.strictObject({
    type: z.literal("file.written"),
    sandboxId: SandboxId,
    /** sha256 of the UTF-8 path inside the sandbox. */
    pathDigest: HexDigestSchema,
    sizeBytes: Count,
    contentSha256: HexDigestSchema.optional(),
  }),
  z.strictObject({
    type: z.literal("network.summary"),
    sandboxId: SandboxId,
    fromTs: Timestamp,
    toTs: Timestamp,
    allowedConnections: Count,
    deniedConnections: Count,
    /** Up to 16 distinct destination host names that were refused. */
    deniedHosts: z.array(Hostname).max(16),
  }),
  /** A snapshot taken of a sandbox; `digest` is its manifest's sha256 (hex), which names every chunk. */
  z.strictObject({
    type: z.literal("snapshot.created"),
    snapshotId: SnapshotIdField,
    digest: HexDigestSchema,
    sandboxId: SandboxId,
    memory: z.boolean(),
    storedBytes: Count,
  }),
  /** A sandbox started from a snapshot (create with fromSnapshot, or one child of a fork). */
  z.strictObject({ type: z.literal("snapshot.restored"), snapshotId: SnapshotIdField, digest: HexDigestSchema, sandboxId: SandboxId }),
  z.strictObject({
    type: z.literal("snapshot.forked"),
    sandboxId: SandboxId,
    digest: HexDigestSchema,
    children: z.array(SandboxId).max(64),
  }),
  /** `by`: a caller's delete, retention running out, or the engine (a fork's snapshot once its children run). */
  z.strictObject({
    type: z.literal("snapshot.deleted"),
    snapshotId: SnapshotIdField,
    digest: HexDigestSchema,
    by: z.enum(["caller", "retention", "engine"]),
  }),
  /** A bundle made of a snapshot (`sourceDigest`: its manifest's) or an image (the image's digest). */
  z.strictObject({ type: z.literal("bundle.pushed"), bundleDigest: HexDigestSchema, kind: z.enum(["snapshot", "image"]), sourceDigest: HexDigestSchema }),
  /** A bundle pulled and verified: its image is stored, and for a snapshot bundle `snapshotId` is the new snapshot. */
  z.strictObject({
    type: z.literal("bundle.pulled"),
    bundleDigest: HexDigestSchema,
    kind: z.enum(["snapshot", "image"]),
    imageDigest: HexDigestSchema,
    snapshotId: SnapshotIdField.optional(),
  }),
  /**
   * An image refused by one of the operator policy's image rules, at a create (or its plan) or at
   * a pull: the rule, sha256 of the reference as given (names are not free text here), and the
   * image's digest once it was resolved.
   */
  z.strictObject({
    type: z.literal("image.refused"),
    rule: z.enum(["requireDigestPinnedImages", "allowedRegistries", "requireImageProvenance"]),
    at: z.enum(["create", "pull"]),
    refDigest: HexDigestSchema,
    imageDigest: HexDigestSchema.optional(),
  }),
  z.strictObject({
    type: z.literal("policy.changed"),
    policyId: OpaqueId,
    previousDigest: HexDigestSchema.nullable(),
    policyDigest: HexDigestSchema,
  }),
]);
export type AuditEvent = z.infer<typeof AuditEventSchema>;
export type AuditEventType = AuditEvent["type"];

/** The signed part of an entry. */
export const UnsignedEntrySchema = z.strictObject({
  v: z.literal(1),
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  ts: Timestamp,
  prev: HexDigestSchema,
  event: AuditEventSchema,
});
export type UnsignedEntry = z.infer<typeof UnsignedEntrySchema>;

export const AuditEntrySchema = z.strictObject({
  ...UnsignedEntrySchema.shape,
  hash: HexDigestSchema,
  sig: z.string().regex(/^[A-Za-z0-9+/]{86}==$/),
});
export type AuditEntry = z.infer<typeof AuditEntrySchema>;

/** The longest line an entry may take, newline excluded. Longer lines are rejected unread. */
export const MAX_ENTRY_BYTES = 8192;

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** sha256 of `canonicalJson(argv)`, the form in which `exec.started` records a command. */
export function argvDigest(argv: readonly string[]): string {
  return sha256Hex(canonicalJson(argv));
}

/**
 * `canonicalJson({ v, seq, ts, prev, event })`, built from its parts: the keys of an entry are
 * fixed, so their sorted order is too (event, hash, prev, seq, sig, ts, v). `entry.test.ts` checks
 * it against `canonicalJson`.
 */
function unsignedCanonical(entry: UnsignedEntry, eventJson: string): string {
  return `{"event":${eventJson},"prev":${JSON.stringify(entry.prev)},"seq":${canonicalJson(entry.seq)},"ts":${JSON.stringify(entry.ts)},"v":${canonicalJson(entry.v)}}`;
}

/** Hash of the signed part of an entry. */
export function entryHash(entry: UnsignedEntry): string {
  return sha256Hex(unsignedCanonical(entry, canonicalJson(entry.event)));
}

/** The canonical line of an entry and the hash its content should carry, with one encoding of the event. */
export function encodeEntry(entry: AuditEntry): { line: string; contentHash: string } {
  const eventJson = canonicalJson(entry.event);
  const contentHash = sha256Hex(unsignedCanonical(entry, eventJson));
  const line = `{"event":${eventJson},"hash":${JSON.stringify(entry.hash)},"prev":${JSON.stringify(entry.prev)},"seq":${canonicalJson(entry.seq)},"sig":${JSON.stringify(entry.sig)},"ts":${JSON.stringify(entry.ts)},"v":${canonicalJson(entry.v)}}`;
  return { line, contentHash };
}

/** Completes `entry` with its hash and signature. `key` is an Ed25519 private key. */
export function signEntry(entry: UnsignedEntry, key: KeyObject): AuditEntry {
  const hash = entryHash(entry);
  const sig = sign(null, Buffer.from(hash, "hex"), key).toString("base64");
  return { ...entry, hash, sig };
}

/** True when `sig` is `publicKey`'s signature of `hash`. */
export function signatureValid(entry: Pick<AuditEntry, "hash" | "sig">, publicKey: KeyObject): boolean {
  return verify(null, Buffer.from(entry.hash, "hex"), publicKey, Buffer.from(entry.sig, "base64"));
}

/** The line an entry is stored as (without the newline): `canonicalJson(entry)`. */
export function entryLine(entry: AuditEntry): string {
  return encodeEntry(entry).line;
}
