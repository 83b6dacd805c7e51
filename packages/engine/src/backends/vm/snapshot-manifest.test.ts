/** The saved VM manifest's codec: round trip, and a strict decoder (fast-check). */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Sha256Digest, SnapshotMismatchError } from "@mvm/protocol";
import { SAVED_VM_MANIFEST_VERSION, type SavedVmManifest, decodeSavedVmManifest, encodeSavedVmManifest } from "./snapshot-manifest.js";

const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const manifestArb: fc.Arbitrary<SavedVmManifest> = fc
  .tuple(hex64, fc.maxSafeNat(), hex64)
  .map(([shapeKey, bytes, digest]) => ({ version: SAVED_VM_MANIFEST_VERSION, shapeKey, state: { bytes, digest: `sha256:${digest}` as Sha256Digest } }));

const EXAMPLE: SavedVmManifest = {
  version: 1,
  shapeKey: "a".repeat(64),
  state: { bytes: 150_796_875, digest: `sha256:${"b".repeat(64)}` as Sha256Digest },
};

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
    const shown = doc.split("\n").find((line) => line.startsWith('{"version":1,"shapeKey":'));
    assert.ok(shown !== undefined, "docs/STORAGE.md shows no manifest");
    const filled = shown.replace("<hex: the directory's name>", "a".repeat(64)).replace("sha256:<hex>", `sha256:${"b".repeat(64)}`);
    assert.equal(encodeSavedVmManifest(EXAMPLE), `${filled}\n`);
    assert.deepEqual(decodeSavedVmManifest(filled), EXAMPLE);
  });

  it("decodes what it encodes (property)", () => {
    fc.assert(fc.property(manifestArb, (m) => assert.deepEqual(decodeSavedVmManifest(encodeSavedVmManifest(m)), m)));
  });

  it("refuses other versions, unknown fields, other digest algorithms and bad sizes", () => {
    const text = (value: unknown) => JSON.stringify(value);
    rejects(text({ ...EXAMPLE, version: 2 }), /field "version"/);
    rejects(text({ ...EXAMPLE, version: "1" }), /field "version"/);
    rejects(text({ shapeKey: EXAMPLE.shapeKey, state: EXAMPLE.state }), /field "version"/);
    rejects(text({ ...EXAMPLE, extra: true }));
    rejects(text({ ...EXAMPLE, state: { ...EXAMPLE.state, mtime: 1 } }));
    rejects(text({ ...EXAMPLE, state: { ...EXAMPLE.state, digest: `blake3:${"b".repeat(64)}` } }), /field "state.digest"/);
    rejects(text({ ...EXAMPLE, state: { ...EXAMPLE.state, digest: `sha256:${"B".repeat(64)}` } }), /field "state.digest"/);
    rejects(text({ ...EXAMPLE, state: { bytes: -1, digest: EXAMPLE.state.digest } }), /field "state.bytes"/);
    rejects(text({ ...EXAMPLE, state: { bytes: 1.5, digest: EXAMPLE.state.digest } }), /field "state.bytes"/);
    rejects(text({ ...EXAMPLE, state: { bytes: 2 ** 53, digest: EXAMPLE.state.digest } }), /field "state.bytes"/);
    rejects(text({ ...EXAMPLE, shapeKey: "../x" }), /field "shapeKey"/);
    rejects('{"__proto__":{"version":1},"shapeKey":"x"}');
    rejects("", /not JSON/);
    rejects("null");
    rejects("[]");
  });

  it("refuses any version but 1 (property)", () => {
    fc.assert(
      fc.property(manifestArb, fc.jsonValue().filter((v) => v !== 1), (m, version) => {
        rejects(JSON.stringify({ ...m, version }));
      }),
    );
  });

  it("refuses any extra field, at the top or in state (property)", () => {
    const key = fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !["version", "shapeKey", "state", "bytes", "digest"].includes(k));
    fc.assert(
      fc.property(manifestArb, key, fc.jsonValue(), fc.boolean(), (m, name, value, inState) => {
        const mutated = inState ? { ...m, state: { ...m.state, [name]: value } } : { ...m, [name]: value };
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
