import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { copyFile, readFile, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AdmissionError, InvalidArgumentError, NotFoundError } from "@mvm/protocol";
import { fileDataOffset, flipByte, makeExt4Image, readByte, tempDir } from "./_ext4-fixture.js";
import { deriveSalt, formatVerity, verifyVerity, VERITY_BLOCK_SIZE_BYTES } from "./verity.js";

const SECRET = "the agent runtime lives here\n".repeat(400);
const BIG = randomBytes(200_000);

function tree(): Record<string, string | Uint8Array> {
  return { "etc/secret.txt": SECRET, "usr/lib/big.bin": BIG, "empty.txt": "" };
}

/** Asserts the promise rejects with an AdmissionError whose message names the disk. */
async function rejectsNamingDisk(promise: Promise<unknown>, label: string, path: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof AdmissionError, `expected AdmissionError, got ${String(error)}`);
    assert.equal(error.code, "ADMISSION_FAILED");
    assert.match(error.message, /failed dm-verity verification/);
    assert.ok(error.message.includes(`"${label}"`), error.message);
    assert.ok(error.message.includes(JSON.stringify(path)), error.message);
    return true;
  });
}

describe("formatVerity / verifyVerity (appended hash tree)", () => {
  it("formats an ext4 image and verifies it", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const dataSize = (await stat(image)).size;
    const info = await formatVerity({ dataPath: image, label: "rootfs" });

    assert.equal(info.hashPath, image);
    assert.equal(info.hashOffsetBytes, dataSize);
    assert.equal(info.dataBlocks, dataSize / VERITY_BLOCK_SIZE_BYTES);
    assert.equal(info.dataBlockSizeBytes, 4096);
    assert.equal(info.hashBlockSizeBytes, 4096);
    assert.equal(info.hashAlgorithm, "sha256");
    assert.match(info.rootHashHex, /^[0-9a-f]{64}$/);
    assert.match(info.saltHex, /^[0-9a-f]{64}$/);
    assert.ok(info.hashBlocks > 0);
    assert.equal((await stat(image)).size, dataSize + info.hashBlocks * info.hashBlockSizeBytes);
    await verifyVerity(info);
  });

  it("rejects an image with one flipped byte in a file's data, naming the disk", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const info = await formatVerity({ dataPath: image, label: "rootfs" });
    await verifyVerity(info);

    const offset = (await fileDataOffset(image, "/etc/secret.txt")) + 7;
    // The offset really is inside the file's content.
    assert.equal(await readByte(image, offset), SECRET.charCodeAt(7));
    await flipByte(image, offset);
    assert.equal(await readByte(image, offset), SECRET.charCodeAt(7) ^ 0xff);

    await rejectsNamingDisk(verifyVerity(info), "rootfs", image);
    // Flipping it back restores a valid disk: the failure was that byte alone.
    await flipByte(image, offset);
    await verifyVerity(info);
  });

  it("rejects an image with one flipped byte in the hash tree", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "agent", tree());
    const info = await formatVerity({ dataPath: image, label: "agent" });
    await flipByte(image, info.hashOffsetBytes + 100);
    await rejectsNamingDisk(verifyVerity(info), "agent", image);
  });

  it("rejects a wrong root hash", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const info = await formatVerity({ dataPath: image, label: "rootfs" });
    const last = info.rootHashHex.at(-1) === "0" ? "1" : "0";
    await rejectsNamingDisk(verifyVerity({ ...info, rootHashHex: info.rootHashHex.slice(0, -1) + last }), "rootfs", image);
  });

  it("rejects a disk truncated after formatting", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const info = await formatVerity({ dataPath: image, label: "rootfs" });
    await truncate(image, info.hashOffsetBytes + 4096);
    await rejectsNamingDisk(verifyVerity(info), "rootfs", image);
  });

  it("gives the same salt and root hash for identical images, and different ones otherwise", async () => {
    await using dir = await tempDir();
    const a = await makeExt4Image(dir.path, "a", tree());
    const b = join(dir.path, "b.ext4");
    await copyFile(a, b);
    const c = await makeExt4Image(dir.path, "c", { ...tree(), "etc/secret.txt": `${SECRET}!` });

    const infoA = await formatVerity({ dataPath: a });
    const infoB = await formatVerity({ dataPath: b });
    const infoC = await formatVerity({ dataPath: c });
    assert.equal(infoA.saltHex, infoB.saltHex);
    assert.equal(infoA.rootHashHex, infoB.rootHashHex);
    assert.notEqual(infoA.saltHex, infoC.saltHex);
    assert.notEqual(infoA.rootHashHex, infoC.rootHashHex);
  });

  it("uses a given salt", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const info = await formatVerity({ dataPath: image, salt: "00112233" });
    assert.equal(info.saltHex, "00112233");
    await verifyVerity(info);
    await assert.rejects(verifyVerity({ ...info, saltHex: "00112234" }), AdmissionError);
  });

  it("derives the default salt from the data's SHA-256, or from a given content digest", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const digest = createHash("sha256").update(await readFile(image)).digest("hex");
    const copy = join(dir.path, "copy.ext4");
    await copyFile(image, copy);
    assert.equal((await formatVerity({ dataPath: image })).saltHex, deriveSalt(digest));

    const given = "c".repeat(64);
    const info = await formatVerity({ dataPath: copy, contentDigestHex: given });
    assert.equal(info.saltHex, deriveSalt(given));
    await verifyVerity(info);
    await assert.rejects(formatVerity({ dataPath: copy, contentDigestHex: "C".repeat(64) }), InvalidArgumentError);
  });

  it("derives a 32-byte salt from the data digest", () => {
    const digest = "a".repeat(64);
    assert.equal(deriveSalt(digest), deriveSalt(digest));
    assert.match(deriveSalt(digest), /^[0-9a-f]{64}$/);
    assert.notEqual(deriveSalt(digest), deriveSalt("b".repeat(64)));
  });
});

describe("formatVerity / verifyVerity (separate hash file)", () => {
  it("verifies, and rejects a flipped data byte", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const size = (await stat(image)).size;
    const hashPath = join(dir.path, "rootfs.verity");
    const info = await formatVerity({ dataPath: image, hashPath, label: "rootfs" });
    assert.equal(info.hashOffsetBytes, 0);
    assert.equal(info.hashPath, hashPath);
    assert.equal((await stat(image)).size, size);
    assert.equal((await stat(hashPath)).size, info.hashBlocks * info.hashBlockSizeBytes);
    await verifyVerity(info);

    await flipByte(image, await fileDataOffset(image, "/usr/lib/big.bin"));
    await rejectsNamingDisk(verifyVerity(info), "rootfs", image);
  });
});

describe("formatVerity input checks", () => {
  it("rejects a missing image with NotFoundError", async () => {
    await using dir = await tempDir();
    await assert.rejects(formatVerity({ dataPath: join(dir.path, "nope.ext4") }), NotFoundError);
  });

  it("rejects an image whose size is not a multiple of 4096", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    await truncate(image, (await stat(image)).size - 1);
    await assert.rejects(formatVerity({ dataPath: image }), InvalidArgumentError);
  });

  it("rejects a salt that is not lower-case hex", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    for (const salt of ["", "abc", "ZZ", "AB", "00 11", "-", "a".repeat(514)]) {
      await assert.rejects(formatVerity({ dataPath: image, salt }), InvalidArgumentError, salt);
    }
  });

  it("rejects a hash path equal to the data path", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    await assert.rejects(formatVerity({ dataPath: image, hashPath: image }), InvalidArgumentError);
  });

  it("removes the hash file it made and leaves the image intact when aborted mid-way", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const before = createHash("sha256").update(await readFile(image)).digest("hex");
    const hashPath = join(dir.path, "rootfs.verity");
    for (const target of [{ hashPath }, {}]) {
      const controller = new AbortController();
      // Aborted after formatVerity's synchronous checks, before it runs veritysetup.
      const pending = formatVerity({ dataPath: image, contentDigestHex: "d".repeat(64), signal: controller.signal, ...target });
      controller.abort();
      await assert.rejects(pending, { code: "ABORTED" });
      await assert.rejects(stat(hashPath), { code: "ENOENT" });
      assert.equal(createHash("sha256").update(await readFile(image)).digest("hex"), before);
    }
  });

  it("honours an aborted signal", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", tree());
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(formatVerity({ dataPath: image, signal: controller.signal }), { code: "ABORTED" });
  });
});
