import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmod, chown, lstat, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AlreadyExistsError, PermissionDeniedError } from "@mvm/protocol";
import { clearStaleSocket, ensurePrivateDir, socketAnswers } from "./runtime-dir.js";

async function scratch(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-rundir-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A socket file whose listener died without removing it. */
function staleSocket(path: string): void {
  const code = `require("node:net").createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, "SIGKILL"))`;
  spawnSync(process.execPath, ["-e", code]);
  assert.ok(existsSync(path), "the killed listener left its socket file");
}

test("creates a missing runtime directory (and its parents) with mode 0700", async (t) => {
  const base = await scratch(t);
  const dir = join(base, "a", "b", "mvm");
  const old = process.umask(0o000);
  try {
    await ensurePrivateDir(dir);
  } finally {
    process.umask(old);
  }
  assert.equal((await lstat(dir)).mode & 0o777, 0o700);
  assert.equal((await lstat(join(base, "a"))).mode & 0o777, 0o700);
});

test("accepts an existing private directory owned by us", async (t) => {
  const dir = join(await scratch(t), "mvm");
  await mkdir(dir, { mode: 0o700 });
  await ensurePrivateDir(dir);
});

test("refuses an existing directory open to group or others", async (t) => {
  const dir = join(await scratch(t), "mvm");
  await mkdir(dir);
  for (const mode of [0o750, 0o705, 0o777]) {
    await chmod(dir, mode);
    await assert.rejects(ensurePrivateDir(dir), (err: unknown) => {
      assert.ok(err instanceof PermissionDeniedError);
      assert.match(err.message, new RegExp(`mode 0${mode.toString(8)}`));
      return true;
    });
  }
});

test("refuses a directory owned by another uid", { skip: process.getuid?.() !== 0 ? "needs root to chown" : false }, async (t) => {
  const dir = join(await scratch(t), "mvm");
  await mkdir(dir, { mode: 0o700 });
  await chown(dir, 12345, 12345);
  await assert.rejects(ensurePrivateDir(dir), (err: unknown) => err instanceof PermissionDeniedError && /uid 12345/.test(err.message));
});

test("refuses a symlink in place of the directory", async (t) => {
  const base = await scratch(t);
  await mkdir(join(base, "real"), { mode: 0o700 });
  await symlink(join(base, "real"), join(base, "mvm"));
  await assert.rejects(ensurePrivateDir(join(base, "mvm")), PermissionDeniedError);
});

test("removes a stale socket nobody answers on", async (t) => {
  const path = join(await scratch(t), "stale.sock");
  staleSocket(path);
  assert.equal(await socketAnswers(path), false);
  await clearStaleSocket(path);
  assert.equal(existsSync(path), false);
});

test("refuses a socket a live server answers on, and leaves it", async (t) => {
  const path = join(await scratch(t), "live.sock");
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  await assert.rejects(clearStaleSocket(path), AlreadyExistsError);
  assert.ok(existsSync(path));
});

test("refuses to delete a file that is not a socket", async (t) => {
  const path = join(await scratch(t), "file.sock");
  await writeFile(path, "not a socket");
  await assert.rejects(clearStaleSocket(path), AlreadyExistsError);
  assert.ok(existsSync(path));
});

test("a missing socket path is fine", async (t) => {
  await clearStaleSocket(join(await scratch(t), "none.sock"));
});

test("with an operator group the directory becomes 0710 owned by it; one open to others or writable by the group is still refused", { skip: process.getuid?.() !== 0 ? "needs root to give a directory to another group" : false }, async (t) => {
  const gid = 64_999;
  const dir = join(await scratch(t), "mvm");
  await ensurePrivateDir(dir, { groupGid: gid });
  let st = await lstat(dir);
  assert.deepEqual([st.mode & 0o777, st.gid], [0o710, gid]);
  // Idempotent on its own result, and a private 0700 directory is converted.
  await ensurePrivateDir(dir, { groupGid: gid });
  await chmod(dir, 0o700);
  await ensurePrivateDir(dir, { groupGid: gid });
  st = await lstat(dir);
  assert.deepEqual([st.mode & 0o777, st.gid], [0o710, gid]);
  for (const mode of [0o711, 0o730]) {
    await chmod(dir, mode);
    await assert.rejects(ensurePrivateDir(dir, { groupGid: gid }), PermissionDeniedError);
  }
  // A directory group-open to some other group is refused too.
  await chown(dir, 0, 64_998);
  await chmod(dir, 0o710);
  await assert.rejects(ensurePrivateDir(dir, { groupGid: gid }), PermissionDeniedError);
});
