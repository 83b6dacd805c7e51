/**
 * The seccomp filter for real: programs run inside bubblewrap with and without `--seccomp FD`,
 * and each denied call must fail with the filter's errno while ordinary work still succeeds.
 * The probes refuse to run unless the sandbox sets MVM_SECCOMP_PROBE.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sandboxSeccompProgram } from "./seccomp.js";
import { SYSCALLS_X86_64, X32_SYSCALL_BIT, type SyscallName } from "./syscalls-x86_64.js";

const BWRAP = "/usr/bin/bwrap";
const PYTHON = "/usr/bin/python3";
const skip = !existsSync(BWRAP) ? `no bubblewrap at ${BWRAP}` : !existsSync(PYTHON) ? `no python3 at ${PYTHON}` : false;

const PROBE = String.raw`
import ctypes, json, os, socket, subprocess, sys, threading
if os.environ.get("MVM_SECCOMP_PROBE") != "1":
    sys.exit("refusing to run outside the test sandbox")
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    a = [ctypes.c_long(x) for x in (list(args) + [0] * 6)[:6]]
    ctypes.set_errno(0)
    return 0 if libc.syscall(ctypes.c_long(nr), *a) >= 0 else ctypes.get_errno()
out = {"calls": {name: sc(nr, *args) for name, nr, args in json.loads(sys.argv[1])}}
def sock(*a):
    try:
        socket.socket(*a).close()
        return 0
    except OSError as e:
        return e.errno
out["sockets"] = {
    "inet_stream": sock(socket.AF_INET, socket.SOCK_STREAM),
    "unix_stream": sock(socket.AF_UNIX, socket.SOCK_STREAM),
    "netlink_route": sock(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "netlink_audit": sock(socket.AF_NETLINK, socket.SOCK_RAW, 9),
    "inet_raw": sock(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 1),
    "packet": sock(socket.AF_PACKET, socket.SOCK_DGRAM, 0),
    "vsock": sock(socket.AF_VSOCK, socket.SOCK_STREAM, 0),
    "alg": sock(socket.AF_ALG, socket.SOCK_SEQPACKET, 0),
}
def pair(family):
    try:
        a, b = socket.socketpair(family, socket.SOCK_STREAM)
        a.close(); b.close()
        return 0
    except OSError as e:
        return e.errno
out["socketpairs"] = {"unix": pair(socket.AF_UNIX), "inet": pair(socket.AF_INET)}
t = threading.Thread(target=lambda: out.__setitem__("thread", "ran"))
t.start()
t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitpid(pid, 0)[1] >> 8
out["subprocess"] = subprocess.run(["/bin/sh", "-c", "echo hi | cat"], capture_output=True).stdout.decode()
out["personality_query"] = sc(135, 0xffffffff)
out["personality_linux"] = sc(135, 0)
out["personality_linux32"] = sc(135, 8)
print(json.dumps(out))
`;

/** Calls a 32-bit system call (getpid) through int 0x80 from 64-bit code. */
const I386_PROBE = String.raw`
import ctypes, mmap, os, sys
if os.environ.get("MVM_SECCOMP_PROBE") != "1":
    sys.exit("refusing to run outside the test sandbox")
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
print("pid", f())
`;

const NODE_PROBE = String.raw`
const { Worker } = require("node:worker_threads");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs/promises");
(async () => {
  const text = await fs.readFile("/proc/self/status", "utf8");
  const worker = await new Promise((resolve, reject) => {
    const w = new Worker("require('node:worker_threads').parentPort.postMessage(6 * 7)", { eval: true });
    w.once("message", resolve);
    w.once("error", reject);
  });
  const child = execFileSync("/bin/sh", ["-c", "echo child"]).toString().trim();
  const seccomp = /^Seccomp:\s+(\d)/m.exec(text)[1];
  console.log(JSON.stringify({ worker, child, seccomp }));
})();
`;

let dir = "";
before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), "mvm-seccomp-"));
  await chmod(dir, 0o755);
  await writeFile(join(dir, "probe.py"), PROBE, { mode: 0o444 });
  await writeFile(join(dir, "i386.py"), I386_PROBE, { mode: 0o444 });
  await writeFile(join(dir, "probe.js"), NODE_PROBE, { mode: 0o444 });
  await writeFile(join(dir, "filter.bpf"), sandboxSeccompProgram(), { mode: 0o400 });
});
after(async () => {
  if (dir !== "") await rm(dir, { recursive: true, force: true });
});

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs argv in a bubblewrap sandbox (as an unprivileged uid when root), optionally under the filter. */
async function inSandbox(argv: string[], filtered: boolean): Promise<Ran> {
  const file = await open(join(dir, "filter.bpf"), "r");
  try {
    const prefix = process.getuid?.() === 0 ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BWRAP] : [BWRAP];
    const args = [
      ...prefix.slice(1),
      "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL", "--die-with-parent",
      "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--setenv", "MVM_SECCOMP_PROBE", "1",
      ...(filtered ? ["--seccomp", "3"] : []),
      ...argv,
    ];
    const child = spawn(prefix[0] ?? BWRAP, args, { stdio: ["ignore", "pipe", "pipe", file.fd] });
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr?.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once("error", reject);
      child.once("close", (c, s) => resolve([c, s]));
    });
    return { code, signal, stdout, stderr };
  } finally {
    await file.close();
  }
}

/** Arguments chosen so that, without the filter, each call fails (or succeeds) harmlessly. */
const CALL_ARGS: Partial<Record<SyscallName, number[]>> = { ptrace: [0x4206, 0], unshare: [0], io_uring_setup: [1, 0] };
const DENIED: SyscallName[] = [
  "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
  "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module", "finit_module",
  "delete_module", "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "io_uring_setup",
  "io_uring_enter", "io_uring_register", "unshare", "setns", "open_by_handle_at", "name_to_handle_at", "swapon",
  "swapoff", "reboot", "syslog", "acct", "quotactl", "lookup_dcookie", "iopl", "ioperm", "vhangup", "settimeofday",
  "clock_settime", "clock_adjtime", "adjtimex", "kcmp", "pidfd_getfd",
];
const CLONE_NEWUSER_SIGCHLD = 0x1000_0000 | 17;
const CLONE_NEWNET_SIGCHLD = 0x4000_0000 | 17;
const CALLS: [string, number, number[]][] = [
  ...DENIED.map((name): [string, number, number[]] => [name, SYSCALLS_X86_64[name], CALL_ARGS[name] ?? []]),
  ["clone3", SYSCALLS_X86_64.clone3, [0, 0]],
  ["clone_newuser", SYSCALLS_X86_64.clone, [CLONE_NEWUSER_SIGCHLD]],
  ["clone_newnet", SYSCALLS_X86_64.clone, [CLONE_NEWNET_SIGCHLD]],
  ["x32_getpid", X32_SYSCALL_BIT | 39, []],
];

interface ProbeOut {
  calls: Record<string, number>;
  sockets: Record<string, number>;
  socketpairs: Record<string, number>;
  thread: string;
  fork: number;
  subprocess: string;
  personality_query: number;
  personality_linux: number;
  personality_linux32: number;
}

const EPERM = 1;
const ENOSYS = 38;
const EAFNOSUPPORT = 97;

test("denied calls fail with EPERM (clone3 with ENOSYS) under the filter, and ordinary work still runs", { skip }, async () => {
  const argv = [PYTHON, join(dir, "probe.py"), JSON.stringify(CALLS)];
  const [plain, filtered] = [await inSandbox(argv, false), await inSandbox(argv, true)];
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(filtered.code, 0, filtered.stderr);
  const without = JSON.parse(plain.stdout) as ProbeOut;
  const withFilter = JSON.parse(filtered.stdout) as ProbeOut;

  for (const name of DENIED) assert.equal(withFilter.calls[name], EPERM, name);
  assert.equal(withFilter.calls["clone3"], ENOSYS);
  assert.equal(withFilter.calls["clone_newuser"], EPERM);
  assert.equal(withFilter.calls["clone_newnet"], EPERM);
  assert.equal(withFilter.calls["x32_getpid"], EPERM);
  assert.deepEqual(withFilter.sockets, {
    inet_stream: 0,
    unix_stream: 0,
    netlink_route: 0,
    netlink_audit: EPERM,
    inet_raw: EPERM,
    packet: EAFNOSUPPORT,
    vsock: EAFNOSUPPORT,
    alg: EAFNOSUPPORT,
  });
  assert.deepEqual(withFilter.socketpairs, { unix: 0, inet: EAFNOSUPPORT });
  assert.equal(withFilter.personality_query, 0);
  assert.equal(withFilter.personality_linux, 0);
  assert.equal(withFilter.personality_linux32, EPERM);
  assert.equal(withFilter.thread, "ran");
  assert.equal(withFilter.fork, 7);
  assert.equal(withFilter.subprocess, "hi\n");

  // Without the filter the same calls answer differently: the EPERMs above come from the filter.
  for (const name of ["unshare", "io_uring_setup", "clone3", "clone_newuser", "x32_getpid"]) {
    assert.notEqual(without.calls[name], withFilter.calls[name], name);
  }
  assert.equal(without.sockets["netlink_audit"], 0);
  assert.equal(without.sockets["vsock"], 0, "control: this host's kernel creates vsock sockets");
  assert.equal(without.personality_linux32, 0);
});

test("node runs under the filter: threads, workers, child processes, fs (io_uring falls back)", { skip }, async () => {
  const r = await inSandbox([process.execPath, join(dir, "probe.js")], true);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { worker: 42, child: "child", seccomp: "2" });
});

test("a 32-bit system call kills the process", { skip }, async (t) => {
  const argv = [PYTHON, join(dir, "i386.py")];
  const control = await inSandbox(argv, false);
  if (!control.stdout.startsWith("pid ")) {
    t.skip(`int 0x80 is unavailable on this kernel (ia32 emulation off; control exited ${control.code}); runs on kernels with ia32 emulation enabled`);
    return;
  }
  const r = await inSandbox(argv, true);
  assert.equal(r.stdout, "");
  assert.equal(r.code, 128 + 31); // bwrap reports the SIGSYS death as 128 + signal
});
