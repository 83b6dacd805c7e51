/**
 * A saved VM's manifest (`manifest.json` in its directory): what the engine recorded about each
 * part when it saved it, checked before the saved VM is used.
 *
 *   { "version": 2,
 *     "shapeKey": "<sha256 hex of the shape: the directory's name>",
 *     "parts": {
 *       "ram":    { "bytes": 637534208, "digest": "sha256:<hex>" },   guest RAM (sparse file)
 *       "device": { "bytes": 412311,    "digest": "sha256:<hex>" },   QEMU device state
 *       "work":   { "bytes": 1073741824, "digest": "sha256:<hex>" } } work disk
 *
 * The decoder is strict: another version, an unknown field, a missing part, a digest of another
 * algorithm or a size that is not a safe integer is refused, and the saved VM is then not used.
 */
import { z } from "zod";
import { type Sha256Digest, Sha256DigestSchema, SnapshotMismatchError } from "@mvm/protocol";
import { describeIssue } from "../../admission/ir.js";

/** The only manifest version this engine reads and writes. */
export const SAVED_VM_MANIFEST_VERSION = 2;

const PartSchema = z.strictObject({
  bytes: z.int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  digest: Sha256DigestSchema,
});

const ManifestSchema = z.strictObject({
  version: z.literal(SAVED_VM_MANIFEST_VERSION),
  shapeKey: z.string().regex(/^[0-9a-f]{64}$/),
  parts: z.strictObject({ ram: PartSchema, device: PartSchema, work: PartSchema }),
});

/** One part file: its size in bytes and the sha256 of its bytes. */
export interface SavedPartRecord {
  readonly bytes: number;
  readonly digest: Sha256Digest;
}

/** The part names of a saved VM, each also its file name. */
export const SAVED_VM_PARTS = ["ram", "device", "work"] as const;
export type SavedVmPart = (typeof SAVED_VM_PARTS)[number];

export interface SavedVmManifest {
  readonly version: typeof SAVED_VM_MANIFEST_VERSION;
  /** `shapeKey(shape)` of the saved VM: the name of its directory. */
  readonly shapeKey: string;
  readonly parts: Readonly<Record<SavedVmPart, SavedPartRecord>>;
}

/**
 * Parses a manifest's text. Throws SnapshotMismatchError naming the first problem when it is not
 * JSON or not exactly a version 2 manifest.
 * @example
 * const manifest = decodeSavedVmManifest(await readFile(join(dir, "manifest.json"), "utf8"));
 */
export function decodeSavedVmManifest(text: string): SavedVmManifest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new SnapshotMismatchError("Invalid saved VM manifest: not JSON", { cause });
  }
  const parsed = ManifestSchema.safeParse(value);
  if (!parsed.success) throw new SnapshotMismatchError(`Invalid saved VM manifest: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  const { shapeKey, parts } = parsed.data;
  const part = (p: { bytes: number; digest: string }): SavedPartRecord => ({ bytes: p.bytes, digest: p.digest as Sha256Digest });
  return { version: SAVED_VM_MANIFEST_VERSION, shapeKey, parts: { ram: part(parts.ram), device: part(parts.device), work: part(parts.work) } };
}

/** The manifest's text: fixed key order, one line. */
export function encodeSavedVmManifest(manifest: SavedVmManifest): string {
  const { version, shapeKey, parts } = manifest;
  const part = (p: SavedPartRecord) => ({ bytes: p.bytes, digest: p.digest });
  return `${JSON.stringify({ version, shapeKey, parts: { ram: part(parts.ram), device: part(parts.device), work: part(parts.work) } })}\n`;
}
