import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { AgentDriver, AgentError } from "./_test/driver.js";
import { isAlive, waitDead } from "./_test/util.js";

after(() => AgentDriver.killAll());

const T = { timeout: 60_000 };

describe("exec", () => {
  let d: AgentDriver;
  before(async () => {
    d = await AgentDriver.start({ env: { ...process.env, MVM_AGENT_TEST_SECRET: "do-not-leak" } });
  });
  after(async () => {
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
  });

  it("runs argv without a shell and reports the exit", T, async () => {
    const r = await d.run(["/bin/echo", "hello", "$HOME", "*", "a b"]);
    assert.equal(r.stdout, "hello $HOME * a b\n");
    assert.equal(r.stderr, "");
    assert.equal(r.exit.exitCode, 0);
    assert.equal(r.exit.signal, null);
    assert.equal(r.exit.timedOut, false);
    assert.equal(r.exit.stdoutBytes, 18);
    assert.equal(r.exit.stderrBytes, 0);
    assert.equal(r.exit.stdoutTruncated, false);
    assert.ok(r.exit.durationMs >= 0);
  });

  it("finds argv[0] on the baseline PATH", T, async () => {
    const r = await d.run(["echo", "via-path"]);
    assert.equal(r.stdout, "via-path\n");
  });

  it("reports non-zero exit codes", T, async () => {
    for (const code of [1, 7, 255]) {
      const r = await d.run(["/bin/sh", "-c", `exit ${code}`]);
      assert.equal(r.exit.exitCode, code);
      assert.equal(r.exit.signal, null);
    }
  });

  it("reports death by signal", T, async () => {
    const r = await d.run(["/bin/sh", "-c", "kill -KILL $$"]);
    assert.equal(r.exit.exitCode, null);
    assert.equal(r.exit.signal, "SIGKILL");
    const s = await d.run(["/bin/sh", "-c", "kill -SEGV $$"]);
    assert.equal(s.exit.signal, "SIGSEGV");
  });

  it("keeps stdout and stderr apart with no in-band markers", T, async () => {
    const r = await d.run(["/bin/sh", "-c", "printf out1; printf err1 >&2; printf out2; printf err2 >&2"]);
    assert.equal(r.stdout, "out1out2");
    assert.equal(r.stderr, "err1err2");
    assert.equal(r.exit.stdoutBytes, 8);
    assert.equal(r.exit.stderrBytes, 8);
  });

  it("round-trips stdin through cat, in both directions under flow control", T, async () => {
    const input = randomBytes(5 * 1024 * 1024 + 17);
    const e = await d.exec(["/bin/cat"], { stdin: true, keep: false });
    await d.writeStream(e.stdin!, input);
    const exit = await e.exit;
    await e.stdout.finished;
    assert.equal(exit.exitCode, 0);
    assert.equal(exit.stdoutBytes, input.length);
    assert.equal(e.stdout.bytes, input.length);
    assert.equal(e.stdout.hash.digest("hex"), createHash("sha256").update(input).digest("hex"));
  });

  it("gives /dev/null as stdin when no stdin stream is requested", T, async () => {
    const r = await d.run(["/bin/sh", "-c", "cat; readlink /proc/self/fd/0"]);
    assert.equal(r.stdout, "/dev/null\n");
  });

  it("forwards output up to the cap, drains the rest and flags truncation", T, async () => {
    const r = await d.run(["/bin/sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"], { maxOutputBytes: 1000 });
    assert.equal(r.stdout.length, 1000);
    assert.equal(r.exit.stdoutBytes, 3_000_000);
    assert.equal(r.exit.stdoutTruncated, true);
    assert.equal(r.stderr, "done\n");
    assert.equal(r.exit.stderrTruncated, false);
    assert.equal(r.exit.exitCode, 0);
    const z = await d.run(["/bin/echo", "hidden"], { maxOutputBytes: 0 });
    assert.equal(z.stdout, "");
    assert.equal(z.exit.stdoutTruncated, true);
    assert.equal(z.exit.stdoutBytes, 7);
  });

  it("drains and drops output after the host aborts the stream, reporting it truncated", T, async () => {
    const e = await d.exec(["/usr/bin/head", "-c", String(8 * 1024 * 1024), "/dev/zero"], { autoCredit: false, keep: false });
    await e.stdout.waitBytes(1024 * 1024);
    d.sendControl({ t: "abort", stream: e.stdout.id, error: { code: "ABORTED", message: "reader went away" } });
    const exit = await e.exit;
    assert.equal(exit.exitCode, 0);
    assert.equal(exit.stdoutBytes, 8 * 1024 * 1024);
    assert.equal(exit.stdoutTruncated, true);
    assert.equal(e.stdout.bytes, 1024 * 1024);
    assert.equal(e.stdout.isFinished, false);
  });

  it("on timeout, SIGTERMs the whole process group, grandchildren included", T, async () => {
    const e = await d.exec(["/bin/sh", "-c", "sleep 100 & echo $!; sleep 100"], { timeoutMs: 300, killGraceMs: 5000 });
    await e.stdout.waitBytes(2);
    const grandchild = Number(e.stdout.text().trim());
    assert.ok(isAlive(grandchild));
    const exit = await e.exit;
    assert.equal(exit.timedOut, true);
    assert.equal(exit.signal, "SIGTERM");
    await waitDead(grandchild);
  });

  it("on timeout, SIGKILLs a group that ignores SIGTERM after the grace period", T, async () => {
    const e = await d.exec(["/bin/sh", "-c", "trap '' TERM; sleep 100 & echo $!; wait"], { timeoutMs: 200, killGraceMs: 200 });
    await e.stdout.waitBytes(2);
    const grandchild = Number(e.stdout.text().trim());
    const exit = await e.exit;
    assert.equal(exit.timedOut, true);
    assert.equal(exit.signal, "SIGKILL");
    await waitDead(grandchild);
  });

  it("stops waiting for output a background process holds open, then kills the group", T, async () => {
    const e = await d.exec(["/bin/sh", "-c", "sleep 100 & echo $!"], { killGraceMs: 0 });
    await e.stdout.waitBytes(2);
    const grandchild = Number(e.stdout.text().trim());
    const exit = await e.exit;
    assert.equal(exit.exitCode, 0);
    assert.equal(exit.timedOut, false);
    assert.ok(e.stdout.isFinished && e.stderr.isFinished);
    await waitDead(grandchild);
  });

  it("kills background processes left in the group when the call ends", T, async () => {
    const r = await d.run(["/bin/sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!"]);
    assert.equal(r.exit.exitCode, 0);
    await waitDead(Number(r.stdout.trim()));
  });

  it("starts commands from the environment baseline only", T, async () => {
    const r = await d.run(["/usr/bin/env"]);
    const env = Object.fromEntries(r.stdout.trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    assert.deepEqual(Object.keys(env).sort(), ["HOME", "LANG", "PATH", "TMPDIR"]);
    assert.equal(env["PATH"], "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    assert.equal(env["HOME"], "/work");
    assert.equal(env["LANG"], "C.UTF-8");
    assert.doesNotMatch(r.stdout, /do-not-leak/);
  });

  it("overlays the request env, except TMPDIR", T, async () => {
    const r = await d.run(["/usr/bin/env"], { env: { FOO: "bar baz", HOME: "/root", TMPDIR: "/evil" } });
    const lines = r.stdout.trim().split("\n");
    assert.ok(lines.includes("FOO=bar baz"));
    assert.ok(lines.includes("HOME=/root"));
    assert.ok(!lines.includes("TMPDIR=/evil"));
    assert.ok(lines.some((l) => /^TMPDIR=\/tmp\/mvm-exec-/.test(l)));
  });

  it("gives each call a fresh private TMPDIR and removes it after exit", T, async () => {
    const script = 'echo "$TMPDIR"; stat -c %a "$TMPDIR"; touch "$TMPDIR/f"; mkdir "$TMPDIR/locked"; touch "$TMPDIR/locked/g"; chmod 000 "$TMPDIR/locked"';
    const a = await d.run(["/bin/sh", "-c", script]);
    const b = await d.run(["/bin/sh", "-c", script]);
    const [dirA, modeA] = a.stdout.trim().split("\n");
    const [dirB] = b.stdout.trim().split("\n");
    assert.match(dirA!, /^\/tmp\/mvm-exec-/);
    assert.notEqual(dirA, dirB);
    assert.equal(modeA, "700");
    assert.equal(existsSync(dirA!), false);
    assert.equal(existsSync(dirB!), false);
  });

  it("uses the requested working directory", T, async () => {
    const r = await d.run(["/bin/pwd"], { cwd: "/tmp" });
    assert.equal(r.stdout, "/tmp\n");
  });

  it("maps spawn failures to typed errors and releases the streams", T, async () => {
    await assert.rejects(d.exec(["/no/such/cmd"]), (e: AgentError) => e.code === "NOT_FOUND" && e.message.includes('"/no/such/cmd"'));
    await assert.rejects(d.exec(["no-such-cmd-on-path"]), (e: AgentError) => e.code === "NOT_FOUND");
    await assert.rejects(d.exec(["/etc/passwd"]), (e: AgentError) => e.code === "PERMISSION_DENIED" && e.message.includes('"/etc/passwd"'));
    await assert.rejects(d.exec(["/bin/true"], { cwd: "/no/such/dir" }), (e: AgentError) => e.code === "NOT_FOUND" && e.message.includes('"/no/such/dir"'));
    await assert.rejects(d.exec(["/bin/true"], { cwd: "/etc/passwd" }), (e: AgentError) => e.code === "INVALID_ARGUMENT");
    // The same stream ids work again once a failed exec released them.
    const id = d.newRequestId();
    const body = { argv: ["/no/such"], env: {}, cwd: "/", stdin: 901, stdout: 902, stderr: 903, timeoutMs: 0, killGraceMs: 0, maxOutputBytes: 10 };
    const fail = await d.request("exec", body, id);
    assert.equal(fail.ok, false);
    d.collect(902);
    d.collect(903);
    const proc = d.newRequestId();
    const exit = d.waitExit(proc);
    const ok = await d.request("exec", { ...body, argv: ["/bin/true"] }, proc);
    assert.equal(ok.ok, true);
    d.sendEnd(901);
    assert.equal((await exit).exitCode, 0);
  });

  it("rejects stream ids and process handles that are in use", T, async () => {
    const e = await d.exec(["/bin/sleep", "100"]);
    const again = await d.request("exec", { argv: ["/bin/true"], env: {}, cwd: "/", stdin: null, stdout: e.stdout.id, stderr: 951, timeoutMs: 0, killGraceMs: 0, maxOutputBytes: 0 });
    assert.ok(!again.ok && again.error.code === "INVALID_ARGUMENT", JSON.stringify(again));
    const read = await d.request("readFile", { path: "/etc/hostname", stream: e.stderr.id });
    assert.ok(!read.ok && read.error.code === "INVALID_ARGUMENT", JSON.stringify(read));
    const sameHandle = await d.request("exec", { argv: ["/bin/true"], env: {}, cwd: "/", stdin: null, stdout: 952, stderr: 953, timeoutMs: 0, killGraceMs: 0, maxOutputBytes: 0 }, e.proc);
    assert.ok(!sameHandle.ok && sameHandle.error.code === "INVALID_ARGUMENT", JSON.stringify(sameHandle));
    await d.call("signal", { proc: e.proc, signal: "SIGKILL" });
    await e.exit;
  });

  it("signals the process group of a running command", T, async () => {
    const e = await d.exec(["/bin/sh", "-c", "sleep 100 & echo $!; wait"]);
    await e.stdout.waitBytes(2);
    const grandchild = Number(e.stdout.text().trim());
    assert.deepEqual(await d.call("signal", { proc: e.proc, signal: "SIGKILL" }), {});
    const exit = await e.exit;
    assert.equal(exit.signal, "SIGKILL");
    await waitDead(grandchild);
    await assert.rejects(d.call("signal", { proc: e.proc, signal: "SIGKILL" }), (err: AgentError) => err.code === "NOT_FOUND");
    await assert.rejects(d.call("signal", { proc: 999_999, signal: "SIGTERM" }), (err: AgentError) => err.code === "NOT_FOUND");
  });

  it("escalates a SIGTERM from the host to SIGKILL after killGraceMs", T, async () => {
    const e = await d.exec(["/bin/sh", "-c", "trap '' TERM; echo ready; sleep 100 & wait"], { killGraceMs: 100 });
    await e.stdout.waitBytes(6);
    await d.call("signal", { proc: e.proc, signal: "SIGTERM" });
    const exit = await e.exit;
    assert.equal(exit.signal, "SIGKILL");
    assert.equal(exit.timedOut, false);
  });

  it("lists running commands with bounded argv", T, async () => {
    const long = ["y".repeat(6000), ...Array.from({ length: 100 }, (_, i) => `${i}:${"x".repeat(400)}`)];
    const a = await d.exec(["/bin/sleep", "100"]);
    const b = await d.exec(["/bin/sh", "-c", "sleep 100", ...long]);
    const { processes } = await d.call("listProcesses", {});
    const pa = processes.find((p) => p.proc === a.proc);
    const pb = processes.find((p) => p.proc === b.proc);
    assert.deepEqual(pa?.argv, ["/bin/sleep", "100"]);
    assert.equal(pa?.pid, a.pid);
    assert.ok(pb && pb.argv.length <= 64 && pb.argv.every((x) => x.length <= 4096));
    assert.deepEqual(pb.argv.slice(0, 3), ["/bin/sh", "-c", "sleep 100"]);
    assert.equal(pb.argv[3], "y".repeat(4096));
    await d.call("signal", { proc: a.proc, signal: "SIGKILL" });
    await d.call("signal", { proc: b.proc, signal: "SIGKILL" });
    await Promise.all([a.exit, b.exit]);
    const after = await d.call("listProcesses", {});
    assert.ok(!after.processes.some((p) => p.proc === a.proc || p.proc === b.proc));
  });

  it("drops stdin that arrives after the command finished", T, async () => {
    const e = await d.exec(["/bin/true"], { stdin: true });
    await e.exit;
    d.sendData(e.stdin!, Buffer.from("late"));
    d.sendEnd(e.stdin!);
    assert.deepEqual(await d.call("ping", {}), {});
  });

  it("keeps serving when a command closes its stdin early", T, async () => {
    const e = await d.exec(["/usr/bin/head", "-c", "1"], { stdin: true });
    void d.writeStream(e.stdin!, Buffer.alloc(4 * 1024 * 1024, 97));
    const exit = await e.exit;
    assert.equal(exit.exitCode, 0);
    assert.deepEqual(await d.call("ping", {}), {});
  });
});

describe("exec hygiene", () => {
  it("passes no descriptor beyond 0-2 to commands, even ones the agent inherited", T, async () => {
    const d = await AgentDriver.start({ inheritedFd: 40 });
    const r = await d.run(["/bin/ls", "-l", "/proc/self/fd"]);
    const fds = r.stdout
      .split("\n")
      .filter((l) => l.includes(" -> "))
      .map((l) => {
        const [left, target] = l.split(" -> ");
        return { fd: Number(left!.trim().split(/\s+/).pop()), target: target! };
      });
    const extra = fds.filter((f) => f.fd > 2);
    assert.deepEqual(fds.filter((f) => f.fd <= 2).map((f) => f.fd), [0, 1, 2]);
    assert.equal(extra.length, 1, r.stdout);
    assert.match(extra[0]!.target, /^\/proc\/\d+\/fd$/);
    assert.equal(fds[0]!.target, "/dev/null");
    assert.deepEqual(d.violations, []);
    await d.close();
  });
});
