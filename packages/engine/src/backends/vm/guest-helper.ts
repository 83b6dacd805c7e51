/**
 * `mvm-guest`, the small static C program the VM guest's /init uses to reseed the kernel CRNG
 * after a restore and to start the agent with the namespace tier's posture (its own pid
 * namespace and /proc, no capabilities in any set, no_new_privs, the sandbox seccomp filter; see
 * packages/engine/guest/mvm-guest.c for its commands and exit codes).
 *
 * It is compiled on the host with the system C compiler and stored as
 * `outRoot/<sha256 of source, compiler version and flags>/mvm-guest`, reused when present.
 */
import { execFile, type ExecFileException } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { access, chmod, mkdir, readFile, rename, rm } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  AbortedError,
  InternalError,
  InvalidArgumentError,
  TimeoutError,
  UnsupportedCapabilityError,
} from "@mvm/protocol";

/** The C source, found relative to this module (dist/backends/vm/ → packages/engine/guest/). */
export function guestHelperSourcePath(): string {
  return fileURLToPath(new URL("../../../guest/mvm-guest.c", import.meta.url));
}

/** File name of the helper inside its store directory. */
export const GUEST_HELPER_NAME = "mvm-guest";

/** Compiler flags; part of the store key. */
export const GUEST_HELPER_CFLAGS: readonly string[] = ["-std=c11", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"];

const COMPILER_HINT = "Install a C compiler and static C library (Debian: apt-get install gcc libc6-dev)";
/** Compiler diagnostics kept in an error message, in characters. */
const MAX_DIAGNOSTICS_CHARS = 2000;

export interface BuildGuestHelperOptions {
  /** Directory holding built helpers (absolute). Created 0755 if missing. */
  readonly outRoot: string;
  /** The C compiler to run. @default "cc" (looked up on PATH) */
  readonly ccPath?: string;
  /** Limit on each compiler run. @default 120_000 */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

export interface GuestHelper {
  /** Absolute path of the static executable. */
  readonly path: string;
  /** `sha256:<hex>` of the executable. */
  readonly digest: string;
}

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

interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

interface RunOptions {
  readonly timeoutMs: number;
  readonly signal: AbortSignal | undefined;
}

class RunFailure extends Error {
  constructor(
    readonly error: ExecFileException,
    readonly stderr: string,
  ) {
    super(error.message, { cause: error });
  }
}

function run(file: string, args: readonly string[], options: RunOptions): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { PATH: process.env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin", LC_ALL: "C" };
  if (process.env["TMPDIR"] !== undefined) env["TMPDIR"] = process.env["TMPDIR"];
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        env,
        encoding: "utf8",
        timeout: options.timeoutMs,
        killSignal: "SIGKILL",
        maxBuffer: 1024 * 1024,
        ...(options.signal ? { signal: options.signal } : {}),
      },
      (error, stdout, stderr) => {
        if (error) reject(new RunFailure(error, stderr));
        else resolve({ stdout, stderr });
      },
    );
  });
}

function diagnostics(stderr: string): string {
  const text = stderr.trim();
  return text.length > MAX_DIAGNOSTICS_CHARS ? `${text.slice(0, MAX_DIAGNOSTICS_CHARS)}…` : text;
}

/** Turns a failed compiler run into the error the caller sees. */
function compilerError(err: unknown, ccPath: string, what: string, options: RunOptions): Error {
  if (!(err instanceof RunFailure)) return new InternalError(`Cannot ${what} with "${ccPath}"`, { cause: err });
  const { error, stderr } = err;
  if (options.signal?.aborted || error.name === "AbortError") {
    return new AbortedError(`Building the guest helper with "${ccPath}" was aborted`, { cause: err });
  }
  if (error.killed === true) {
    return new TimeoutError(`Cannot ${what} with "${ccPath}": no result within ${options.timeoutMs} ms`, { cause: err });
  }
  if (error.code === "ENOENT" || error.code === "EACCES") {
    return new UnsupportedCapabilityError(`Cannot ${what}: C compiler "${ccPath}" not found`, { cause: err, hint: COMPILER_HINT });
  }
  const detail = diagnostics(stderr);
  return new UnsupportedCapabilityError(`Cannot ${what} with "${ccPath}"${detail === "" ? "" : `: ${detail}`}`, {
    cause: err,
    hint: COMPILER_HINT,
  });
}

async function compilerVersion(ccPath: string, options: RunOptions): Promise<string> {
  try {
    return (await run(ccPath, ["--version"], options)).stdout;
  } catch (err) {
    throw compilerError(err, ccPath, "build the guest helper", options);
  }
}

/** The stored helper at `path` when it is there and static; undefined otherwise. */
async function storedHelper(path: string): Promise<GuestHelper | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch {
    return undefined;
  }
  if (!isStaticElf(bytes)) return undefined;
  return { path, digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}` };
}

/**
 * Compiles the guest helper statically (or finds the same build already stored).
 * Throws UnsupportedCapabilityError (with a hint) when there is no compiler or it cannot link
 * a static executable, TimeoutError / AbortedError when a compiler run is cut short.
 * @example const { path } = await buildGuestHelper({ outRoot: "/var/lib/mvm/guest-helper" });
 */
export async function buildGuestHelper(options: BuildGuestHelperOptions): Promise<GuestHelper> {
  const { outRoot } = options;
  if (!isAbsolute(outRoot)) throw new InvalidArgumentError(`Invalid outRoot "${outRoot}": must be an absolute path`);
  const ccPath = options.ccPath ?? "cc";
  const runOptions: RunOptions = { timeoutMs: options.timeoutMs ?? 120_000, signal: options.signal };
  const sourcePath = guestHelperSourcePath();
  let source: Buffer;
  try {
    source = await readFile(sourcePath);
  } catch (err) {
    throw new InternalError(`Cannot read the guest helper source "${sourcePath}"`, { cause: err });
  }
  const version = await compilerVersion(ccPath, runOptions);
  const key = createHash("sha256")
    .update(source)
    .update("\0")
    .update(version)
    .update("\0")
    .update(GUEST_HELPER_CFLAGS.join(" "))
    .digest("hex");
  const dir = join(outRoot, key);
  const path = join(dir, GUEST_HELPER_NAME);
  const stored = await storedHelper(path);
  if (stored) return stored;

  await mkdir(dir, { recursive: true, mode: 0o755 });
  const tmp = join(dir, `.${GUEST_HELPER_NAME}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    try {
      await run(ccPath, [...GUEST_HELPER_CFLAGS, "-o", tmp, sourcePath], runOptions);
    } catch (err) {
      throw compilerError(err, ccPath, "build the guest helper", runOptions);
    }
    const bytes = await readFile(tmp);
    if (!isStaticElf(bytes)) {
      throw new UnsupportedCapabilityError(`Cannot build the guest helper with "${ccPath}": the result is not a static executable`, {
        hint: COMPILER_HINT,
      });
    }
    await chmod(tmp, 0o555);
    await rename(tmp, path);
    return { path, digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}` };
  } finally {
    await rm(tmp, { force: true });
  }
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
