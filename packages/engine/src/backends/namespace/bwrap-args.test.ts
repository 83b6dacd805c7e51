import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { agentRuntimeCommand } from "../../runtime/agent-runtime.js";
import { DEV_SHM_BYTES, RUN_TMPFS_BYTES, bwrapArgs, bwrapArgsThroughFd, launchArgv, tmpfsCapBytes } from "./bwrap-args.js";

const isRoot = process.getuid?.() === 0;

const base = { rootfsDir: "/images/abc", agentDir: "/runtime/def", workMiB: 64, tmpMiB: 8, seccompFd: 3, relaySocketPath: "/tmp/mvm-relay-abc123/relay.sock" };

/** The value following `flag` (first occurrence after `from`). */
function after(args: string[], flag: string, from = 0): string | undefined {
  const i = args.indexOf(flag, from);
  return i < 0 ? undefined : args[i + 1];
}

test("bwrapArgs isolates every namespace, drops capabilities and disables nested user namespaces", () => {
  const args = bwrapArgs(base);
  for (const flag of ["--unshare-all", "--unshare-user", "--unshare-cgroup", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv"]) {
    assert.ok(args.includes(flag), flag);
  }
  assert.equal(after(args, "--cap-drop"), "ALL");
  assert.equal(after(args, "--hostname"), "sandbox");
  assert.equal(after(args, "--uid"), "1000");
  assert.equal(after(args, "--gid"), "1000");
  assert.equal(after(args, "--chdir"), "/work");
  assert.equal(after(args, "--seccomp"), "3");
  assert.equal(args.includes("--json-status-fd"), false);
  assert.equal(after(bwrapArgs({ ...base, statusFd: 4 }), "--json-status-fd"), "4");
});

test("bwrapArgs mounts the image read-only as /, then /proc, /dev, capped tmpfs and the runtime", () => {
  const args = bwrapArgs(base);
  const root = args.indexOf("--ro-bind");
  assert.deepEqual(args.slice(root, root + 3), ["--ro-bind", "/images/abc", "/"]);
  assert.ok(args.indexOf("--proc") > root && args.indexOf("--dev") > root, "root first");
  assert.equal(after(args, "--proc"), "/proc");
  assert.equal(after(args, "--dev"), "/dev");
  const work = args.indexOf("/work", args.indexOf("--tmpfs"));
  assert.deepEqual(args.slice(work - 3, work + 1), ["--size", String(64 * 1024 * 1024), "--tmpfs", "/work"]);
  const tmp = args.lastIndexOf("/tmp");
  assert.deepEqual(args.slice(tmp - 3, tmp + 1), ["--size", String(8 * 1024 * 1024), "--tmpfs", "/tmp"]);
  const runtime = args.indexOf("--ro-bind", root + 1);
  assert.deepEqual(args.slice(runtime, runtime + 3), ["--ro-bind", "/runtime/def", "/.mvm"]);
  assert.equal(args.filter((a) => a === "--bind" || a === "--dev-bind").length, 0, "no writable host mounts");
});

test("bwrapArgs binds the relay socket read-only at /dev/mvm-relay, after /dev", () => {
  const args = bwrapArgs(base);
  const at = args.indexOf("/dev/mvm-relay");
  assert.deepEqual(args.slice(at - 2, at + 1), ["--ro-bind", "/tmp/mvm-relay-abc123/relay.sock", "/dev/mvm-relay"]);
  assert.ok(at > args.indexOf("--dev"), "the bind must come after the /dev tmpfs");
  assert.ok(at < args.indexOf("--"), "a bwrap option, not part of the command");
});

test("bwrapArgs adds no trust bundle mounts unless asked, and the /run tmpfs before the bundle when asked", () => {
  const plain = bwrapArgs(base);
  assert.equal(plain.includes("--ro-bind-data"), false);
  assert.equal(plain.includes("/run"), false);

  const both = bwrapArgs({ ...base, trustBundle: { fd: 5, systemFd: 6 } });
  const run = both.indexOf("/run");
  assert.deepEqual(both.slice(run - 3, run + 1), ["--size", String(1024 * 1024), "--tmpfs", "/run"]);
  const own = both.indexOf("/run/mvm/ca-certificates.crt");
  assert.deepEqual(both.slice(own - 4, own + 1), ["--perms", "0444", "--ro-bind-data", "5", "/run/mvm/ca-certificates.crt"]);
  assert.ok(own > run, "the bundle's mount point is created on the /run tmpfs");
  const system = both.indexOf("/etc/ssl/certs/ca-certificates.crt");
  assert.deepEqual(both.slice(system - 4, system + 1), ["--perms", "0444", "--ro-bind-data", "6", "/etc/ssl/certs/ca-certificates.crt"]);
  assert.ok(system > both.indexOf("/"), "over the image root");

  const ownOnly = bwrapArgs({ ...base, trustBundle: { fd: 5 } });
  assert.ok(ownOnly.includes("/run/mvm/ca-certificates.crt"));
  assert.equal(ownOnly.includes("/etc/ssl/certs/ca-certificates.crt"), false);
  assert.equal(ownOnly.filter((a) => a === "--ro-bind-data").length, 1);
});

test("bwrapArgs ends with -- and the agent command with its relay (or the given one)", () => {
  const args = bwrapArgs(base);
  const sep = args.indexOf("--");
  assert.deepEqual(args.slice(sep + 1), [...agentRuntimeCommand({ relayPath: "/dev/mvm-relay" })]);
  assert.deepEqual(args.slice(-2), ["--relay", "/dev/mvm-relay"]);
  const custom = bwrapArgs({ ...base, command: ["/bin/sh", "-c", "--uid 0"] });
  assert.deepEqual(custom.slice(custom.indexOf("--") + 1), ["/bin/sh", "-c", "--uid 0"]);
});

test("launchArgv puts setpriv before bwrap only when a user switch is asked for", () => {
  const plain = launchArgv({ procsFiles: ["/cg/a/cgroup.procs"], bwrapPath: "/usr/bin/bwrap", bwrapArgs: ["--x"] });
  assert.deepEqual(plain.slice(0, 2), ["/bin/sh", "-c"]);
  assert.deepEqual(plain.slice(3), ["mvm-prelude", "1", "/cg/a/cgroup.procs", "/usr/bin/bwrap", "--x"]);
  const switched = launchArgv({
    procsFiles: [],
    bwrapPath: "/usr/bin/bwrap",
    bwrapArgs: ["--x"],
    switchUser: { uid: 0x7000_0001, setprivPath: "/usr/bin/setpriv" },
  });
  assert.deepEqual(switched.slice(3), [
    "mvm-prelude", "0",
    "/usr/bin/setpriv", "--reuid=1879048193", "--regid=1879048193", "--clear-groups", "--inh-caps=-all",
    "/usr/bin/bwrap", "--x",
  ]);
});

async function runPrelude(argv: string[]): Promise<{ code: number | null; pid: number; out: string }> {
  const child = spawn(argv[0] ?? "", argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
  child.stderr.setEncoding("utf8").on("data", (s: string) => (out += s));
  const [code] = (await once(child, "close")) as [number | null];
  return { code, pid: child.pid ?? 0, out };
}

test("the prelude sets a hard core limit of 0, joins each cgroup.procs file with its own pid, then execs", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-prelude-"));
  try {
    const files = [join(dir, "a.procs"), join(dir, "b.procs")];
    for (const f of files) await writeFile(f, "");
    const probe = 'echo "pid $$ hard $(ulimit -H -c) soft $(ulimit -S -c) uid $(id -u)"';
    const r = await runPrelude(launchArgv({ procsFiles: files, bwrapPath: "/bin/sh", bwrapArgs: ["-c", probe] }));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), `pid ${r.pid} hard 0 soft 0 uid ${process.getuid?.()}`);
    for (const f of files) assert.equal(await readFile(f, "utf8"), `${r.pid}\n`);

    const failing = await runPrelude(launchArgv({ procsFiles: [join(dir, "missing", "cgroup.procs")], bwrapPath: "/bin/echo", bwrapArgs: ["ran"] }));
    assert.notEqual(failing.code, 0);
    assert.doesNotMatch(failing.out, /ran/, "a failed cgroup join must stop the launch");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("the prelude switches to the sandbox uid through setpriv", { skip: !isRoot && "needs root" }, async () => {
  const uid = 0x6f20_0000 + (process.pid % 1000);
  const r = await runPrelude(
    launchArgv({ procsFiles: [], bwrapPath: "/bin/sh", bwrapArgs: ["-c", "id -u; id -g; id -G; grep CapEff /proc/self/status"], switchUser: { uid, setprivPath: "/usr/bin/setpriv" } }),
  );
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(r.out.trim().split("\n"), [String(uid), String(uid), String(uid), "CapEff:\t0000000000000000"]);
});

test("tmpfsCapBytes sums the /work, /tmp, /dev/shm and (with a trust bundle) /run caps", () => {
  assert.equal(tmpfsCapBytes({ workMiB: 64, tmpMiB: 8, trustBundle: false }), 72 * 1024 * 1024 + DEV_SHM_BYTES);
  assert.equal(tmpfsCapBytes({ workMiB: 64, tmpMiB: 8, trustBundle: true }), 72 * 1024 * 1024 + DEV_SHM_BYTES + RUN_TMPFS_BYTES);
});

test("bwrapArgs caps /dev/shm and makes /dev read-only after its last mount point", () => {
  const args = bwrapArgs({ ...base, trustBundle: { fd: 5 } });
  const shm = args.indexOf("/dev/shm");
  assert.deepEqual(args.slice(shm - 3, shm + 1), ["--size", String(DEV_SHM_BYTES), "--tmpfs", "/dev/shm"]);
  const ro = args.indexOf("--remount-ro");
  assert.equal(args[ro + 1], "/dev");
  assert.ok(ro > args.indexOf("--dev") && ro > shm && ro > args.indexOf("/dev/mvm-relay"), "after every mount under /dev");
  assert.equal(args.filter((a) => a.startsWith("/dev/") && args.indexOf(a) > ro).length, 0, "nothing under /dev after it");
});

test("bwrapArgsThroughFd moves every option into NUL-terminated data and keeps only --args FD and the command", () => {
  const full = bwrapArgs(base);
  const split = bwrapArgsThroughFd(base, 5);
  const separator = full.indexOf("--");
  assert.deepEqual(split.argv, ["--args", "5", ...full.slice(separator)]);
  assert.equal(split.data.toString("utf8"), full.slice(0, separator).map((a) => `${a}\0`).join(""));
  for (const hostPath of [base.rootfsDir, base.agentDir, base.relaySocketPath]) {
    assert.ok(!split.argv.some((a) => a.includes(hostPath)), `${hostPath} left on the command line`);
  }
  assert.throws(() => bwrapArgsThroughFd({ ...base, rootfsDir: "/images/a\0b" }, 5), { code: "INVALID_ARGUMENT" });
});
