/**
 * The one store every content-addressed thing under the state directory uses: atomic writes and
 * bounded reads (`atomic.ts`), inter-process locks (`lock.ts`), the BLAKE3 chunk store
 * (`chunks.ts`), blobs made of chunks (`blobs.ts`) and signed snapshot manifests (`manifest.ts`).
 */
export { fsyncDir, readSmallFile, writeFileAtomic } from "./atomic.js";
export { FileLock, isAlive, parseOwnerTag, processIdentity, selfIdentity, uniqueOwnedName, type ProcessIdentity } from "./lock.js";
export { CHUNK_SIZE, ChunkStore, blake3Hex, isChunkId, isZero, type ChunkId } from "./chunks.js";
export { BlobRefSchema, MAX_BLOB_BYTES, blobCounts, chunkCount, chunkLength, materialize, storeFile, verifyBlob, type BlobCounts, type BlobRef } from "./blobs.js";
export {
  MANIFEST_SIGNATURE_DOMAIN,
  MANIFEST_VERSION,
  MAX_MANIFEST_BYTES,
  SnapshotManifestSchema,
  SnapshotShapeSchema,
  decodeSignedManifest,
  encodeSignedManifest,
  manifestDigest,
  type SignedManifest,
  type SnapshotManifest,
  type SnapshotShape,
} from "./manifest.js";
export {
  RECORD_SIGNATURE_DOMAIN,
  RECORD_VERSION,
  SnapshotRecordSchema,
  decodeRecord,
  encodeRecord,
  type SnapshotRecord,
} from "./snapshot-record.js";
export { IDENTITY_FILE, PART_NAMES, type PartName } from "./templates.js";
export {
  SnapshotStore,
  TEMPLATE_IDLE_SECONDS,
  type CreateSnapshotInput,
  type Materialized,
  type PartPaths,
  type StoreUsage,
  type StoredRetention,
  type StoredSnapshot,
  type SweepResult,
} from "./snapshot-store.js";
