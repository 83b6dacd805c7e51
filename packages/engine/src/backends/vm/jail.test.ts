import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { lstat, mkdtemp, open, readFile, readdir, realpath, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import type { Duplex, Readable } from "node:stream";
import { describe, it } from "node:test";
import { AdmissionError, InvalidArgumentError } from "@mvm/protocol";
import { listProcessesWithId, readProcStartTime, readProcStat, waitForExit } from "../../_internal/proc.js";
import { PRELUDE_SCRIPT } from "../namespace/bwrap-args.js";
import { SandboxUidAllocator } from "../namespace/uid.js";
import { JAIL_VM_DIR, type JailFile, jailArgv, jailDeviceGroups, jailPathFor, qemuJailFiles } from "./jail.js";

const QEMU = "/usr/bin/qemu-system-x86_64";
const BWRAP = "/usr/bin/bwrap";
const SETPRIV = "/usr/bin/setpriv";
const BUSYBOX = "/bin/busybox";
const isRoot = process.getuid?.() === 0;
const missing = [QEMU, BWRAP, SETPRIV, BUSYBOX].filter((path) => !existsSync(path));
const hostSkip: string | false =
  !isRoot ? "needs root: QEMU is jailed as an unprivileged host uid through setpriv" : missing.length > 0 ? `not installed: ${missing.join(", ")}` : false;


/** The value following the first `flag`. */
function after(args: readonly string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
}

/** [source, destination] of every occurrence of a two-argument bwrap option. */
function pairs(args: readonly string[], flag: string): Array<[string, string]> {
  const found: Array<[string, string]> = [];
  for (let i = 0; i < args.length; i++) if (args[i] === flag) found.push([args[i + 1] ?? "", args[i + 2] ?? ""]);
  return found;
}


describe("jailPathFor", () => {
  it("puts plain names under JAIL_VM_DIR and rejects anything else", () => {
    assert.equal(JAIL_VM_DIR, "/vm");
    assert.equal(jailPathFor("root.ext4"), "/vm/root.ext4");
    for (const bad of ["", ".", "..", "a/b", "/abs", "x,readonly=off", "a b", "n\0"]) {
      assert.throws(() => jailPathFor(bad), InvalidArgumentError, JSON.stringify(bad));
    }
  });
});

describe("jailArgv", () => {
  const files: JailFile[] = [
    { hostPath: "/usr/bin/qemu-system-x86_64", jailPath: "/usr/bin/qemu-system-x86_64" },
    { hostPath: "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", jailPath: "/lib/x86_64-linux-gnu/libz.so.1" },
    { hostPath: "/var/lib/mvm/disks/abc.ext4", jailPath: jailPathFor("root.ext4") },
    { hostPath: "/var/lib/mvm/sandboxes/s1/overlay", jailPath: jailPathFor("overlay"), writable: true },
  ];
  const base = { bwrapPath: BWRAP, qemuPath: QEMU, qemuArgs: ["-M", "microvm", "-drive", "file=/vm/root.ext4"], files };

  it("runs the prelude, then bubblewrap in every namespace with no capabilities and no nested user namespaces", () => {
    const argv = jailArgv(base);
    assert.deepEqual(argv.slice(0, 6), ["/bin/sh", "-c", PRELUDE_SCRIPT, "mvm-qemu-prelude", "0", BWRAP]);
    for (const flag of ["--unshare-all", "--unshare-user", "--unshare-cgroup", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv"]) {
      assert.ok(argv.includes(flag), flag);
    }
    assert.equal(after(argv, "--cap-drop"), "ALL");
    const dash = argv.indexOf("--");
    assert.deepEqual(argv.slice(dash + 1), [QEMU, ...base.qemuArgs]);
  });

  it("binds exactly the listed files, read-only unless writable, and nothing of /etc, /proc or /sys", () => {
    const argv = jailArgv(base);
    const options = argv.slice(0, argv.indexOf("--"));
    assert.deepEqual(pairs(options, "--ro-bind"), files.filter((f) => f.writable !== true).map((f) => [f.hostPath, f.jailPath]));
    assert.deepEqual(pairs(options, "--bind"), [["/var/lib/mvm/sandboxes/s1/overlay", "/vm/overlay"]]);
    assert.equal(after(options, "--dev"), "/dev");
    assert.ok(!options.includes("--proc"), "no /proc");
    for (const arg of options) assert.ok(!/^\/(etc|sys|proc|home|root)(\/|$)/.test(arg), `unexpected ${arg}`);
    // The root and /dev are remounted read-only after every bind is in place.
    const lastBind = Math.max(options.lastIndexOf("--ro-bind"), options.lastIndexOf("--bind"));
    const remounts = pairs(options, "--remount-ro").map(([path]) => path);
    assert.deepEqual(remounts, ["/dev", "/"]);
    assert.ok(options.indexOf("--remount-ro") > lastBind);
    assert.deepEqual(pairs(jailArgv({ ...base, devices: ["/dev/kvm"] }), "--dev-bind"), [["/dev/kvm", "/dev/kvm"]]);
  });

  it("switches to the uid through setpriv only when a uid is given", () => {
    const plain = jailArgv(base);
    assert.ok(!plain.some((arg) => arg.includes("setpriv") || arg.startsWith("--reuid")));
    const switched = jailArgv({ ...base, uid: 0x7000_0042, setprivPath: "/sbin/setpriv", procsFiles: ["/sys/fs/cgroup/memory/mvm/s1/cgroup.procs"] });
    const drop = switched.indexOf("/sbin/setpriv");
    assert.deepEqual(switched.slice(4, drop), ["1", "/sys/fs/cgroup/memory/mvm/s1/cgroup.procs"]);
    assert.deepEqual(switched.slice(drop, switched.indexOf(BWRAP)), [
      "/sbin/setpriv", "--reuid=1879048258", "--regid=1879048258", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
    ]);
    const withKvm = jailArgv({ ...base, uid: 5000, groups: [108], devices: ["/dev/kvm"] });
    assert.ok(withKvm.includes("/usr/bin/setpriv"));
    assert.ok(withKvm.includes("--groups=108") && !withKvm.includes("--clear-groups"));
  });

  it("rejects root ids, unsafe paths, duplicates and a QEMU outside the jail", () => {
    const bad: Array<Partial<Parameters<typeof jailArgv>[0]>> = [
      { uid: 0 },
      { uid: 1.5 },
      { uid: 5000, groups: [0] },
      { groups: [108] },
      { bwrapPath: "bwrap" },
      { qemuPath: "/usr/bin/qemu-kvm" },
      { files: [...files, { hostPath: "/x", jailPath: "/vm/root.ext4" }] },
      { files: [...files, { hostPath: "/x", jailPath: "/vm/../etc/shadow" }] },
      { files: [...files, { hostPath: "relative", jailPath: "/vm/x" }] },
      { files: [...files, { hostPath: "/x", jailPath: "/" }] },
      { files: [...files, { hostPath: "/x", jailPath: "/dev/sda" }] },
      { devices: ["/etc/shadow"] },
      { procsFiles: ["cgroup.procs"] },
    ];
    for (const change of bad) assert.throws(() => jailArgv({ ...base, ...change }), InvalidArgumentError, JSON.stringify(change));
  });
});

describe("qemuJailFiles", { skip: !existsSync(QEMU) && `${QEMU} is not installed` }, () => {
  it("lists QEMU, its interpreter and libraries, the TCG module and the microvm firmware, from real host files", async () => {
    const files = await qemuJailFiles(QEMU);
    const jailPaths = files.map((f) => f.jailPath);
    assert.equal(new Set(jailPaths).size, jailPaths.length, "no duplicates");
    for (const wanted of [QEMU, "/usr/share/qemu/bios-microvm.bin", "/lib64/ld-linux-x86-64.so.2"]) assert.ok(jailPaths.includes(wanted), wanted);
    assert.ok(jailPaths.some((p) => /\/qemu\/accel-tcg-x86_64\.so$/.test(p)), "accel-tcg module");
    assert.ok(jailPaths.some((p) => /\/libc\.so\.6$/.test(p)) && jailPaths.some((p) => /\/libglib-2\.0\.so\.0$/.test(p)), "libraries");
    assert.ok(!jailPaths.some((p) => /^\/(etc|proc|sys|var|home|root)\//.test(p)));
    for (const file of files) {
      assert.equal(await realpath(file.hostPath), file.hostPath, "bound from the real file");
      assert.ok((await stat(file.hostPath)).isFile(), file.hostPath);
      assert.notEqual(file.writable, true);
    }
    const again = await qemuJailFiles(QEMU);
    assert.deepEqual(again, files);
    again.pop();
    assert.equal((await qemuJailFiles(QEMU)).length, files.length, "callers get their own copy");
  });

  it("rejects a relative or missing QEMU", async () => {
    await assert.rejects(qemuJailFiles("qemu-system-x86_64"), InvalidArgumentError);
    await assert.rejects(qemuJailFiles("/nonexistent/bin/qemu-system-x86_64"), AdmissionError);
  });
});

/** Reads newline-delimited QMP messages from `socket`, at most 64 KiB buffered. */
class QmpReader {
  private buffer = "";
  private readonly queue: unknown[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;

  constructor(private readonly socket: Duplex) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.buffer += chunk;
      for (let nl = this.buffer.indexOf("\n"); nl >= 0; nl = this.buffer.indexOf("\n")) {
        this.queue.push(JSON.parse(this.buffer.slice(0, nl)));
        this.buffer = this.buffer.slice(nl + 1);
      }
      if (this.buffer.length > 65_536) socket.destroy(new Error("QMP line too long"));
      this.waiter?.();
    });
    const end = (): void => {
      this.ended = true;
      this.waiter?.();
    };
    socket.on("close", end);
    socket.on("error", end);
  }

  /** The next message that is not an event. */
  async next(): Promise<Record<string, unknown>> {
    for (;;) {
      const message = this.queue.shift() as Record<string, unknown> | undefined;
      if (message !== undefined) {
        if ("event" in message) continue;
        return message;
      }
      if (this.ended) throw new Error("QMP socket closed");
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    this.socket.write(`${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`);
    return this.next();
  }
}

/** Runs argv to completion, keeping its stdout and stderr (at most 64 KiB each). */
async function run(argv: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(argv[0] ?? "/bin/false", argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: {} });
  const keep = (stream: Readable | null): Promise<string> => {
    let text = "";
    stream?.setEncoding("utf8");
    stream?.on("data", (chunk: string) => {
      if (text.length < 65_536) text += chunk;
    });
    return once(stream ?? child, "close").then(() => text);
  };
  const [stdout, stderr, [code]] = await Promise.all([keep(child.stdout), keep(child.stderr), once(child, "exit") as Promise<[number | null]>]);
  return { code, stdout, stderr };
}

async function childrenOf(pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8");
  return text.trim().split(/\s+/).filter(Boolean).map(Number);
}

/** Every path under `root` (relative, with a leading slash), not following symlinks. */
async function walk(root: string, dir = "/"): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(join(root, dir), { withFileTypes: true })) {
    const path = posix.join(dir, entry.name);
    found.push(path);
    if (entry.isDirectory()) found.push(...(await walk(root, path)));
  }
  return found;
}

function statusField(status: string, name: string): string {
  return new RegExp(`^${name}:[ \\t]*(.*)$`, "m").exec(status)?.[1]?.trim() ?? "";
}

describe("QEMU in the jail", { skip: hostSkip }, () => {
  const uids = new SandboxUidAllocator();

  it("prints its version as an unprivileged uid", { timeout: 60_000 }, async () => {
    const uid = await uids.allocate();
    try {
      const files = await qemuJailFiles(QEMU);
      const result = await run(jailArgv({ bwrapPath: BWRAP, setprivPath: SETPRIV, uid, qemuPath: QEMU, qemuArgs: ["-version"], files }));
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /^QEMU emulator version \d+\.\d+/);
    } finally {
      uids.release(uid);
    }
  });

  it("keeps a paused microvm up with no privileges, sees only its files, and cannot open host files", { timeout: 120_000 }, async (t) => {
    const uid = await uids.allocate();
    const dir = await mkdtemp(join(tmpdir(), "mvm-jail-"));
    let child: ChildProcess | undefined;
    try {
      const secretPath = join(dir, "host-secret");
      await writeFile(secretPath, "host only\n", { mode: 0o644 });
      const fd4Path = join(dir, "passed-fd");
      await writeFile(fd4Path, "passed by fd\n");
      const fd4 = await open(fd4Path, "r");
      const files = await qemuJailFiles(QEMU);
      const argv = jailArgv({
        bwrapPath: BWRAP, setprivPath: SETPRIV, uid, qemuPath: QEMU, files,
        qemuArgs: [
          "-M", "microvm,x-option-roms=off", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-m", "128",
          "-chardev", "socket,id=mon,fd=3", "-mon", "chardev=mon,mode=control",
          "-chardev", "socket,id=mon2,fd=5", "-mon", "chardev=mon2,mode=control",
          "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ],
      });
      try {
        child = spawn(argv[0] ?? "/bin/sh", argv.slice(1), { stdio: ["pipe", "pipe", "pipe", "pipe", fd4.fd, "pipe"], detached: true, env: {} });
      } finally {
        await fd4.close();
      }
      const proc = child;
      const exited = once(proc, "exit");
      let stderr = "";
      proc.stderr?.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk.slice(0, 4096)));
      const qmp = new QmpReader(proc.stdio[3] as Duplex);
      const qmp2 = new QmpReader((proc.stdio as unknown[])[5] as Duplex);

      const greeting = await qmp.next().catch((err: unknown) => assert.fail(`no QMP greeting: ${String(err)}; stderr: ${stderr}`));
      assert.ok("QMP" in greeting);
      assert.deepEqual(await qmp.execute("qmp_capabilities"), { return: {} });
      const queried = await qmp.execute("query-status");
      assert.equal((queried.return as { status?: unknown } | undefined)?.status, "prelaunch", JSON.stringify(queried));
      // fd 5 reached QEMU: a second monitor answers on it.
      assert.ok("QMP" in (await qmp2.next()));

      // bwrap (our child) → bwrap as pid 1 of the new pid namespace → QEMU.
      const bwrapPid = proc.pid ?? 0;
      const [nsInit] = await childrenOf(bwrapPid);
      assert.ok(nsInit !== undefined);
      const [qemuPid] = await childrenOf(nsInit);
      assert.ok(qemuPid !== undefined);
      assert.match(await readFile(`/proc/${qemuPid}/comm`, "utf8"), /^qemu-system/);
      const startTimes = [await readProcStartTime(nsInit), await readProcStartTime(qemuPid)];

      const status = await readFile(`/proc/${qemuPid}/status`, "utf8");
      assert.deepEqual(statusField(status, "Uid").split(/\s+/), Array(4).fill(String(uid)));
      assert.deepEqual(statusField(status, "Gid").split(/\s+/), Array(4).fill(String(uid)));
      assert.equal(statusField(status, "Groups"), "");
      assert.equal(statusField(status, "NoNewPrivs"), "1");
      assert.equal(statusField(status, "Seccomp"), "2");
      for (const caps of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) assert.equal(BigInt(`0x${statusField(status, caps)}`), 0n, caps);
      const limits = await readFile(`/proc/${qemuPid}/limits`, "utf8");
      assert.match(limits, /^Max core file size\s+0\s+0\s/m);

      // fd 4 is the very file the engine opened.
      const [passed, original] = await Promise.all([stat(`/proc/${qemuPid}/fd/4`), stat(fd4Path)]);
      assert.deepEqual([passed.dev, passed.ino], [original.dev, original.ino]);

      // Its mount view holds the listed files and their directories, /dev, and nothing else.
      const root = `/proc/${qemuPid}/root`;
      const allowed = new Set<string>();
      for (const file of files) {
        for (let path = file.jailPath; path !== "/"; path = posix.dirname(path)) allowed.add(path);
      }
      const seen = await walk(root);
      const unexpected = seen.filter((path) => !allowed.has(path) && path !== "/dev" && !path.startsWith("/dev/"));
      assert.deepEqual(unexpected, []);
      for (const file of files) assert.ok(seen.includes(file.jailPath), file.jailPath);
      for (const absent of ["/etc", "/etc/shadow", "/root", "/var/lib/mvm", "/proc", "/sys", "/home", "/tmp", secretPath]) {
        await assert.rejects(lstat(join(root, absent)), { code: "ENOENT" }, absent);
      }
      const mounts = await readFile(`/proc/${qemuPid}/mountinfo`, "utf8");
      const rootMount = mounts.split("\n").find((line) => line.split(" ")[4] === "/");
      assert.match(rootMount ?? "", /^\S+ \S+ \S+ \S+ \/ (ro|ro,\S*)/, "read-only root");

      // QEMU itself can open a file in its jail but no host file outside it.
      assert.deepEqual(
        await qmp.execute("blockdev-add", { "driver": "file", "node-name": "inside", "filename": "/usr/share/qemu/bios-microvm.bin", "read-only": true }),
        { return: {} },
      );
      for (const [index, path] of ["/etc/hostname", "/etc/shadow", secretPath].entries()) {
        const reply = await qmp.execute("blockdev-add", { "driver": "file", "node-name": `outside${index}`, "filename": path, "read-only": true });
        assert.match(JSON.stringify(reply.error ?? reply), /No such file or directory/, path);
      }

      await t.test("a program in an identical jail cannot read host files", async () => {
        const probeFiles = [...files, { hostPath: await realpath(BUSYBOX), jailPath: "/bin/busybox" }];
        const probe = (args: string[]) => run(jailArgv({ bwrapPath: BWRAP, setprivPath: SETPRIV, uid, qemuPath: "/bin/busybox", qemuArgs: args, files: probeFiles }));
        const control = await probe(["cat", "/usr/share/qemu/bios-microvm.bin"]);
        assert.equal(control.code, 0, control.stderr);
        assert.ok(control.stdout.length > 0);
        for (const args of [["cat", "/etc/shadow"], ["ls", "/root"], ["ls", "/var/lib/mvm"], ["cat", secretPath], ["cat", "/proc/self/status"]]) {
          const result = await probe(args);
          assert.notEqual(result.code, 0, args.join(" "));
          assert.match(result.stderr, /No such file or directory/, args.join(" "));
        }
        const write = await probe(["touch", "/new-file"]);
        assert.notEqual(write.code, 0);
        assert.match(write.stderr, /Read-only file system/);
      });

      proc.kill("SIGKILL");
      await exited;
      assert.ok(await waitForExit(nsInit, startTimes[0] ?? "", 10_000), "bwrap's pid 1 exited");
      assert.ok(await waitForExit(qemuPid, startTimes[1] ?? "", 10_000), "QEMU exited");
      const left = [];
      for (const pid of await listProcessesWithId(uid)) {
        const state = (await readProcStat(pid))?.state;
        if (state !== undefined && state !== "Z" && state !== "X") left.push(pid);
      }
      assert.deepEqual(left, [], "no process of the jail's uid is left");
    } finally {
      if (child?.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await rm(dir, { recursive: true, force: true });
      uids.release(uid);
    }
  });
});

describe("devices in the jail", { skip: hostSkip }, () => {
  it("names the group a device needs, and a jailed uid writes it only with that group", { timeout: 60_000 }, async () => {
    const uids = new SandboxUidAllocator();
    const uid = await uids.allocate();
    const gid = await uids.allocate(); // a group no file or process uses
    // A copy of /dev/null (char 1:3) that only root and group `gid` may open, standing in for /dev/kvm.
    const device = `/dev/mvm-jail-test-${process.pid}`;
    const made = await run(["/usr/bin/mknod", "-m", "0660", device, "c", "1", "3"]);
    assert.equal(made.code, 0, made.stderr);
    try {
      assert.equal((await run(["/usr/bin/chown", `0:${gid}`, device])).code, 0);
      assert.deepEqual(await jailDeviceGroups([device, "/dev/null"]), [gid]);
      await assert.rejects(jailDeviceGroups(["/dev/mvm-jail-test-missing"]), AdmissionError);
      await assert.rejects(jailDeviceGroups([BUSYBOX]), /not a character device/);

      const files = [...(await qemuJailFiles(QEMU)), { hostPath: await realpath(BUSYBOX), jailPath: "/bin/busybox" }];
      const write = (groups?: number[]) =>
        run(jailArgv({
          bwrapPath: BWRAP, setprivPath: SETPRIV, uid, ...(groups !== undefined ? { groups } : {}), devices: [device],
          qemuPath: "/bin/busybox", qemuArgs: ["sh", "-c", `echo x > ${device} && echo written`], files,
        }));
      const allowed = await write([gid]);
      assert.equal(allowed.code, 0, allowed.stderr);
      assert.equal(allowed.stdout, "written\n");
      const denied = await write();
      assert.notEqual(denied.code, 0);
      assert.match(denied.stderr, /Permission denied/);
    } finally {
      await rm(device, { force: true });
      uids.release(uid);
      uids.release(gid);
    }
  });
});
