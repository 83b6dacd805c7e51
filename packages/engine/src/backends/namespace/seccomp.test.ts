import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { assemble, decode } from "./bpf.js";
import { runSeccompFilter, type SeccompInput } from "./_bpf-emulator.js";
import {
  AUDIT_ARCH_X86_64,
  DENIED_SYSCALLS,
  EAFNOSUPPORT,
  ENOSYS,
  EPERM,
  SeccompAction,
  sandboxFilterSource,
  sandboxSeccompProgram,
} from "./seccomp.js";
import { SYSCALLS_X86_64 } from "./syscalls-x86_64.js";

const AUDIT_ARCH_I386 = 0x4000_0003;
const ALLOW = SeccompAction.Allow;
const KILL = SeccompAction.KillProcess;
const errno = (e: number): number => (SeccompAction.Errno | e) >>> 0;

/** The calls the design requires to fail with EPERM whatever their arguments. */
const REQUIRED_EPERM = [
  "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
  "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
  "init_module", "finit_module", "delete_module", "bpf", "keyctl", "add_key", "request_key", "perf_event_open",
  "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "unshare", "setns",
  "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl",
  "lookup_dcookie", "iopl", "ioperm", "vhangup", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
  "kcmp", "pidfd_getfd",
] as const;

/** The policy stated independently of the filter's code, for comparison. */
function expectedVerdict(input: SeccompInput): number {
  if (input.arch >>> 0 !== AUDIT_ARCH_X86_64) return KILL;
  const nr = input.nr >>> 0;
  const low = (i: number): number => Number(BigInt.asUintN(32, input.args?.[i] ?? 0n));
  if (nr & 0x4000_0000) return errno(EPERM);
  if (nr === 435) return errno(ENOSYS);
  if (nr === 56) return low(0) & 0x7e02_0080 ? errno(EPERM) : ALLOW;
  if (nr === 41) {
    const [domain, type, protocol] = [low(0), (low(1) & ~0x80800) >>> 0, low(2)];
    if (domain === 16) return protocol === 9 ? errno(EPERM) : ALLOW;
    if (domain !== 1 && domain !== 2 && domain !== 10) return errno(EAFNOSUPPORT);
    return type === 3 || type === 10 ? errno(EPERM) : ALLOW;
  }
  if (nr === 53) return low(0) === 1 ? ALLOW : errno(EAFNOSUPPORT);
  if (nr === 135) return low(0) === 0 || low(0) === 0xffff_ffff ? ALLOW : errno(EPERM);
  const denied = new Set<number>(DENIED_SYSCALLS.map((name) => SYSCALLS_X86_64[name]));
  return denied.has(nr) ? errno(EPERM) : ALLOW;
}

const program = decode(sandboxSeccompProgram());
const verdict = (input: SeccompInput): number => runSeccompFilter(program, input);
const x86 = (nr: number, ...args: bigint[]): SeccompInput => ({ nr, arch: AUDIT_ARCH_X86_64, args });

test("syscall numbers match the host's unistd_64.h", { skip: !existsSync("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") && "no kernel headers at /usr/include/x86_64-linux-gnu/asm" }, () => {
  const header = readFileSync("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "utf8");
  let checked = 0;
  for (const [name, nr] of Object.entries(SYSCALLS_X86_64)) {
    const match = new RegExp(`#define __NR_${name} (\\d+)\\b`).exec(header);
    if (match === null) continue; // newer than the header (e.g. open_tree_attr)
    assert.equal(nr, Number(match[1]), name);
    checked++;
  }
  assert.ok(checked >= Object.keys(SYSCALLS_X86_64).length - 2, `only ${checked} numbers found in the header`);
});

test("every call the design requires is denied", () => {
  for (const name of REQUIRED_EPERM) {
    assert.ok((DENIED_SYSCALLS as readonly string[]).includes(name), name);
    assert.equal(verdict(x86(SYSCALLS_X86_64[name])), errno(EPERM), name);
  }
});

test("the filter checks the architecture first and rejects x32 numbers", () => {
  assert.equal(verdict({ nr: 20, arch: AUDIT_ARCH_I386 }), KILL);
  assert.equal(verdict({ nr: 0, arch: 0 }), KILL);
  assert.equal(verdict(x86(0x4000_0000 | 39)), errno(EPERM));
  assert.equal(verdict(x86(39)), ALLOW); // getpid
  assert.equal(verdict(x86(0)), ALLOW); // read
});

test("clone3 gets ENOSYS, clone with a namespace flag gets EPERM", () => {
  const SIGCHLD = 17n;
  assert.equal(verdict(x86(435)), errno(ENOSYS));
  assert.equal(verdict(x86(56, SIGCHLD)), ALLOW);
  assert.equal(verdict(x86(56, 0x003d_0f00n)), ALLOW); // pthread_create's flags
  for (const flag of [0x80n, 0x2_0000n, 0x0200_0000n, 0x0400_0000n, 0x0800_0000n, 0x1000_0000n, 0x2000_0000n, 0x4000_0000n]) {
    assert.equal(verdict(x86(56, flag | SIGCHLD)), errno(EPERM), `flag 0x${flag.toString(16)}`);
  }
});

/** Linux address families (include/linux/socket.h) other than the four the filter allows. */
const DENIED_FAMILIES = {
  AF_UNSPEC: 0n, AF_AX25: 3n, AF_IPX: 4n, AF_APPLETALK: 5n, AF_NETROM: 6n, AF_BRIDGE: 7n, AF_ATMPVC: 8n, AF_X25: 9n,
  AF_ROSE: 11n, AF_DECNET: 12n, AF_NETBEUI: 13n, AF_SECURITY: 14n, AF_KEY: 15n, AF_PACKET: 17n, AF_ASH: 18n,
  AF_ECONET: 19n, AF_ATMSVC: 20n, AF_RDS: 21n, AF_SNA: 22n, AF_IRDA: 23n, AF_PPPOX: 24n, AF_WANPIPE: 25n, AF_LLC: 26n,
  AF_IB: 27n, AF_MPLS: 28n, AF_CAN: 29n, AF_TIPC: 30n, AF_BLUETOOTH: 31n, AF_IUCV: 32n, AF_RXRPC: 33n, AF_ISDN: 34n,
  AF_PHONET: 35n, AF_IEEE802154: 36n, AF_CAIF: 37n, AF_ALG: 38n, AF_NFC: 39n, AF_VSOCK: 40n, AF_KCM: 41n,
  AF_QIPCRTR: 42n, AF_SMC: 43n, AF_XDP: 44n, AF_MCTP: 45n,
} as const;

test("socket: only Unix, IP and netlink families; raw and packet types denied, netlink only for audit", () => {
  const [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK] = [1n, 2n, 10n, 16n];
  const [STREAM, DGRAM, RAW, SEQPACKET, PACKET, NONBLOCK, CLOEXEC] = [1n, 2n, 3n, 5n, 10n, 0o4000n, 0o2000000n];
  assert.equal(verdict(x86(41, AF_INET, STREAM | CLOEXEC)), ALLOW);
  assert.equal(verdict(x86(41, AF_INET6, DGRAM)), ALLOW);
  assert.equal(verdict(x86(41, AF_UNIX, STREAM)), ALLOW);
  assert.equal(verdict(x86(41, AF_UNIX, SEQPACKET | NONBLOCK)), ALLOW);
  assert.equal(verdict(x86(41, AF_INET, RAW)), errno(EPERM));
  assert.equal(verdict(x86(41, AF_INET, RAW | NONBLOCK | CLOEXEC)), errno(EPERM));
  assert.equal(verdict(x86(41, AF_INET6, RAW, 58n)), errno(EPERM));
  assert.equal(verdict(x86(41, AF_INET, PACKET)), errno(EPERM));
  assert.equal(verdict(x86(41, AF_NETLINK, RAW | CLOEXEC, 0n)), ALLOW); // NETLINK_ROUTE, as getifaddrs does
  assert.equal(verdict(x86(41, AF_NETLINK, RAW, 9n)), errno(EPERM)); // NETLINK_AUDIT
  for (const [name, family] of Object.entries(DENIED_FAMILIES)) {
    for (const type of [STREAM, DGRAM, RAW, SEQPACKET, STREAM | NONBLOCK | CLOEXEC]) {
      assert.equal(verdict(x86(41, family, type)), errno(EAFNOSUPPORT), `${name} type ${type}`);
    }
  }
  for (const family of [46n, 63n, 255n, 0x1_0000n, 0x7fff_ffffn, 0xffff_ffffn]) {
    assert.equal(verdict(x86(41, family, STREAM)), errno(EAFNOSUPPORT), `family ${family}`);
  }
  // The kernel reads an int: high halves are ignored both ways.
  assert.equal(verdict(x86(41, DENIED_FAMILIES.AF_VSOCK | (1n << 32n), STREAM)), errno(EAFNOSUPPORT));
  assert.equal(verdict(x86(41, AF_INET | (DENIED_FAMILIES.AF_VSOCK << 32n), STREAM)), ALLOW);
});

test("socketpair: only AF_UNIX", () => {
  const [AF_UNIX, STREAM, DGRAM] = [1n, 1n, 2n];
  assert.equal(verdict(x86(53, AF_UNIX, STREAM)), ALLOW);
  assert.equal(verdict(x86(53, AF_UNIX, DGRAM | 0o2000000n)), ALLOW);
  for (const family of [2n, 10n, 16n, ...Object.values(DENIED_FAMILIES), 0xffff_ffffn]) {
    assert.equal(verdict(x86(53, family, STREAM)), errno(EAFNOSUPPORT), `family ${family}`);
  }
});

test("personality: only PER_LINUX and the query are allowed", () => {
  assert.equal(verdict(x86(135, 0n)), ALLOW);
  assert.equal(verdict(x86(135, 0xffff_ffffn)), ALLOW);
  assert.equal(verdict(x86(135, 8n)), errno(EPERM)); // PER_LINUX32
  assert.equal(verdict(x86(135, 0x0040000n)), errno(EPERM)); // ADDR_NO_RANDOMIZE
});

test("the filter matches the stated policy on arbitrary inputs", () => {
  const interesting = [...Object.values(SYSCALLS_X86_64), 0, 1, 39, 59, 60, 231, 0x4000_0000, 0x4000_0027, 0xffff_ffff];
  const nr = fc.oneof(fc.constantFrom(...interesting), fc.integer({ min: 0, max: 0xffff_ffff }));
  const arch = fc.oneof(fc.constant(AUDIT_ARCH_X86_64), fc.constant(AUDIT_ARCH_I386), fc.integer({ min: 0, max: 0xffff_ffff }));
  const arg = fc.oneof(
    fc.constantFrom(0n, 1n, 2n, 3n, 5n, 9n, 10n, 16n, 17n, 38n, 40n, 44n, 0x80n, 0x8_0803n, 0x1000_0011n, 0xffff_ffffn),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  );
  fc.assert(
    fc.property(nr, arch, fc.array(arg, { minLength: 6, maxLength: 6 }), (n, a, args) => {
      const input = { nr: n, arch: a, args };
      assert.equal(verdict(input), expectedVerdict(input));
    }),
    { numRuns: 20_000 },
  );
});

test("socket and socketpair match the stated policy for any family, type and protocol", () => {
  const low = fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 0xffff_ffff })).map(BigInt);
  const high = fc.oneof(fc.constant(0n), fc.bigInt({ min: 0n, max: 0xffff_ffffn })).map((h) => h << 32n);
  const arg = fc.tuple(low, high).map(([l, h]) => l | h);
  fc.assert(
    fc.property(fc.constantFrom(41, 53), arg, arg, arg, (nr, family, type, protocol) => {
      const input = x86(nr, family, type, protocol);
      assert.equal(verdict(input), expectedVerdict(input));
    }),
    { numRuns: 20_000 },
  );
});

test("the encoded program is what the assembler produced and fits the kernel's limits", () => {
  assert.deepEqual(program, assemble(sandboxFilterSource()));
  assert.ok(program.length < 200, `${program.length} instructions`);
});
