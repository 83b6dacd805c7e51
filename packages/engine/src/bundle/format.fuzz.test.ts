/**
 * Property-based tests of every bundle parser: bundle.json, the index, the OCI manifest and index,
 * and the location parser. Random inputs and mutations of valid ones give a value or the parser's
 * one typed error, never anything else; a mutated bundle.json or index that still decodes is the
 * same document (the canonical encoding admits one text per value).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError, SnapshotMismatchError, canonicalJson } from "@mvm/protocol";
import { MEDIA_TYPE_OCI_EMPTY, MEDIA_TYPE_OCI_MANIFEST, parseOciIndex, parseOciManifest } from "../oci/manifest.js";
import { CHUNK_SIZE } from "../store/chunks.js";
import { manifestDigest, type SnapshotManifest } from "../store/manifest.js";
import { BUNDLE_MEDIA_TYPE, decodeBundleJson, decodeIndex, encodeBundleJson, encodeIndex, sha256Of, type BundleJson } from "./format.js";
import { parseBundleDestination, parseBundleSource } from "./uri.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 300);
const hex = (c: string) => c.repeat(64);

const manifest: SnapshotManifest = {
  version: 1,
  createdAt: "2026-12-07T00:00:00.000Z",
  shape: { tier: "container", imageDigest: `sha256:${hex("a")}`, workMiB: 64 },
  blobs: { work: { sizeBytes: CHUNK_SIZE + 10, chunks: [hex("1") as never, hex("2") as never] }, tmp: { sizeBytes: 5, chunks: [hex("3") as never] } },
};
const index = {
  version: 1 as const,
  packs: [
    { digest: `sha256:${hex("b")}`, size: CHUNK_SIZE + 10 + 5, chunks: [[hex("1"), CHUNK_SIZE], [hex("2"), 10], [hex("3"), 5]] as [never, number][] },
    { digest: `sha256:${hex("c")}`, size: 100, chunks: [[hex("4"), 100]] as [never, number][] },
  ],
};
const indexEnc = encodeIndex(index);
const bundle: BundleJson = {
  mediaType: BUNDLE_MEDIA_TYPE,
  version: 1,
  kind: "snapshot",
  createdAt: "2026-12-07T00:00:01.000Z",
  snapshot: { digest: manifestDigest(manifest), manifest, labels: { "mvm/resources": "{}" } },
  image: { digest: `sha256:${hex("a")}`, tar: { sizeBytes: 100, chunks: [hex("4") as never] } },
  index: { digest: indexEnc.digest, size: indexEnc.bytes.length },
};
const bundleEnc = encodeBundleJson(bundle);

/** A byte-level mutation: flip, insert, delete or overwrite at a position. */
const mutation = fc.tuple(fc.constantFrom("flip", "insert", "delete", "set"), fc.nat(), fc.integer({ min: 0, max: 255 }));
function mutate(bytes: Buffer, [op, at, value]: [string, number, number]): Buffer {
  const i = at % (bytes.length + 1);
  if (op === "insert") return Buffer.concat([bytes.subarray(0, i), Buffer.from([value]), bytes.subarray(i)]);
  if (i === bytes.length) return bytes;
  if (op === "delete") return Buffer.concat([bytes.subarray(0, i), bytes.subarray(i + 1)]);
  const out = Buffer.from(bytes);
  out[i] = op === "flip" ? (out[i] ?? 0) ^ (1 << (value % 8)) : value;
  return out;
}

function onlyMismatch(fn: () => unknown): unknown {
  try {
    return fn();
  } catch (err) {
    assert.ok(err instanceof SnapshotMismatchError, `${(err as Error).name}: ${(err as Error).message}`);
    return undefined;
  }
}

describe("bundle.json and index decoders (fuzz)", () => {
  it("decode what encode made", () => {
    assert.deepEqual(decodeBundleJson(bundleEnc.bytes, bundleEnc.digest), bundle);
    assert.deepEqual(decodeIndex(indexEnc.bytes, bundle), index);
  });

  it("random bytes are only ever SnapshotMismatchError", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (raw) => {
        const bytes = Buffer.from(raw);
        onlyMismatch(() => decodeBundleJson(bytes, sha256Of(bytes)));
        onlyMismatch(() => decodeIndex(bytes, { ...bundle, index: { digest: sha256Of(bytes), size: bytes.length } }));
      }),
      { numRuns: RUNS },
    );
  });

  it("random JSON values are only ever SnapshotMismatchError", () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (value) => {
        const bytes = Buffer.from(canonicalJson(value));
        onlyMismatch(() => decodeBundleJson(bytes, sha256Of(bytes)));
        onlyMismatch(() => decodeIndex(bytes, { ...bundle, index: { digest: sha256Of(bytes), size: bytes.length } }));
      }),
      { numRuns: RUNS },
    );
  });

  it("a mutated bundle.json (digest recomputed) decodes to the same bundle or fails typed", () => {
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ops) => {
        const bytes = ops.reduce(mutate, bundleEnc.bytes);
        const out = onlyMismatch(() => decodeBundleJson(bytes, sha256Of(bytes)));
        if (out !== undefined) assert.equal(canonicalJson(out), bytes.toString());
      }),
      { numRuns: RUNS },
    );
  });

  it("a mutated bundle.json under the original digest always fails", () => {
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ops) => {
        const bytes = ops.reduce(mutate, bundleEnc.bytes);
        fc.pre(!bytes.equals(bundleEnc.bytes));
        assert.throws(() => decodeBundleJson(bytes, bundleEnc.digest), SnapshotMismatchError);
      }),
      { numRuns: RUNS },
    );
  });

  it("a mutated index (digest recomputed) passes only when it still carries exactly the chunks the bundle needs", () => {
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ops) => {
        const bytes = ops.reduce(mutate, indexEnc.bytes);
        const out = onlyMismatch(() => decodeIndex(bytes, { ...bundle, index: { digest: sha256Of(bytes), size: bytes.length } })) as typeof index | undefined;
        if (out !== undefined) {
          const ids = out.packs.flatMap((p) => p.chunks.map(([id]) => id)).sort();
          assert.deepEqual(ids, [hex("1"), hex("2"), hex("3"), hex("4")]);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it("refuses the cross-check failures by name", () => {
    const enc = (i: unknown) => {
      const bytes = Buffer.from(canonicalJson(i));
      return () => decodeIndex(bytes, { ...bundle, index: { digest: sha256Of(bytes), size: bytes.length } });
    };
    const p0 = index.packs[0]!;
    const p1 = index.packs[1]!;
    assert.throws(enc({ ...index, packs: [p0] }), /carries 3 of the 4/);
    assert.throws(enc({ ...index, packs: [p0, p1, { ...p1, digest: `sha256:${hex("d")}` }] }), /twice/);
    assert.throws(enc({ ...index, packs: [{ ...p0, size: p0.size + 1 }, p1] }), /add up to/);
    assert.throws(enc({ ...index, packs: [p0, { ...p1, chunks: [[hex("4"), 99]], size: 99 }] }), /the bundle needs 100/);
    assert.throws(enc({ ...index, packs: [p0, p1, { digest: `sha256:${hex("e")}`, size: 1, chunks: [[hex("5"), 1]] }] }), /no blob of the bundle needs/);
    const other = { ...manifest, createdAt: "2026-12-07T00:00:02.000Z" };
    const wrong = Buffer.from(canonicalJson({ ...bundle, snapshot: { ...bundle.snapshot!, manifest: other } }));
    assert.throws(() => decodeBundleJson(wrong, sha256Of(wrong)), /its manifest is/);
    const v2 = Buffer.from(canonicalJson({ ...bundle, version: 2 }));
    assert.throws(() => decodeBundleJson(v2, sha256Of(v2)), /version 2 is not supported/);
    const spaced = Buffer.from(JSON.stringify(bundle, null, 1));
    assert.throws(() => decodeBundleJson(spaced, sha256Of(spaced)), /canonical/);
  });
});

describe("OCI manifest and index parsers (fuzz)", () => {
  const ociManifest = Buffer.from(
    canonicalJson({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      config: { mediaType: MEDIA_TYPE_OCI_EMPTY, digest: `sha256:${hex("0")}`, size: 2 },
      layers: [{ mediaType: "application/octet-stream", digest: `sha256:${hex("1")}`, size: 10, annotations: { a: "b" } }],
    }),
  );
  const onlyInvalid = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      assert.ok(err instanceof InvalidArgumentError, `${(err as Error).name}: ${(err as Error).message}`);
    }
  };
  it("random and mutated inputs give a value or InvalidArgumentError", () => {
    parseOciManifest(ociManifest);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1024 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.jsonValue({ maxDepth: 5 }), (raw, ops, value) => {
        for (const bytes of [Buffer.from(raw), ops.reduce(mutate, ociManifest), Buffer.from(JSON.stringify(value) ?? "null")]) {
          onlyInvalid(() => parseOciManifest(bytes));
          onlyInvalid(() => parseOciIndex(bytes));
        }
      }),
      { numRuns: RUNS },
    );
  });
  it("refuses unknown fields and duplicate keys", () => {
    assert.throws(() => parseOciManifest(Buffer.from(ociManifest.toString().replace('"schemaVersion":2', '"schemaVersion":2,"extra":1'))), InvalidArgumentError);
    assert.throws(() => parseOciManifest(Buffer.from(ociManifest.toString().replace('"schemaVersion":2', '"schemaVersion":2,"schemaVersion":2'))), InvalidArgumentError);
  });
});

describe("bundle locations", () => {
  const D = `sha256:${hex("f")}`;
  it("accepts the four forms", () => {
    assert.deepEqual(parseBundleSource(`file:///srv/bundles@${D}`), { location: { kind: "file", dir: "/srv/bundles" }, digest: D });
    assert.deepEqual(parseBundleSource(`https://example.org:8443/a/b@${D}`).location, { kind: "https", base: "https://example.org:8443/a/b" });
    assert.deepEqual(parseBundleSource(`oci://registry.example/team/bundles@${D}`).location, { kind: "oci", origin: "https://registry.example", repository: "team/bundles" });
    assert.deepEqual(parseBundleSource(`oci+http://127.0.0.1:5000/t@${D}`).location, { kind: "oci", origin: "http://127.0.0.1:5000", repository: "t" });
    assert.deepEqual(parseBundleDestination("oci://registry.example/team/bundles:v1"), { kind: "oci", origin: "https://registry.example", repository: "team/bundles", tag: "v1" });
    assert.deepEqual(parseBundleDestination("file:///srv/out/"), { kind: "file", dir: "/srv/out" });
  });

  it("refuses what the pull rules refuse", () => {
    const bad = [
      `file:///srv/bundles`, // not pinned
      `file://srv/bundles@${D}`, // relative (host form)
      `file:///srv/../etc@${D}`,
      `file:///srv/./x@${D}`,
      `file:///srv//x@${D}`,
      `file:///srv/b%2e%2e@${D}`,
      `file:///srv/x?y=1@${D}`,
      `file:///srv/x#frag@${D}`,
      `file:///@${D}`,
      `https://user:pw@example.org/x@${D}`,
      `https://user@example.org/x@${D}`,
      `https://example.org/x?digest=1@${D}`,
      `https://Example.org/x@${D}`,
      `http://example.org/x@${D}`,
      `oci+http://registry.example/t@${D}`, // plain http off loopback
      `oci://registry.example/t:latest@${D}`, // a tag in a pull
      `oci://registry.example/T@${D}`,
      `oci://registry.example@${D}`,
      `ftp://example.org/x@${D}`,
      `file:///srv/x@sha256:${hex("F")}`,
      `file:///srv/x@sha512:${hex("f")}`,
      `file:///srv/ x@${D}`,
      `file:///srv/x\\y@${D}`,
      `file:///${"a/".repeat(1100)}@${D}`,
    ];
    for (const uri of bad) assert.throws(() => parseBundleSource(uri), InvalidArgumentError, uri);
    assert.throws(() => parseBundleDestination(`https://example.org/x`), InvalidArgumentError);
    assert.throws(() => parseBundleDestination(`file:///srv/x@${D}`), InvalidArgumentError);
  });

  it("random and mutated strings give a location or InvalidArgumentError, and an accepted one has no forbidden syntax", () => {
    const seeds = [`file:///srv/bundles@${D}`, `https://example.org/a@${D}`, `oci://r.example/t/b@${D}`, `oci+http://127.0.0.1:5000/t@${D}`];
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), fc.constantFrom(...seeds), fc.array(mutation, { minLength: 1, maxLength: 3 }), (random, seed, ops) => {
        const mutated = ops.reduce(mutate, Buffer.from(seed)).toString("latin1");
        for (const uri of [random, mutated]) {
          try {
            parseBundleSource(uri);
            assert.ok(!/[?#%\\\s]|\/\.\.?(\/|@)|\/\//.test(uri.replace(/^[a-z+]+:\/\//, "")), uri);
          } catch (err) {
            assert.ok(err instanceof InvalidArgumentError, `${(err as Error).name}: ${(err as Error).message}`);
          }
        }
      }),
      { numRuns: RUNS },
    );
  });
});
