/**
 * `mvm-guest`, the small static C program the VM guest's /init uses to reseed the kernel CRNG
 * after a restore and to start the agent with the namespace tier's posture (its own pid
 * namespace and /proc, no capabilities in any set, no_new_privs, the sandbox seccomp filter; see
 * packages/engine/guest/mvm-guest.c for its commands and exit codes).
 *
 * It is compiled on the host with the system C compiler and stored as
 * `outRoot/<sha256 of source, compiler version and flags>/mvm-guest`, reused when present.
 */
import { access } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { fileURLToPath } from "node:url";
import { buildCProgram, run, type CProgram, type RunOptions } from "../../_internal/c-program.js";

/** The C source, found relative to this module (dist/backends/vm/ → packages/engine/guest/). */
export function guestHelperSourcePath(): string {
  return fileURLToPath(new URL("../../../guest/mvm-guest.c", import.meta.url));
}

/** File name of the helper inside its store directory. */
export const GUEST_HELPER_NAME = "mvm-guest";

/** Compiler flags; part of the store key. */
export const GUEST_HELPER_CFLAGS: readonly string[] = ["-std=c11", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"];

const COMPILER_HINT = "Install a C compiler and static C library (Debian: apt-get install gcc libc6-dev)";

export interface BuildGuestHelperOptions {
  /** Directory holding built helpers (absolute). Created 0755 if missing. */
  readonly outRoot: string;
  /** The C compiler to run. @default "cc" (looked up on PATH) */
  readonly ccPath?: string;
  /** Limit on each compiler run. @default 120_000 */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** The static executable and its digest. */
export type GuestHelper = CProgram;

/**
 * True when `elf` is a 64-bit little-endian ELF file with no program interpreter (PT_INTERP)
 * and no dynamic loader path in it, i.e. it runs without a loader or shared libraries.
 */
export function isStaticElf(elf: Uint8Array): boolean {
  const bytes = Buffer.from(elf.buffer, elf.byteOffset, elf.byteLength);
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46) return false;
  if (bytes[4] !== 2 || bytes[5] !== 1) return false; // ELFCLASS64, ELFDATA2LSB
  const phoff = bytes.readBigUInt64LE(32);
  const phentsize = bytes.readUInt16LE(54);
  const phnum = bytes.readUInt16LE(56);
  if (phentsize < 56 || phoff > BigInt(bytes.length) || Number(phoff) + phentsize * phnum > bytes.length) return false;
  for (let i = 0; i < phnum; i++) {
    const PT_INTERP = 3;
    if (bytes.readUInt32LE(Number(phoff) + i * phentsize) === PT_INTERP) return false;
  }
  // Static glibc programs name "ld-linux-x86-64.so.2" internally, but never a loader path.
  return !bytes.includes("/ld-linux");
}

/**
 * Compiles the guest helper statically (or finds the same build already stored).
 * Throws UnsupportedCapabilityError (with a hint) when there is no compiler or it cannot link
 * a static executable, TimeoutError / AbortedError when a compiler run is cut short.
 * @example const { path } = await buildGuestHelper({ outRoot: "/var/lib/mvm/guest-helper" });
 */
export function buildGuestHelper(options: BuildGuestHelperOptions): Promise<GuestHelper> {
  return buildCProgram({
    sourcePath: guestHelperSourcePath(),
    name: GUEST_HELPER_NAME,
    cflags: GUEST_HELPER_CFLAGS,
    outRoot: options.outRoot,
    dirMode: 0o755,
    what: "build the guest helper",
    hint: COMPILER_HINT,
    ccPath: options.ccPath,
    timeoutMs: options.timeoutMs,
    signal: options.signal,
    refuse: (bytes) => (isStaticElf(bytes) ? undefined : "the result is not a static executable"),
  });
}

/**
 * Cheap probe: true when the helper source is present, `ccPath` accepts it and a static C
 * library is installed. `buildGuestHelper` can still fail (it links for real); this never throws.
 */
export async function guestHelperAvailable(options: { readonly ccPath?: string } = {}): Promise<boolean> {
  const ccPath = options.ccPath ?? "cc";
  const runOptions: RunOptions = { timeoutMs: 30_000, signal: undefined };
  try {
    const sourcePath = guestHelperSourcePath();
    await access(sourcePath);
    await run(ccPath, [...GUEST_HELPER_CFLAGS.filter((flag) => flag !== "-s"), "-fsyntax-only", sourcePath], runOptions);
    const libc = (await run(ccPath, ["-print-file-name=libc.a"], runOptions)).stdout.trim();
    if (!isAbsolute(libc)) return false;
    await access(libc);
    return true;
  } catch {
    return false;
  }
}
