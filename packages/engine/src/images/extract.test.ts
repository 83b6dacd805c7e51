import { test, describe, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile, symlink, chmod } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
import { buildTar, type TarEntrySpec } from "./_tar-fixture.js";
import { copyDir, extractTar } from "./extract.js";
import { TreeWriter } from "./tree-writer.js";

let base: string;
let root: string;
let outside: string;

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), "mvm-extract-"));
  root = join(base, "root");
  outside = join(base, "outside");
  await mkdir(root, { mode: 0o755 });
  await mkdir(join(outside, "sub"), { recursive: true, mode: 0o755 });
  await writeFile(join(outside, "secret"), "original");
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

async function extract(entries: TarEntrySpec[], options: { gzip?: boolean } = {}): Promise<TreeWriter> {
  const tarPath = join(base, "in.tar");
  await writeFile(tarPath, buildTar(entries, options));
  const writer = new TreeWriter(root);
  await extractTar(tarPath, writer);
  await writer.finish();
  return writer;
}

/** Every path below `dir` (relative), recursively, without following symlinks. */
async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    out.push(join(e.parentPath, e.name).slice(dir.length + 1));
  }
  return out.sort();
}

/** The outside tree must be exactly as beforeEach left it. */
async function assertOutsideUntouched(): Promise<void> {
  assert.deepEqual(await listTree(outside), ["secret", "sub"]);
  assert.equal(await readFile(join(outside, "secret"), "utf8"), "original");
  assert.equal((await stat(join(outside, "sub"))).mode & 0o7777, 0o755);
  const allowed = new Set(["in.tar", "outside", "root", "src"]);
  for (const name of await readdir(base)) assert.ok(allowed.has(name), `unexpected ${name} next to the root`);
}

async function assertRejected(entries: TarEntrySpec[], pattern: RegExp): Promise<void> {
  await assert.rejects(extract(entries), (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
  await assertOutsideUntouched();
}

describe("extractTar refuses hostile archives", () => {
  test("absolute path", async () => {
    await assertRejected([{ path: join(base, "abs-pwned"), content: "x" }], /is absolute/);
  });

  test("parent-directory components", async () => {
    await assertRejected([{ path: "../pwned", content: "x" }], /contains "\.\."/);
    await assertRejected([{ path: "a/../../pwned", content: "x" }], /contains "\.\."/);
    await assertRejected([{ path: "./ok/../../outside/secret", content: "x" }], /contains "\.\."/);
  });

  test("write through a symlink extracted earlier (absolute target)", async () => {
    await assertRejected(
      [
        { path: "a", type: "symlink", linkpath: outside },
        { path: "a/secret", content: "pwned" },
      ],
      /"a" is a symbolic link; nothing is written through it/,
    );
  });

  test("directory entry and symlink below a symlink", async () => {
    await assertRejected(
      [
        { path: "a", type: "symlink", linkpath: outside },
        { path: "a/newdir/", type: "dir" },
      ],
      /symbolic link/,
    );
    await assertRejected(
      [
        { path: "a", type: "symlink", linkpath: outside },
        { path: "a/link", type: "symlink", linkpath: "/etc/passwd" },
      ],
      /symbolic link/,
    );
  });

  test("relative symlink target leaving the root", async () => {
    await assertRejected([{ path: "a", type: "symlink", linkpath: "../outside" }], /leaves the image root/);
    await assertRejected([{ path: "x/y/a", type: "symlink", linkpath: "../../../outside/secret" }], /leaves the image root/);
  });

  test("hard link to a host file or out of the tree", async () => {
    await assertRejected([{ path: "p", type: "hardlink", linkpath: "/etc/passwd" }], /is absolute/);
    await assertRejected([{ path: "p", type: "hardlink", linkpath: "../outside/secret" }], /contains "\.\."/);
    await assertRejected(
      [
        { path: "s", type: "symlink", linkpath: outside },
        { path: "p", type: "hardlink", linkpath: "s/secret" },
      ],
      /not reachable through directories/,
    );
    await assertRejected(
      [
        { path: "s", type: "symlink", linkpath: join(outside, "secret") },
        { path: "p", type: "hardlink", linkpath: "s" },
      ],
      /not a regular file/,
    );
    await assertRejected([{ path: "p", type: "hardlink", linkpath: "missing" }], /not a regular file/);
  });

  test("sparse files are refused, not silently dropped", async () => {
    await assertRejected([{ path: "sparse", type: "sparse", content: "x" }], /unsupported tar entry type/);
  });

  test("truncated and non-tar input", async () => {
    const full = buildTar([{ path: "f", content: "x".repeat(5000) }]);
    await writeFile(join(base, "in.tar"), full.subarray(0, 1536));
    await assert.rejects(extractTar(join(base, "in.tar"), new TreeWriter(root)), InvalidArgumentError);
    await writeFile(join(base, "in.tar"), "this is not a tar archive at all".repeat(40));
    await assert.rejects(extractTar(join(base, "in.tar"), new TreeWriter(root)), InvalidArgumentError);
  });

  test("a directory replaced by a symlink gets no deferred chmod through the symlink", async () => {
    await extract([
      { path: "d/", type: "dir", mode: 0o700 },
      { path: "d/sub/", type: "dir", mode: 0o711 },
      { path: "d", type: "symlink", linkpath: outside },
    ]);
    assert.equal(await readlink(join(root, "d")), outside);
    await assertOutsideUntouched();
  });

  test("entry count and byte limits", async () => {
    const tarPath = join(base, "in.tar");
    await writeFile(tarPath, buildTar([{ path: "a", content: "1" }, { path: "b", content: "2" }, { path: "c", content: "3" }]));
    await assert.rejects(extractTar(tarPath, new TreeWriter(root, { maxEntries: 2 })), /exceed 2 entries/);
    await rm(root, { recursive: true });
    await mkdir(root);
    await writeFile(tarPath, buildTar([{ path: "big", content: "x".repeat(100) }]));
    await assert.rejects(extractTar(tarPath, new TreeWriter(root, { maxBytes: 99 })), /exceed 99 bytes/);
  });
});

describe("extractTar normalizes what it writes", () => {
  test("device nodes and FIFOs are dropped", async () => {
    const writer = await extract([
      { path: "dev/", type: "dir" },
      { path: "dev/null", type: "char", mode: 0o666 },
      { path: "dev/sda", type: "block", mode: 0o660 },
      { path: "dev/fifo", type: "fifo" },
      { path: "dev/keep", content: "k" },
    ]);
    assert.equal(writer.dropped, 3);
    assert.deepEqual(await listTree(root), ["dev", "dev/keep"]);
  });

  test("setuid/setgid bits are cleared, sticky kept on directories, ownership is the writer's", async () => {
    await extract([
      { path: "bin/", type: "dir", mode: 0o2755, uid: 1000, gid: 1000 },
      { path: "bin/su", mode: 0o4755, uid: 1000, gid: 1000, content: "#!/bin/sh\n" },
      { path: "bin/wall", mode: 0o2755, content: "w" },
      { path: "bin/sticky", mode: 0o1644, content: "s" },
      { path: "tmp/", type: "dir", mode: 0o1777 },
      { path: "root/", type: "dir", mode: 0o700 },
      { path: "etc/shadow", mode: 0o640, gid: 42, content: "root:*:" },
      { path: "ro/", type: "dir", mode: 0o555 },
    ]);
    const mode = async (p: string): Promise<number> => (await lstat(join(root, p))).mode & 0o7777;
    assert.equal(await mode("bin"), 0o755);
    assert.equal(await mode("bin/su"), 0o755);
    assert.equal(await mode("bin/wall"), 0o755);
    assert.equal(await mode("bin/sticky"), 0o644);
    assert.equal(await mode("tmp"), 0o1777);
    assert.equal(await mode("root"), 0o700);
    assert.equal(await mode("etc/shadow"), 0o640);
    assert.equal(await mode("etc"), 0o755, "implicit parent directories are 0755");
    assert.equal(await mode("ro"), 0o755, "directories keep owner rwx");
    assert.equal(await mode(""), 0o755);
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    for (const p of ["bin", "bin/su", "etc/shadow"]) {
      const st = await lstat(join(root, p));
      assert.equal(st.uid, uid, `${p} uid`);
      assert.equal(st.gid, gid, `${p} gid`);
    }
    if (uid === 0) assert.equal((await lstat(join(root, "bin/su"))).uid, 0);
  });

  test("symlinks inside the root, absolute symlinks and mtimes are kept", async () => {
    await extract([
      { path: "./usr/lib/", type: "dir" },
      { path: "./usr/lib/libx.so.1", content: "elf", mtime: 1_600_000_000 },
      { path: "./usr/lib/libx.so", type: "symlink", linkpath: "libx.so.1" },
      { path: "./lib", type: "symlink", linkpath: "usr/lib" },
      { path: "./usr/lib/up", type: "symlink", linkpath: "../../lib/libx.so.1" },
      { path: "./dev-fd", type: "symlink", linkpath: "/proc/self/fd" },
    ]);
    assert.equal(await readlink(join(root, "lib")), "usr/lib");
    assert.equal(await readlink(join(root, "usr/lib/up")), "../../lib/libx.so.1");
    assert.equal(await readlink(join(root, "dev-fd")), "/proc/self/fd");
    assert.equal((await stat(join(root, "usr/lib/libx.so.1"))).mtimeMs, 1_600_000_000_000);
  });

  test("hard links inside the tree share the inode; a later entry never writes through a link", async () => {
    await extract([
      { path: "usr/bin/perl", mode: 0o755, content: "perl" },
      { path: "usr/bin/perl5", type: "hardlink", linkpath: "./usr/bin/perl" },
    ]);
    const a = await stat(join(root, "usr/bin/perl"));
    const b = await stat(join(root, "usr/bin/perl5"));
    assert.equal(a.ino, b.ino);
    await rm(root, { recursive: true });
    await mkdir(root);
    await extract([
      { path: "f", content: "first" },
      { path: "h", type: "hardlink", linkpath: "f" },
      { path: "h", content: "second" },
    ]);
    assert.equal(await readFile(join(root, "f"), "utf8"), "first");
    assert.equal(await readFile(join(root, "h"), "utf8"), "second");
  });

  test("later entries replace earlier ones of another kind", async () => {
    await extract([
      { path: "x", type: "symlink", linkpath: outside },
      { path: "x", content: "file now" },
      { path: "y/", type: "dir" },
      { path: "y/inner", content: "gone" },
      { path: "y", content: "file replaces dir" },
      { path: "z", content: "file" },
      { path: "z/", type: "dir" },
      { path: "z/ok", content: "ok" },
    ]);
    assert.equal(await readFile(join(root, "x"), "utf8"), "file now");
    assert.equal(await readFile(join(root, "y"), "utf8"), "file replaces dir");
    assert.equal(await readFile(join(root, "z/ok"), "utf8"), "ok");
    await assertOutsideUntouched();
  });

  test("gzip input and long (pax) paths", async () => {
    const long = `${"d".repeat(60)}/${"e".repeat(60)}/file`;
    await extract([{ path: long, content: "deep" }], { gzip: true });
    assert.equal(await readFile(join(root, long), "utf8"), "deep");
  });

  test("agrees with GNU tar's reading of the same archive", async () => {
    const entries: TarEntrySpec[] = [
      { path: "a/", type: "dir" },
      { path: "a/b", content: "bee", mode: 0o600 },
      { path: "a/c", type: "symlink", linkpath: "b" },
    ];
    await extract(entries);
    const gnu = join(base, "gnu");
    await mkdir(gnu);
    execFileSync("tar", ["-xf", join(base, "in.tar"), "-C", gnu]);
    assert.deepEqual(await listTree(root), await listTree(gnu));
    await rm(gnu, { recursive: true });
  });
});

describe("copyDir", () => {
  test("copies without following symlinks, drops FIFOs, keeps hard links, clears setuid", async () => {
    const src = join(base, "src");
    await mkdir(join(src, "bin"), { recursive: true });
    await writeFile(join(src, "bin/tool"), "tool");
    await chmod(join(src, "bin/tool"), 0o4755);
    await symlink(outside, join(src, "escape"));
    execFileSync("ln", [join(src, "bin/tool"), join(src, "bin/tool2")]);
    execFileSync("mkfifo", [join(src, "fifo")]);
    const writer = new TreeWriter(root);
    await copyDir(src, writer);
    await writer.finish();
    assert.equal(writer.dropped, 1);
    assert.deepEqual(await listTree(root), ["bin", "bin/tool", "bin/tool2", "escape"]);
    assert.equal((await lstat(join(root, "escape"))).isSymbolicLink(), true);
    assert.equal((await stat(join(root, "bin/tool"))).mode & 0o7777, 0o755);
    assert.equal((await stat(join(root, "bin/tool"))).ino, (await stat(join(root, "bin/tool2"))).ino);
    await assertOutsideUntouched();
  });
});
