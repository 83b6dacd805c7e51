/**
 * A saved VM's manifest (`manifest.json` beside its state file): what the engine recorded about
 * the state file when it saved it, checked before every restore.
 *
 *   { "version": 1,
 *     "shapeKey": "<sha256 hex of the shape: the directory's name>",
 *     "state": { "bytes": 150796875, "digest": "sha256:<hex of the state file>" } }
 *
 * The decoder is strict: another version, an unknown field, a digest of another algorithm or a
 * size that is not a safe integer is refused, and the saved VM is then not used.
 */
import { z } from "zod";
import { type Sha256Digest, Sha256DigestSchema, SnapshotMismatchError } from "@mvm/protocol";
import { describeIssue } from "../../admission/ir.js";

/** The only manifest version this engine reads and writes. */
export const SAVED_VM_MANIFEST_VERSION = 1;

const ManifestSchema = z.strictObject({
  version: z.literal(SAVED_VM_MANIFEST_VERSION),
  shapeKey: z.string().regex(/^[0-9a-f]{64}$/),
  state: z.strictObject({
    bytes: z.int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    digest: Sha256DigestSchema,
  }),
});

export interface SavedVmManifest {
  readonly version: typeof SAVED_VM_MANIFEST_VERSION;
  /** `shapeKey(shape)` of the saved VM: the name of its directory. */
  readonly shapeKey: string;
  /** The state file: its size in bytes and the sha256 of its bytes. */
  readonly state: { readonly bytes: number; readonly digest: Sha256Digest };
}

/**
 * Parses a manifest's text. Throws SnapshotMismatchError naming the first problem when it is not
 * JSON or not exactly a version 1 manifest.
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
  const { shapeKey, state } = parsed.data;
  return { version: SAVED_VM_MANIFEST_VERSION, shapeKey, state: { bytes: state.bytes, digest: state.digest as Sha256Digest } };
}

/** The manifest's text: fixed key order, one line. */
export function encodeSavedVmManifest(manifest: SavedVmManifest): string {
  const { version, shapeKey, state } = manifest;
  return `${JSON.stringify({ version, shapeKey, state: { bytes: state.bytes, digest: state.digest } })}\n`;
}
