/**
 * Opens a verity disk with the kernel's dm-verity through a loop device, as the guest initramfs
 * does with veritysetupOpenArgs, then shows a flipped byte turns the file read into EIO.
 * Needs root and a host kernel with device-mapper (listed in /proc/misc); skipped otherwise.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileDataOffset, flipByte, makeExt4Image, tempDir } from "./_ext4-fixture.js";
import { runTool, stderrTail } from "./_run.js";
import { veritysetupOpenArgs } from "./cmdline.js";
import { formatVerity, type VerityInfo } from "./verity.js";

/** True when the running kernel has the device-mapper misc device (built in or loaded). */
function hostHasDeviceMapper(): boolean {
  try {
    return /^\s*\d+ device-mapper$/m.test(readFileSync("/proc/misc", "utf8"));
  } catch {
    return false;
  }
}
const DM_AVAILABLE = process.getuid?.() === 0 && hostHasDeviceMapper();
const SKIP = DM_AVAILABLE ? false : "needs root and device-mapper in the host kernel (device-mapper in /proc/misc); runs on such hosts";
const SECRET = "read through dm-verity\n".repeat(300);

async function must(command: string, args: string[]): Promise<string> {
  const result = await runTool(command, args);
  if (result.exitCode !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${stderrTail(result.stderr)}`);
  return result.stdout.trim();
}

/** Attaches the image read-only, opens it with dm-verity, mounts it, runs `body`, and undoes all of it. */
async function withVerityMount(info: VerityInfo, mountPoint: string, name: string, body: () => Promise<void>): Promise<void> {
  let loop: string | undefined;
  let opened = false;
  let mounted = false;
  try {
    loop = await must("losetup", ["--find", "--show", "--read-only", info.dataPath]);
    await must("veritysetup", veritysetupOpenArgs(info, { dataDevice: loop, name }));
    opened = true;
    await must("mount", ["-t", "ext4", "-o", "ro,noload", `/dev/mapper/${name}`, mountPoint]);
    mounted = true;
    await body();
  } finally {
    if (mounted) await must("umount", [mountPoint]);
    if (opened) await must("veritysetup", ["close", name]);
    if (loop !== undefined) await must("losetup", ["--detach", loop]);
  }
}

describe("veritysetup open on a loop device", { skip: SKIP }, () => {
  it("reads a file from an intact disk and gets EIO after one byte is flipped; leaves nothing behind", async () => {
    await using dir = await tempDir();
    const image = await makeExt4Image(dir.path, "rootfs", { "etc/secret.txt": SECRET });
    const info = await formatVerity({ dataPath: image, label: "rootfs" });
    const mountPoint = join(dir.path, "mnt");
    await mkdir(mountPoint);
    const name = `mvm-verity-test-${process.pid}`;

    await withVerityMount(info, mountPoint, name, async () => {
      assert.equal(await readFile(join(mountPoint, "etc/secret.txt"), "utf8"), SECRET);
    });

    await flipByte(image, (await fileDataOffset(image, "/etc/secret.txt")) + 3);
    await withVerityMount(info, mountPoint, name, async () => {
      await assert.rejects(readFile(join(mountPoint, "etc/secret.txt")), { code: "EIO" });
    });

    assert.ok(!(await must("dmsetup", ["ls"])).includes(name), "dm device left behind");
    assert.ok(!(await must("losetup", ["--all"])).includes(image), "loop device left behind");
  });
});
