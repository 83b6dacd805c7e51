import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import fc from "fast-check";
import { SnapshotMismatchError, canonicalJson } from "@mvm/protocol";
import { CHUNK_SIZE, type ChunkId } from "./chunks.js";
import { encodeSignedManifest, manifestDigest, type SnapshotManifest } from "./manifest.js";
import { decodeRecord, encodeRecord, type SnapshotRecord } from "./snapshot-record.js";

const keys = generateKeyPairSync("ed25519");
const manifest: SnapshotManifest = {
  version: 1,
  createdAt: "2026-12-07T15:00:00.000Z",
  shape: { tier: "vm-emulated", imageDigest: `sha256:${"1".repeat(64)}`, cpus: 1, memoryMiB: 64, workMiB: 16 },
  blobs: { ram: { sizeBytes: 2 * CHUNK_SIZE, chunks: ["ab".repeat(32) as ChunkId, null] } },
};
const manifestWire = encodeSignedManifest(manifest, keys.privateKey);
const record: SnapshotRecord = {
  version: 1,
  id: "snap_abcdefghijklmnopqrst",
  digest: manifestDigest(manifest),
  kind: "user",
  source: "sbx_x",
  retention: { ttlSeconds: 3600 },
  memory: true,
  labels: { a: "b" },
  lastUsedAt: "2026-12-07T15:00:00.000Z",
};

describe("snapshot record", () => {
  it("round-trips through its signed wire form", () => {
    const decoded = decodeRecord(encodeRecord(record, manifestWire, keys.privateKey), keys.publicKey);
    assert.deepEqual(decoded.record, record);
    assert.deepEqual(decoded.manifest.manifest, manifest);
    assert.ok(decoded.manifestWire.equals(manifestWire));
  });

  it("never throws anything but SnapshotMismatchError on arbitrary bytes or JSON (fuzzed)", () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 512 }), fc.json().map((j) => Buffer.from(j))), (bytes) => {
        assert.throws(() => decodeRecord(bytes, keys.publicKey), SnapshotMismatchError);
      }),
      { numRuns: 1000 },
    );
  });

  it("refuses a record re-signed over another manifest's digest, and a boot record without its key", () => {
    const other = { ...record, digest: `sha256:${"0".repeat(64)}` };
    assert.throws(() => decodeRecord(encodeRecord(other, manifestWire, keys.privateKey), keys.publicKey), /names manifest/);
    assert.throws(() => encodeRecord({ ...record, kind: "boot", retention: { unusedSeconds: 60 } } as SnapshotRecord, manifestWire, keys.privateKey), /key/);
    const wire = JSON.parse(encodeRecord(record, manifestWire, keys.privateKey).toString());
    wire.record.extra = 1;
    assert.throws(() => decodeRecord(Buffer.from(canonicalJson(wire)), keys.publicKey), /malformed/);
  });
});
