import { test, describe, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, symlink, utimes, writeFile, rename } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import fc from "fast-check";
import { canonicalJson } from "@mvm/protocol";
import { encodeManifest, hashTree, InvalidTreeError, type ManifestEntry } from "./digest.js";

let base: string;
beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), "mvm-digest-"));
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

/** A small tree: files (path → content), empty dirs and symlinks, created in the given order. */
interface TreeSpec {
  files: [string, string][];
  dirs: string[];
  links: [string, string][];
}

async function makeTree(dir: string, spec: TreeSpec): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const d of spec.dirs) await mkdir(join(dir, d), { recursive: true, mode: 0o755 });
  for (const [p, content] of spec.files) {
    await mkdir(dirname(join(dir, p)), { recursive: true, mode: 0o755 });
    await writeFile(join(dir, p), content, { mode: 0o644 });
    await chmod(join(dir, p), 0o644);
  }
  for (const [p, target] of spec.links) {
    await mkdir(dirname(join(dir, p)), { recursive: true, mode: 0o755 });
    await symlink(target, join(dir, p));
  }
}

const sample: TreeSpec = {
  files: [
    ["usr/bin/tool", "#!/bin/sh\necho hi\n"],
    ["etc/os-release", "ID=debian\n"],
    ["a.b", "dot"],
    ["a/b", "slash"],
  ],
  dirs: ["tmp", "var/empty"],
  links: [["bin", "usr/bin"]],
};

describe("hashTree", () => {
  test("the digest is sha256 of the canonical manifest, which lists every entry", async () => {
    await makeTree(join(base, "t"), sample);
    const tree = await hashTree(join(base, "t"));
    assert.equal(tree.digest, `sha256:${createHash("sha256").update(tree.manifestBytes).digest("hex")}`);
    const manifest = JSON.parse(tree.manifestBytes.toString()) as { version: number; entries: ManifestEntry[] };
    assert.equal(canonicalJson(manifest), tree.manifestBytes.toString(), "manifest bytes are canonical JSON");
    assert.equal(manifest.version, 1);
    const paths = manifest.entries.map((e) => e.path);
    // Byte order: "a.b" (0x2e) sorts before "a/b" (0x2f) and "a" before both.
    assert.deepEqual(paths, ["a", "a.b", "a/b", "bin", "etc", "etc/os-release", "tmp", "usr", "usr/bin", "usr/bin/tool", "var", "var/empty"]);
    const tool = manifest.entries.find((e) => e.path === "usr/bin/tool");
    assert.deepEqual(tool, {
      path: "usr/bin/tool",
      type: "file",
      mode: 0o644,
      size: 18,
      sha256: createHash("sha256").update("#!/bin/sh\necho hi\n").digest("hex"),
    });
    assert.deepEqual(
      manifest.entries.find((e) => e.path === "bin"),
      { path: "bin", type: "symlink", mode: 0o777, target: "usr/bin" },
    );
    assert.equal(tree.sizeBytes, 18 + 10 + 3 + 5);
    assert.equal(tree.entryCount, 12);
  });

  test("same tree, same digest: creation order and timestamps do not matter", async () => {
    await makeTree(join(base, "one"), sample);
    await makeTree(join(base, "two"), {
      files: [...sample.files].reverse(),
      dirs: [...sample.dirs].reverse(),
      links: sample.links,
    });
    await utimes(join(base, "two/etc/os-release"), 1, 1);
    assert.equal((await hashTree(join(base, "one"))).digest, (await hashTree(join(base, "two"))).digest);
  });

  test("any change gives another digest", async () => {
    const reference = join(base, "ref");
    await makeTree(reference, sample);
    const expected = (await hashTree(reference)).digest;
    const changes: [string, (dir: string) => Promise<void>][] = [
      ["content", (d) => writeFile(join(d, "etc/os-release"), "ID=evil\n")],
      ["mode", (d) => chmod(join(d, "usr/bin/tool"), 0o755)],
      ["setuid", (d) => chmod(join(d, "usr/bin/tool"), 0o4644)],
      ["dir mode", (d) => chmod(join(d, "tmp"), 0o1777)],
      ["new empty dir", (d) => mkdir(join(d, "opt"))],
      ["new empty file", (d) => writeFile(join(d, "empty"), "")],
      ["symlink target", async (d) => {
        await rm(join(d, "bin"));
        await symlink("/usr/bin", join(d, "bin"));
      }],
      ["rename", (d) => rename(join(d, "a.b"), join(d, "a.c"))],
      ["file becomes symlink", async (d) => {
        await rm(join(d, "a.b"));
        await symlink("dot", join(d, "a.b"));
      }],
    ];
    const seen = new Set([expected]);
    for (const [name, change] of changes) {
      const dir = join(base, name.replace(/ /g, "-"));
      await makeTree(dir, sample);
      await change(dir);
      const digest = (await hashTree(dir)).digest;
      assert.notEqual(digest, expected, `${name} must change the digest`);
      assert.ok(!seen.has(digest), `${name} collides with another change`);
      seen.add(digest);
    }
  });

  test("special files make the tree invalid", async () => {
    await makeTree(join(base, "t"), sample);
    execFileSync("mkfifo", [join(base, "t/tmp/fifo")]);
    await assert.rejects(hashTree(join(base, "t")), InvalidTreeError);
  });

  test("property: digest is independent of creation order and sensitive to content", async () => {
    const name = fc.stringMatching(/^[a-z0-9._-]{1,8}$/).filter((s) => s !== "." && s !== "..");
    const pathArb = fc.array(name, { minLength: 1, maxLength: 3 }).map((p) => p.join("/"));
    const filesArb = fc.uniqueArray(fc.tuple(pathArb, fc.string({ maxLength: 20 })), {
      minLength: 1,
      maxLength: 8,
      selector: ([p]) => p,
    });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(filesArb, fc.nat(), async (files, seed) => {
        // A path cannot be both a file and a directory: keep only paths no other path is below.
        const leaves = files.filter(([p]) => !files.some(([q]) => q !== p && q.startsWith(`${p}/`)));
        const shuffled = [...leaves].sort((a, b) => ((a[0].length * 31 + seed) % 7) - ((b[0].length * 31 + seed) % 7));
        const dir = join(base, `p${run++}`);
        await makeTree(join(dir, "x"), { files: leaves, dirs: [], links: [] });
        await makeTree(join(dir, "y"), { files: shuffled, dirs: [], links: [] });
        const x = await hashTree(join(dir, "x"));
        assert.equal(x.digest, (await hashTree(join(dir, "y"))).digest);
        const [firstPath, firstContent] = leaves[0] as [string, string];
        await writeFile(join(dir, "y", firstPath), `${firstContent}!`);
        assert.notEqual(x.digest, (await hashTree(join(dir, "y"))).digest);
        await rm(dir, { recursive: true });
      }),
      { numRuns: 40 },
    );
  });

  test("encodeManifest sorts by UTF-8 bytes, not UTF-16 code units", () => {
    // U+FF01 (ef bc 81) sorts before U+1F600 (f0 9f 98 80) in UTF-8 but after it in UTF-16.
    const bytes = encodeManifest([
      { path: "\u{1F600}", type: "dir", mode: 0o755 },
      { path: "\uFF01", type: "dir", mode: 0o755 },
    ]);
    const entries = (JSON.parse(bytes.toString()) as { entries: ManifestEntry[] }).entries;
    assert.deepEqual(entries.map((e) => e.path), ["\uFF01", "\u{1F600}"]);
  });
});
