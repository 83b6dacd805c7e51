/**
 * The seccomp filter every namespace sandbox runs under (bwrap installs it right before it execs
 * the agent, so the agent and every workload inherit it). x86_64 only.
 *
 * Policy, in evaluation order:
 *  1. `seccomp_data.arch` is not AUDIT_ARCH_X86_64 (i386 `int 0x80`, ...)   → kill the process
 *  2. x32 ABI (number has bit 30 set)                                     → EPERM
 *  3. clone3                                                              → ENOSYS (libc falls back to clone)
 *  4. clone with any CLONE_NEW* flag in arg0                              → EPERM
 *  5. socket with an address family outside ALLOWED_SOCKET_FAMILIES
 *     (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK), socketpair with any
 *     family but AF_UNIX                                                  → EAFNOSUPPORT
 *  6. socket(AF_NETLINK, ..., NETLINK_AUDIT), socket(AF_UNIX/AF_INET/AF_INET6,
 *     SOCK_RAW or SOCK_PACKET, ...) (type without SOCK_NONBLOCK/SOCK_CLOEXEC) → EPERM
 *  7. personality other than 0 (PER_LINUX) or 0xffffffff (query)          → EPERM
 *  8. the system calls in DENIED_SYSCALLS                                 → EPERM
 *  9. anything else                                                       → allow
 * The family allowlist keeps every socket that is not IP, Unix or netlink away from the workload:
 * AF_VSOCK above all (vsock is not confined by a network namespace, so on a host that is itself a
 * VM it reaches the hypervisor's services), and AF_PACKET, AF_ALG, AF_KEY, AF_XDP, AF_TIPC,
 * AF_BLUETOOTH, AF_CAN, AF_RDS and the rest (kernel attack surface no workload needs). Netlink
 * sockets keep SOCK_RAW because libc's getifaddrs opens them that way.
 *
 * seccomp_data layout: nr (u32 @0), arch (u32 @4), instruction_pointer (u64 @8),
 * args[6] (u64 @16 + 8i); on little-endian x86_64 the low half of args[i] is at 16 + 8i. Every
 * argument checked here is an int or unsigned int in the kernel, so the low half is what counts.
 */
import { assemble, encode, type Insn } from "./bpf.js";
import { SYSCALLS_X86_64, X32_SYSCALL_BIT, type SyscallName } from "./syscalls-x86_64.js";

export const AUDIT_ARCH_X86_64 = 0xc000_003e;

export const SeccompAction = {
  KillProcess: 0x8000_0000,
  /** OR the errno into the low 16 bits. */
  Errno: 0x0005_0000,
  Allow: 0x7fff_0000,
} as const;

export const EPERM = 1;
export const ENOSYS = 38;
export const EAFNOSUPPORT = 97;

/** Offsets into struct seccomp_data. */
export const SeccompData = {
  nr: 0,
  arch: 4,
  /** Low 32 bits of argument `i`. */
  argLow: (i: number): number => 16 + 8 * i,
} as const;

/** System calls answered with EPERM whatever their arguments. */
export const DENIED_SYSCALLS: readonly SyscallName[] = [
  // mounts and the root
  "mount", "umount2", "pivot_root", "move_mount", "open_tree", "open_tree_attr", "fsopen", "fsconfig",
  "fsmount", "fspick", "mount_setattr",
  // other processes' memory
  "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
  // kernel code and kernel-wide state
  "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf", "perf_event_open",
  "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "uselib",
  // keyrings
  "keyctl", "add_key", "request_key",
  // namespaces
  "unshare", "setns",
  // file handles bypass path-based confinement
  "open_by_handle_at", "name_to_handle_at",
  // host administration
  "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "quotactl_fd", "lookup_dcookie", "iopl",
  "ioperm", "vhangup", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
];

/** CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET. */
export const CLONE_NAMESPACE_FLAGS = 0x80 | 0x2_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
export const SOCK_PACKET = 10;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const NETLINK_AUDIT = 9;
export const PERSONALITY_QUERY = 0xffff_ffff;

const errno = (e: number): number => SeccompAction.Errno | e;

/** The only address families `socket` accepts; `socketpair` accepts AF_UNIX alone. */
export const ALLOWED_SOCKET_FAMILIES: readonly number[] = [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK];

/** The filter as assembler lines (exported for tests). */
export function sandboxFilterSource(): Insn[] {
  const nr = SYSCALLS_X86_64;
  return [
    { op: "load", offset: SeccompData.arch },
    { op: "jeq", k: AUDIT_ARCH_X86_64, jt: null, jf: "kill" },
    { op: "load", offset: SeccompData.nr },
    { op: "jset", k: X32_SYSCALL_BIT, jt: "eperm", jf: null },
    { op: "jeq", k: nr.clone3, jt: "enosys", jf: null },
    { op: "jeq", k: nr.clone, jt: "clone", jf: null },
    { op: "jeq", k: nr.socket, jt: "socket", jf: null },
    { op: "jeq", k: nr.socketpair, jt: "socketpair", jf: null },
    { op: "jeq", k: nr.personality, jt: "personality", jf: null },
    ...DENIED_SYSCALLS.map((name): Insn => ({ op: "jeq", k: nr[name], jt: "eperm", jf: null })),
    { op: "ret", k: SeccompAction.Allow },

    { op: "label", name: "clone" },
    { op: "load", offset: SeccompData.argLow(0) },
    { op: "jset", k: CLONE_NAMESPACE_FLAGS, jt: "eperm", jf: "allow" },

    { op: "label", name: "socket" },
    { op: "load", offset: SeccompData.argLow(0) },
    { op: "jeq", k: AF_NETLINK, jt: "netlink", jf: null },
    { op: "jeq", k: AF_UNIX, jt: "socket-type", jf: null },
    { op: "jeq", k: AF_INET, jt: "socket-type", jf: null },
    { op: "jeq", k: AF_INET6, jt: "socket-type", jf: "eafnosupport" },

    { op: "label", name: "socket-type" },
    { op: "load", offset: SeccompData.argLow(1) },
    { op: "and", k: ~(SOCK_NONBLOCK | SOCK_CLOEXEC) >>> 0 },
    { op: "jeq", k: SOCK_RAW, jt: "eperm", jf: null },
    { op: "jeq", k: SOCK_PACKET, jt: "eperm", jf: "allow" },

    { op: "label", name: "netlink" },
    { op: "load", offset: SeccompData.argLow(2) },
    { op: "jeq", k: NETLINK_AUDIT, jt: "eperm", jf: "allow" },

    { op: "label", name: "socketpair" },
    { op: "load", offset: SeccompData.argLow(0) },
    { op: "jeq", k: AF_UNIX, jt: "allow", jf: "eafnosupport" },

    { op: "label", name: "personality" },
    { op: "load", offset: SeccompData.argLow(0) },
    { op: "jeq", k: 0, jt: "allow", jf: null },
    { op: "jeq", k: PERSONALITY_QUERY, jt: "allow", jf: "eperm" },

    { op: "label", name: "allow" },
    { op: "ret", k: SeccompAction.Allow },
    { op: "label", name: "eperm" },
    { op: "ret", k: errno(EPERM) },
    { op: "label", name: "eafnosupport" },
    { op: "ret", k: errno(EAFNOSUPPORT) },
    { op: "label", name: "enosys" },
    { op: "ret", k: errno(ENOSYS) },
    { op: "label", name: "kill" },
    { op: "ret", k: SeccompAction.KillProcess },
  ];
}

/** The sandbox filter as the raw `struct sock_filter[]` bytes bwrap reads from `--seccomp FD`. */
let program: Buffer | undefined;

/** The sandbox filter, assembled once per process (it never changes at run time). */
export function sandboxSeccompProgram(): Buffer {
  program ??= encode(assemble(sandboxFilterSource()));
  return Buffer.from(program);
}
