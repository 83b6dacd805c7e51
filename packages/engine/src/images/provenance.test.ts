import { strict as assert } from "node:assert";
import { generateKeyPairSync } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { AdmissionError, type BuildProvenance } from "@mvm/protocol";
import { decodeSignedProvenance, encodeSignedProvenance, provenanceDigest, readInstalledPackages } from "./provenance.js";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const IMAGE = `sha256:${"a".repeat(64)}`;
const sample: BuildProvenance = {
  version: 1,
  imageDigest: IMAGE,
  ref: "debian:bookworm+python3",
  suite: "bookworm",
  packages: ["python3"],
  installed: [
    { package: "bash", version: "5.2.15-2+b7", architecture: "amd64" },
    { package: "python3", version: "3.11.2-1+b1", architecture: "amd64" },
  ],
  mirrors: ["deb http://deb.debian.org/debian bookworm main"],
  sourceDateEpoch: 1686355200,
  mmdebstrap: { version: "1.3.5", variant: "minbase", mode: "unshare" },
  builder: { boundary: "netns-unshare", user: "mvm-build", uid: 999 },
};

describe("signed provenance", () => {
  test("round-trips; its digest is the sha256 of the record's canonical JSON", () => {
    const bytes = encodeSignedProvenance(sample, privateKey);
    const got = decodeSignedProvenance(bytes, publicKey, IMAGE);
    assert.deepEqual(got.provenance, sample);
    assert.equal(got.digest, provenanceDigest(sample));
    assert.deepEqual(encodeSignedProvenance(sample, privateKey), bytes, "Ed25519 and canonical JSON: the same record, the same bytes");
  });

  test("another key, another image, or a builder of uid 0 is refused", () => {
    const bytes = encodeSignedProvenance(sample, privateKey);
    assert.throws(() => decodeSignedProvenance(bytes, other.publicKey, IMAGE), (e: unknown) => e instanceof AdmissionError && /signed by key/.test(e.message));
    assert.throws(() => decodeSignedProvenance(bytes, publicKey, `sha256:${"b".repeat(64)}`), (e: unknown) => e instanceof AdmissionError && /names image/.test(e.message));
    assert.throws(() => encodeSignedProvenance({ ...sample, builder: { ...sample.builder, uid: 0 } }, privateKey));
  });

  test("any single-byte change is refused with AdmissionError, never another error", () => {
    const bytes = encodeSignedProvenance(sample, privateKey);
    fc.assert(
      fc.property(fc.nat(bytes.length - 1), fc.integer({ min: 1, max: 255 }), (at, flip) => {
        const copy = Buffer.from(bytes);
        copy[at] = (copy[at] as number) ^ flip;
        try {
          decodeSignedProvenance(copy, publicKey, IMAGE);
          return false;
        } catch (err) {
          return err instanceof AdmissionError;
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe("dpkg status of a built tree", () => {
  async function withStatus(text: string | Buffer, run: (root: string) => Promise<void>): Promise<void> {
    const root = await mkdtemp(join(tmpdir(), "mvm-dpkg-"));
    try {
      await mkdir(join(root, "var/lib/dpkg"), { recursive: true });
      await writeFile(join(root, "var/lib/dpkg/status"), text);
      await run(root);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }

  test("lists installed packages sorted, skipping removed ones", async () => {
    const status = [
      "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\nArchitecture: amd64\n",
      "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\nArchitecture: all\n",
      "Package: bash\nEssential: yes\nStatus: install ok installed\nVersion: 5.2.15-2+b7\nArchitecture: amd64\nDescription: x\n more\n",
    ].join("\n");
    await withStatus(status, async (root) => {
      assert.deepEqual(await readInstalledPackages(root), [
        { package: "bash", version: "5.2.15-2+b7", architecture: "amd64" },
        { package: "zlib1g", version: "1:1.2.13.dfsg-1", architecture: "amd64" },
      ]);
    });
  });

  test("a hostile entry fails the read with AdmissionError", async () => {
    for (const bad of ["Package: evil\nStatus: install ok installed\nVersion: 1.0; rm -rf /\nArchitecture: amd64\n", "Package: ../x\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n"]) {
      await withStatus(bad, async (root) => {
        await assert.rejects(readInstalledPackages(root), AdmissionError);
      });
    }
    const root = await mkdtemp(join(tmpdir(), "mvm-dpkg-"));
    try {
      await assert.rejects(readInstalledPackages(root), AdmissionError, "a tree without a dpkg database");
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test("arbitrary text gives a list or AdmissionError, nothing else", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.oneof(fc.constantFrom("Package: a1\n", "Status: install ok installed\n", "Version: 1\n", "Architecture: all\n", "\n"), fc.string()), { maxLength: 30 }), async (parts) => {
        await withStatus(parts.join(""), async (root) => {
          try {
            const list = await readInstalledPackages(root);
            assert.ok(Array.isArray(list));
          } catch (err) {
            assert.ok(err instanceof AdmissionError, String(err));
          }
        });
      }),
      { numRuns: 60 },
    );
  });
});
