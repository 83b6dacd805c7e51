/** The saved VM manifest's codec: round trip, and a strict decoder (fast-check). */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Sha256Digest, SnapshotMismatchError } from "@mvm/protocol";
import { SAVED_VM_MANIFEST_VERSION, type SavedVmManifest, decodeSavedVmManifest, encodeSavedVmManifest } from "./snapshot-manifest.js";

const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const partArb = fc.tuple(fc.maxSafeNat(), hex64).map(([bytes, digest]) => ({ bytes, digest: `sha256:${digest}` as Sha256Digest }));
const manifestArb: fc.Arbitrary<SavedVmManifest> = fc
  .tuple(hex64, partArb, partArb, partArb)
  .map(([shapeKey, ram, device, work]) => ({ version: SAVED_VM_MANIFEST_VERSION, shapeKey, parts: { ram, device, work } }));

const PART = { bytes: 150_796_875, digest: `sha256:${"b".repeat(64)}` as Sha256Digest };
const EXAMPLE: SavedVmManifest = {
  version: 2,
  shapeKey: "a".repeat(64),
  parts: { ram: PART, device: PART, work: PART },
};
const withPart = (part: unknown) => ({ ...EXAMPLE, parts: { ...EXAMPLE.parts, device: part } });

function rejects(text: string, message?: RegExp): void {
  assert.throws(() => decodeSavedVmManifest(text), (err: unknown) => {
    assert.ok(err instanceof SnapshotMismatchError, String(err));
    if (message !== undefined) assert.match(err.message, message);
    return true;
  });
}

describe("saved VM manifest", () => {
  it("has the layout docs/STORAGE.md shows", async () => {
    const doc = await readFile(new URL("../../../../../docs/STORAGE.md", import.meta.url), "utf8");
    const shown = doc.split("\n").find((line) => line.startsWith('{"version":2,"shapeKey":'));
    assert.ok(shown !== undefined, "docs/STORAGE.md shows no manifest");
    const filled = shown.replace("<hex: the directory's name>", "a".repeat(64)).replaceAll("<part>", JSON.stringify(PART));
    assert.equal(encodeSavedVmManifest(EXAMPLE), `${filled}\n`);
    assert.deepEqual(decodeSavedVmManifest(filled), EXAMPLE);
  });

  it("decodes what it encodes (property)", () => {
    fc.assert(fc.property(manifestArb, (m) => assert.deepEqual(decodeSavedVmManifest(encodeSavedVmManifest(m)), m)));
  });

  it("refuses other versions, unknown fields, other digest algorithms and bad sizes", () => {
    const text = (value: unknown) => JSON.stringify(value);
    rejects(text({ ...EXAMPLE, version: 1 }), /field "version"/);
    rejects(text({ ...EXAMPLE, version: "2" }), /field "version"/);
    rejects(text({ shapeKey: EXAMPLE.shapeKey, parts: EXAMPLE.parts }), /field "version"/);
    rejects(text({ ...EXAMPLE, extra: true }));
    rejects(text({ ...EXAMPLE, parts: { ram: PART, device: PART } }), /field "parts.work"/);
    rejects(text({ ...EXAMPLE, parts: { ...EXAMPLE.parts, tmp: PART } }));
    rejects(text(withPart({ ...PART, mtime: 1 })));
    rejects(text(withPart({ ...PART, digest: `blake3:${"b".repeat(64)}` })), /field "parts.device.digest"/);
    rejects(text(withPart({ ...PART, digest: `sha256:${"B".repeat(64)}` })), /field "parts.device.digest"/);
    rejects(text(withPart({ bytes: -1, digest: PART.digest })), /field "parts.device.bytes"/);
    rejects(text(withPart({ bytes: 1.5, digest: PART.digest })), /field "parts.device.bytes"/);
    rejects(text(withPart({ bytes: 2 ** 53, digest: PART.digest })), /field "parts.device.bytes"/);
    rejects(text({ ...EXAMPLE, shapeKey: "../x" }), /field "shapeKey"/);
    rejects('{"__proto__":{"version":2},"shapeKey":"x"}');
    rejects("", /not JSON/);
    rejects("null");
    rejects("[]");
  });

  it("refuses any version but 2 (property)", () => {
    fc.assert(
      fc.property(manifestArb, fc.jsonValue().filter((v) => v !== 2), (m, version) => {
        rejects(JSON.stringify({ ...m, version }));
      }),
    );
  });

  it("refuses any extra field, at the top, in parts or in a part (property)", () => {
    const key = fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !["version", "shapeKey", "parts", "ram", "device", "work", "bytes", "digest"].includes(k));
    fc.assert(
      fc.property(manifestArb, key, fc.jsonValue(), fc.constantFrom("top", "parts", "part"), (m, name, value, where) => {
        const mutated =
          where === "top" ? { ...m, [name]: value } : where === "parts" ? { ...m, parts: { ...m.parts, [name]: value } } : { ...m, parts: { ...m.parts, ram: { ...m.parts.ram, [name]: value } } };
        rejects(JSON.stringify(mutated));
      }),
    );
  });

  it("never accepts arbitrary text or JSON that is not a manifest, and fails only with SnapshotMismatchError (property)", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json()), (text) => {
        try {
          const m = decodeSavedVmManifest(text);
          // Only a real manifest decodes; it then encodes back to the same value.
          assert.deepEqual(decodeSavedVmManifest(encodeSavedVmManifest(m)), m);
        } catch (err) {
          assert.ok(err instanceof SnapshotMismatchError, String(err));
        }
      }),
    );
  });
});
