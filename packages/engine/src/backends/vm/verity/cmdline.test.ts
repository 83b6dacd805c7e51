import assert from "node:assert/strict";
import { stat } from "node:fs/promises";
import { describe, it } from "node:test";
import { InvalidArgumentError } from "@mvm/protocol";
import { makeExt4Image, tempDir } from "./_ext4-fixture.js";
import { runTool } from "./_run.js";
import { dmInitDevice, dmsetupCreateArgs, kernelCmdlineFor, kernelCmdlineForDisks, veritysetupOpenArgs, verityTableLine } from "./cmdline.js";
import { formatVerity, type VerityInfo } from "./verity.js";

const INFO: VerityInfo = {
  dataPath: "/var/lib/mvm/rootfs.ext4",
  hashPath: "/var/lib/mvm/rootfs.ext4",
  hashOffsetBytes: 8388608,
  dataBlocks: 2048,
  dataBlockSizeBytes: 4096,
  hashBlocks: 17,
  hashBlockSizeBytes: 4096,
  hashAlgorithm: "sha256",
  hashType: 1,
  saltHex: "00112233",
  rootHashHex: "a10adfd345717be0f4f19e85183f89ce9355a8beb5bf50581b325d82867a38cc",
};

const TABLE = /^0 ([0-9]+) verity 1 (\S+) (\S+) ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+) sha256 ([0-9a-f]{64}) ([0-9a-f]+)$/;

describe("kernelCmdlineFor", () => {
  it("produces a well-formed dm-mod.create table", () => {
    const cmdline = kernelCmdlineFor(INFO, { dataDevice: "/dev/vda", name: "root" });
    assert.equal(
      cmdline.dmModCreate,
      `root,,,ro,0 16384 verity 1 /dev/vda /dev/vda 4096 4096 2048 2048 sha256 ${INFO.rootHashHex} 00112233`,
    );
    assert.deepEqual(cmdline.args, [`dm-mod.create="${cmdline.dmModCreate}"`, "root=/dev/dm-0", "ro"]);
    // One device, one table, no separators the kernel would split on.
    assert.equal(cmdline.dmModCreate.split(",").length, 5);
    assert.ok(!cmdline.dmModCreate.includes(";") && !cmdline.dmModCreate.includes('"'));
  });

  it("uses a separate hash device when given", () => {
    const line = verityTableLine({ ...INFO, hashOffsetBytes: 0 }, { dataDevice: "/dev/vda", hashDevice: "/dev/vdb", name: "root" });
    assert.match(line, / \/dev\/vda \/dev\/vdb 4096 4096 2048 0 sha256 /);
    assert.match(verityTableLine(INFO, { dataDevice: "254:0", name: "r" }), / 254:0 254:0 /);
  });

  it("rejects names and devices that could break the table or the command line", () => {
    for (const name of ["", "-x", "--help", "a,b", "a;b", 'a"b', "a b", "a\nb", "x".repeat(65)]) {
      assert.throws(() => kernelCmdlineFor(INFO, { dataDevice: "/dev/vda", name }), InvalidArgumentError, JSON.stringify(name));
    }
    for (const dataDevice of ["vda", "/dev/vda 1", "/dev/vda;", "/dev/../etc", "/dev/vda,", "1:2:3", ""]) {
      assert.throws(() => kernelCmdlineFor(INFO, { dataDevice, name: "root" }), InvalidArgumentError, JSON.stringify(dataDevice));
    }
    assert.throws(() => kernelCmdlineFor(INFO, { dataDevice: "/dev/vda", hashDevice: "/dev/vdb extra", name: "root" }), InvalidArgumentError);
  });

  it("rejects an inconsistent record", () => {
    const opts = { dataDevice: "/dev/vda", name: "root" };
    assert.throws(() => kernelCmdlineFor({ ...INFO, hashOffsetBytes: 100 }, opts), InvalidArgumentError);
    assert.throws(() => kernelCmdlineFor({ ...INFO, dataBlocks: 0 }, opts), InvalidArgumentError);
    assert.throws(() => kernelCmdlineFor({ ...INFO, dataBlocks: 1.5 }, opts), InvalidArgumentError);
    assert.throws(() => kernelCmdlineFor({ ...INFO, rootHashHex: "xyz" }, opts), InvalidArgumentError);
    assert.throws(() => kernelCmdlineFor({ ...INFO, saltHex: "00 root=/dev/sda" }, opts), InvalidArgumentError);
  });
});

describe("kernelCmdlineForDisks", () => {
  it("joins the root disk and the agent disk with ';' in order", () => {
    const agent: VerityInfo = { ...INFO, dataBlocks: 256, hashOffsetBytes: 1048576, rootHashHex: "b".repeat(64), saltHex: "ff" };
    const cmdline = kernelCmdlineForDisks([
      { info: INFO, device: { dataDevice: "/dev/vda", name: "root" } },
      { info: agent, device: { dataDevice: "/dev/vdb", name: "agent" } },
    ]);
    const [root, second, ...rest] = cmdline.dmModCreate.split(";");
    assert.equal(rest.length, 0);
    assert.equal(root, dmInitDevice(INFO, { dataDevice: "/dev/vda", name: "root" }));
    assert.equal(second, `agent,,,ro,0 2048 verity 1 /dev/vdb /dev/vdb 4096 4096 256 256 sha256 ${"b".repeat(64)} ff`);
    assert.deepEqual(cmdline.args.slice(1), ["root=/dev/dm-0", "ro"]);
  });

  it("rejects no disks and a repeated name", () => {
    assert.throws(() => kernelCmdlineForDisks([]), InvalidArgumentError);
    const disk = { info: INFO, device: { dataDevice: "/dev/vda", name: "root" } };
    assert.throws(() => kernelCmdlineForDisks([disk, { ...disk, device: { dataDevice: "/dev/vdb", name: "root" } }]), /used twice/);
  });
});

describe("dmsetupCreateArgs", () => {
  it("creates a read-only device from the same table", () => {
    const options = { dataDevice: "/dev/vdb", name: "agent" };
    assert.deepEqual(dmsetupCreateArgs(INFO, options), ["create", "agent", "--readonly", "--table", verityTableLine(INFO, options)]);
    assert.throws(() => dmsetupCreateArgs(INFO, { dataDevice: "/dev/vdb", name: "a b" }), InvalidArgumentError);
  });
});

describe("veritysetupOpenArgs", () => {
  it("passes every parameter explicitly", () => {
    assert.deepEqual(veritysetupOpenArgs(INFO, { dataDevice: "/dev/vdb", name: "agent" }), [
      "open",
      "--no-superblock",
      "--format=1",
      "--hash=sha256",
      "--data-block-size=4096",
      "--hash-block-size=4096",
      "--data-blocks=2048",
      "--hash-offset=8388608",
      "--salt=00112233",
      "/dev/vdb",
      "agent",
      "/dev/vdb",
      INFO.rootHashHex,
    ]);
  });
});

describe("table numbers against a real veritysetup format", () => {
  it("match the image and verify the image when fed back to veritysetup", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", { "etc/hostname": "mvm\n", "bin/tool": Buffer.alloc(50_000, 7) }, 12);
    const dataSize = (await stat(image)).size;
    const info = await formatVerity({ dataPath: image });
    const match = TABLE.exec(verityTableLine(info, { dataDevice: "/dev/vda", name: "root" }));
    assert.ok(match, "table line is well-formed");
    const [, sectors, dataDev, hashDev, dataBlockSize, hashBlockSize, dataBlocks, hashStart, root, salt] = match;
    assert.equal(Number(sectors) * 512, dataSize);
    assert.equal(Number(dataBlocks) * Number(dataBlockSize), dataSize);
    assert.equal(Number(hashStart) * Number(hashBlockSize), dataSize);
    assert.equal(dataDev, "/dev/vda");
    assert.equal(hashDev, "/dev/vda");
    assert.equal(root, info.rootHashHex);
    assert.equal(salt, info.saltHex);

    // veritysetup accepts the disk when given exactly the table's numbers.
    const verify = (rootHex: string): Promise<{ exitCode: number | null }> =>
      runTool("veritysetup", [
        "verify",
        "--no-superblock",
        `--data-block-size=${dataBlockSize}`,
        `--hash-block-size=${hashBlockSize}`,
        `--data-blocks=${dataBlocks}`,
        `--hash-offset=${Number(hashStart) * Number(hashBlockSize)}`,
        `--salt=${salt}`,
        "--hash=sha256",
        image,
        image,
        rootHex,
      ]);
    assert.equal((await verify(root ?? "")).exitCode, 0);
    assert.notEqual((await verify("0".repeat(64))).exitCode, 0);
  });
});
