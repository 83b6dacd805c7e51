import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import fc from "fast-check";
import { SnapshotMismatchError, canonicalJson } from "@mvm/protocol";
import { CHUNK_SIZE, type ChunkId } from "./chunks.js";
import { decodeSignedManifest, encodeSignedManifest, manifestDigest, MAX_MANIFEST_BYTES, type SnapshotManifest } from "./manifest.js";

const keys = generateKeyPairSync("ed25519");
const id = (c: string) => c.repeat(32) as ChunkId;
const sample: SnapshotManifest = {
  version: 1,
  createdAt: "2026-12-07T15:00:00.000Z",
  shape: { tier: "vm-emulated", imageDigest: `sha256:${"1".repeat(64)}`, kernelDigest: `sha256:${"2".repeat(64)}`, cpus: 1, memoryMiB: 1120, workMiB: 1024 },
  blobs: {
    ram: { sizeBytes: 3 * CHUNK_SIZE, chunks: [id("ab"), null, id("cd")] },
    device: { sizeBytes: 100, chunks: [id("ef")] },
  },
};

describe("snapshot manifest", () => {
  it("round-trips through its signed wire form, and its digest is stable", () => {
    const bytes = encodeSignedManifest(sample, keys.privateKey);
    const decoded = decodeSignedManifest(bytes, keys.publicKey);
    assert.deepEqual(decoded.manifest, sample);
    assert.equal(manifestDigest(decoded.manifest), manifestDigest(sample));
  });

  it("refuses any single-byte change of the wire form (fuzzed)", () => {
    const bytes = encodeSignedManifest(sample, keys.privateKey);
    fc.assert(
      fc.property(fc.nat({ max: bytes.length - 1 }), fc.integer({ min: 1, max: 255 }), (index, delta) => {
        const mutated = Buffer.from(bytes);
        mutated[index] = (mutated[index]! + delta) & 0xff;
        assert.throws(() => decodeSignedManifest(mutated, keys.publicKey), SnapshotMismatchError);
      }),
      { numRuns: 2000 },
    );
  });

  it("never throws anything but SnapshotMismatchError on arbitrary bytes or JSON", () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 512 }), fc.json().map((j) => Buffer.from(j))), (bytes) => {
        assert.throws(() => decodeSignedManifest(bytes, keys.publicKey), SnapshotMismatchError);
      }),
      { numRuns: 1000 },
    );
  });

  it("refuses an unknown version before looking at anything else, naming it", () => {
    const wire = JSON.parse(encodeSignedManifest(sample, keys.privateKey).toString());
    wire.manifest.version = 2;
    wire.manifest.futureField = true;
    assert.throws(() => decodeSignedManifest(Buffer.from(canonicalJson(wire)), keys.publicKey), /version 2 is not supported/);
  });

  it("refuses unknown fields, duplicate keys, a non-canonical encoding, another key and an oversized input", () => {
    const wire = JSON.parse(encodeSignedManifest(sample, keys.privateKey).toString());
    const extra = { ...wire, manifest: { ...wire.manifest, extra: 1 } };
    assert.throws(() => decodeSignedManifest(Buffer.from(canonicalJson(extra)), keys.publicKey), /malformed/);
    const text = canonicalJson(wire);
    const dup = text.replace('{"manifest":', '{"manifest":{},"manifest":');
    assert.throws(() => decodeSignedManifest(Buffer.from(dup), keys.publicKey), /canonical/);
    assert.throws(() => decodeSignedManifest(Buffer.from(JSON.stringify(wire, null, 1)), keys.publicKey), /canonical/);
    const other = generateKeyPairSync("ed25519");
    assert.throws(() => decodeSignedManifest(encodeSignedManifest(sample, other.privateKey), keys.publicKey), /signed by key/);
    assert.throws(() => decodeSignedManifest(Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20), keys.publicKey), /over/);
    const wrongCount = { ...sample, blobs: { ram: { sizeBytes: CHUNK_SIZE * 5, chunks: [null] } } };
    assert.throws(() => encodeSignedManifest(wrongCount, keys.privateKey), /chunk list/);
  });
});
