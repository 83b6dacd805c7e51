import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { InvalidArgumentError } from "@mvm/protocol";
import { buildExt4Image, summarizeTree, uuidFromKey } from "./disk.js";

describe("buildExt4Image", () => {
  let root: string;
  let src: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "mvm-disk-"));
    src = join(root, "src");
    await mkdir(join(src, "etc"), { recursive: true });
    await writeFile(join(src, "etc", "hello"), "hello from the image\n", { mode: 0o644 });
    await symlink("etc/hello", join(src, "link"));
  });
  after(() => rm(root, { recursive: true, force: true }));

  const sha = async (p: string) => createHash("sha256").update(await readFile(p)).digest("hex");

  it("holds the tree, the mount points and the label; rebuilds identically; reuses the file", async () => {
    const disk = await buildExt4Image({ sourceDir: src, outRoot: join(root, "a"), mountPoints: ["proc", ".mvm"], label: "mvm-root" });
    const cat = execFileSync("debugfs", ["-R", "cat /etc/hello", disk.path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    assert.equal(cat, "hello from the image\n");
    const ls = execFileSync("debugfs", ["-R", "ls -l /", disk.path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    for (const name of ["etc", "link", "proc", ".mvm"]) assert.match(ls, new RegExp(` ${name.replace(".", "\\.")}\\s*$`, "m"));
    assert.match(execFileSync("dumpe2fs", ["-h", disk.path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }), /Filesystem volume name:\s+mvm-root/);

    const other = await buildExt4Image({ sourceDir: src, outRoot: join(root, "b"), mountPoints: ["proc", ".mvm"], label: "mvm-root" });
    assert.equal(other.key, disk.key);
    assert.equal(await sha(other.path), await sha(disk.path));
    const reused = await buildExt4Image({ sourceDir: src, outRoot: join(root, "a"), mountPoints: ["proc", ".mvm"], label: "mvm-root" });
    assert.deepEqual(reused, disk);
  });

  it("names a changed tree differently", async () => {
    const before = await summarizeTree(src);
    await writeFile(join(src, "etc", "new"), "x");
    const after = await summarizeTree(src);
    assert.notEqual(after.key, before.key);
    assert.equal(after.entries, before.entries + 1);
  });

  it("rejects bad input", async () => {
    await assert.rejects(buildExt4Image({ sourceDir: "rel", outRoot: root }), InvalidArgumentError);
    await assert.rejects(buildExt4Image({ sourceDir: src, outRoot: root, mountPoints: ["../x"] }), InvalidArgumentError);
    await assert.rejects(buildExt4Image({ sourceDir: src, outRoot: root, label: "a,b" }), InvalidArgumentError);
    await assert.rejects(buildExt4Image({ sourceDir: join(root, "missing"), outRoot: root }), InvalidArgumentError);
    await assert.rejects(buildExt4Image({ sourceDir: src, outRoot: join(root, "c"), mountPoints: ["link"] }), /Mount point "link"/);
  });

  it("makes a stable UUID from a key", () => {
    assert.match(uuidFromKey("ab".repeat(32)), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});
