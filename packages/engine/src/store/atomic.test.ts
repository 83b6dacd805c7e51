import { describe, it, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { publishDir, publishFile, removeDeadTemps, tempPathIn, writeFileAtomic } from "./atomic.js";
import { selfIdentity } from "./lock.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-atomic-"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe("atomic writes", () => {
  it("writeFileAtomic replaces a file and leaves no temp file", async () => {
    await writeFileAtomic(join(dir, "f"), "one", 0o600);
    await writeFileAtomic(join(dir, "f"), "two", 0o640);
    assert.equal(await readFile(join(dir, "f"), "utf8"), "two");
    assert.equal((await stat(join(dir, "f"))).mode & 0o777, 0o640);
    assert.deepEqual(await readdir(dir), ["f"]);
  });

  it("publishFile puts what make wrote in place with its mode, and removes the temp file on failure", async () => {
    const path = join(dir, "prog");
    const result = await publishFile(path, async (temp) => {
      assert.match(temp, /\/\.\d+-\d+-[0-9a-f]+\.prog\.tmp$/);
      await writeFile(temp, "built");
      return 42;
    }, { mode: 0o555 });
    assert.equal(result, 42);
    assert.equal(await readFile(path, "utf8"), "built");
    assert.equal((await stat(path)).mode & 0o777, 0o555);
    await assert.rejects(
      publishFile(path, async (temp) => {
        await writeFile(temp, "half");
        throw new Error("compiler failed");
      }),
      /compiler failed/,
    );
    assert.equal(await readFile(path, "utf8"), "built", "the published file is untouched");
    assert.deepEqual(await readdir(dir), ["prog"]);
  });

  it("publishDir renames a filled directory into place, keeps or replaces an existing one, cleans up on failure", async () => {
    const path = join(dir, "tree");
    assert.equal(await publishDir(path, (t) => writeFile(join(t, "a"), "1"), { ifExists: async () => "keep" }), true);
    assert.equal(await publishDir(path, (t) => writeFile(join(t, "a"), "2"), { ifExists: async () => "keep" }), false);
    assert.equal(await readFile(join(path, "a"), "utf8"), "1");
    assert.equal(await publishDir(path, (t) => writeFile(join(t, "a"), "3"), { ifExists: async () => "replace" }), true);
    assert.equal(await readFile(join(path, "a"), "utf8"), "3");
    await assert.rejects(publishDir(join(dir, "other"), async () => { throw new Error("no"); }, { ifExists: async () => "keep" }), /no/);
    assert.deepEqual(await readdir(dir), ["tree"]);
  });

  it("removeDeadTemps removes a dead builder's temps, never a live one's or other names", async () => {
    const child = spawn(process.execPath, ["-e", "0"], { stdio: "ignore" });
    await once(child, "exit");
    const me = await selfIdentity();
    const dead = join(dir, `.${child.pid}-${me.startTime}-abcdef.tmp`);
    await mkdir(dead);
    await writeFile(join(dead, "x"), "left over");
    const live = await tempPathIn(dir, "tmp");
    await writeFile(live, "in progress");
    await writeFile(join(dir, ".hidden"), "not a temp");
    await writeFile(join(dir, "kept"), "");
    assert.equal(await removeDeadTemps(dir), 1);
    assert.deepEqual((await readdir(dir)).sort(), [".hidden", live.slice(dir.length + 1), "kept"].sort());
    assert.equal(await removeDeadTemps(join(dir, "absent")), 0);
  });
});
