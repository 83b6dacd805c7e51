/**
 * The pure parts of namespace snapshots: the restore script, the restore shell's mount ops, the
 * archive bound, the static-ELF check and the status pipe reader.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { bwrapArgs } from "./bwrap-args.js";
import { archiveLimitBytes } from "./snapshot-capture.js";
import { RESTORE_SHELL_FD, RESTORE_SHELL_PATH, RESTORE_STATUS_FD, readRestoreOutcome, restoreCommand, restoreScript } from "./snapshot-restore.js";
import { isStaticElf } from "./snapshot-tools.js";

const base = { rootfsDir: "/images/abc", agentDir: "/runtime/def", workMiB: 64, tmpMiB: 8, seccompFd: 3, relaySocketPath: "/tmp/r/relay.sock" };

test("the restore script extracts each archive from its own descriptor, reports, closes every restore descriptor, then execs the agent", () => {
  const script = restoreScript({ trees: ["work", "tmp"], libraryCount: 4 });
  const lines = script.split("\n");
  assert.equal(lines[0], "rm -rf /tmp/.mvm-restore || exit 70");
  assert.match(script, /--preload "\/proc\/self\/fd\/12 \/proc\/self\/fd\/13 \/proc\/self\/fd\/14 \/proc\/self\/fd\/15"/);
  assert.match(script, /untar --directory=\/work <&16 >&2 8>&- \|\|/);
  assert.match(script, /untar --directory=\/tmp <&17 >&2 8>&- \|\|/);
  const closing = lines.find((l) => l.startsWith("exec ") && l.includes(">&-")) ?? "";
  for (let fd = RESTORE_STATUS_FD; fd <= 17; fd++) assert.ok(closing.includes(` ${fd}>&-`), `fd ${fd} is closed`);
  assert.deepEqual(lines.slice(-4, -3), ["echo ok >&8 || exit 72"]);
  assert.equal(lines.at(-1), 'exec "$@"');
  assert.ok(!/\$\{|`/.test(script.replace('"$@"', "")), "nothing is expanded from outside");
});

test("only the archives present are extracted", () => {
  const script = restoreScript({ trees: ["tmp"], libraryCount: 1 });
  assert.doesNotMatch(script, /--directory=\/work/);
  assert.match(script, /untar --directory=\/tmp <&13 /);
  const command = restoreCommand({ trees: ["tmp"], libraryCount: 1 }, ["/.mvm/bin/node", "agent"]);
  assert.deepEqual(command.slice(0, 2), [RESTORE_SHELL_PATH, "-c"]);
  assert.deepEqual(command.slice(3), ["mvm-restore", "/.mvm/bin/node", "agent"]);
});

test("the restore shell's symlink is made on the new /tmp, after it is mounted, only when restoring", () => {
  assert.equal(bwrapArgs(base).includes("--symlink"), false);
  const args = bwrapArgs({ ...base, restoreShellFd: RESTORE_SHELL_FD });
  const tmp = args.findIndex((a, i) => a === "--tmpfs" && args[i + 1] === "/tmp");
  const link = args.indexOf("--symlink");
  assert.ok(tmp >= 0 && link > tmp);
  assert.deepEqual(args.slice(link - 2, link + 3), ["--dir", "/tmp/.mvm-restore", "--symlink", "/proc/self/fd/9", RESTORE_SHELL_PATH]);
});

test("the archive bound is the cap plus an eighth plus 8 MiB", () => {
  const MiB = 1024 * 1024;
  assert.equal(archiveLimitBytes(16), 16 * MiB + 2 * MiB + 8 * MiB);
  assert.equal(archiveLimitBytes(1), MiB + 131072 + 8 * MiB);
});

test("isStaticElf tells a static busybox from a dynamic program", async () => {
  assert.equal(await isStaticElf("/bin/busybox"), true);
  assert.equal(await isStaticElf(process.execPath), false);
  assert.equal(await isStaticElf("/etc/passwd"), false);
});

test("the status reader accepts exactly ok, names a failed tree, and bounds what it reads", async () => {
  const read = async (...chunks: string[]) => {
    const s = new PassThrough();
    const outcome = readRestoreOutcome(s, undefined);
    for (const c of chunks) s.write(c);
    s.end();
    return outcome;
  };
  assert.deepEqual(await read("o", "k\n"), { ok: true });
  assert.deepEqual(await read("work 2\n"), { ok: false, tree: "work", code: 2 });
  assert.deepEqual(await read(), { ok: false });
  assert.deepEqual(await read("ok\nok\n"), { ok: false });
  assert.deepEqual(await read("x".repeat(10_000)), { ok: false });
  const aborted = readRestoreOutcome(new PassThrough(), AbortSignal.abort(new Error("stop")));
  await assert.rejects(aborted, /stop/);
});
