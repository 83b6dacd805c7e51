/**
 * The guest initramfs: a gzip'd newc cpio with a static busybox, the kernel modules, /init (see
 * init-script.ts), the static guest helper (RNG reseed, the agent's launcher), the seccomp
 * program, and `dmsetup` with the shared libraries it loads. Stored as `outRoot/<sha256 of the
 * uncompressed archive>.cpio.gz` and reused when present.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { InternalError, InvalidArgumentError } from "@mvm/protocol";
import { type CpioEntry, writeNewc } from "./cpio.js";
import { listSharedLibraries } from "../../runtime/shared-libs.js";
import { GUEST_DMSETUP_PATH, GUEST_HELPER_PATH, GUEST_SECCOMP_PATH, renderInitScript } from "./init-script.js";
import type { GuestKernel } from "./kernel.js";
import { writeFileAtomic } from "../../store/atomic.js";

export interface BuildInitramfsOptions {
  readonly kernel: Pick<GuestKernel, "modulesDir" | "moduleOrder">;
  /** A statically linked busybox. @default "/bin/busybox" */
  readonly busyboxPath?: string;
  /** Directory holding built initramfs files. Created 0755 if missing. */
  readonly outRoot: string;
  /** The statically linked guest helper (see guest-helper.ts). */
  readonly guestHelperPath: string;
  /** The seccomp program (raw `struct sock_filter` array) the agent and workload run under. */
  readonly seccompProgram: Uint8Array;
  /** dmsetup, copied with its libraries. @default "/sbin/dmsetup" */
  readonly dmsetupPath?: string;
}

/** Where the guest's dynamic loader looks for libraries without an ld.so.cache (Debian multiarch). */
const GUEST_LIB_DIR = "lib/x86_64-linux-gnu";

function isStatic(binary: Buffer): boolean {
  return !binary.includes(Buffer.from("/lib64/ld-linux-x86-64.so.2"));
}

export interface Initramfs {
  readonly path: string;
  /** `sha256:<hex>` of the file. */
  readonly digest: string;
}

/** The cpio entries of the initramfs, in archive order. */
export async function initramfsEntries(options: BuildInitramfsOptions): Promise<CpioEntry[]> {
  const { kernel } = options;
  const busyboxPath = options.busyboxPath ?? "/bin/busybox";
  const busybox = await readFile(busyboxPath);
  if (!isStatic(busybox)) throw new InvalidArgumentError(`Busybox "${busyboxPath}" is not statically linked`);
  const helper = await readFile(options.guestHelperPath);
  if (!isStatic(helper)) throw new InvalidArgumentError(`Guest helper "${options.guestHelperPath}" is not statically linked`);
  if (options.seccompProgram.byteLength === 0 || options.seccompProgram.byteLength % 8 !== 0) {
    throw new InvalidArgumentError(`Seccomp program of ${options.seccompProgram.byteLength} bytes is not a whole number of instructions`);
  }
  const dmsetupPath = options.dmsetupPath ?? "/sbin/dmsetup";
  const dmsetupLibs = await listSharedLibraries(dmsetupPath);
  const entries: CpioEntry[] = [
    { type: "dir", path: "bin", mode: 0o755 },
    { type: "file", path: "bin/busybox", mode: 0o755, data: busybox },
    { type: "symlink", path: "bin/sh", target: "busybox" },
    { type: "dir", path: "dev", mode: 0o755 },
    { type: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
    { type: "dir", path: "proc", mode: 0o555 },
    { type: "dir", path: "sys", mode: 0o555 },
    { type: "dir", path: "newroot", mode: 0o755 },
    { type: "dir", path: "modules", mode: 0o755 },
    { type: "file", path: GUEST_HELPER_PATH.slice(1), mode: 0o755, data: helper },
    { type: "dir", path: "etc", mode: 0o755 },
    { type: "file", path: GUEST_SECCOMP_PATH.slice(1), mode: 0o444, data: Buffer.from(options.seccompProgram) },
    { type: "dir", path: "sbin", mode: 0o755 },
    { type: "file", path: GUEST_DMSETUP_PATH.slice(1), mode: 0o755, data: await readFile(dmsetupPath) },
    { type: "dir", path: "lib64", mode: 0o755 },
    { type: "file", path: "lib64/ld-linux-x86-64.so.2", mode: 0o755, data: await readFile(dmsetupLibs.loader) },
    { type: "dir", path: "lib", mode: 0o755 },
    { type: "dir", path: GUEST_LIB_DIR, mode: 0o755 },
  ];
  for (const lib of dmsetupLibs.libraries) {
    entries.push({ type: "file", path: `${GUEST_LIB_DIR}/${lib.name}`, mode: 0o444, data: await readFile(lib.path) });
  }
  for (const name of kernel.moduleOrder) {
    entries.push({ type: "file", path: `modules/${name}.ko`, mode: 0o444, data: await readFile(join(kernel.modulesDir, `${name}.ko`)) });
  }
  entries.push({ type: "file", path: "init", mode: 0o755, data: Buffer.from(renderInitScript(kernel.moduleOrder), "utf8") });
  return entries;
}

/**
 * Builds the initramfs for `kernel` (or finds the identical one already stored).
 * @example const { path } = await buildInitramfs({ kernel, outRoot: "/var/lib/mvm/initramfs" });
 */
export async function buildInitramfs(options: BuildInitramfsOptions): Promise<Initramfs> {
  if (!options.outRoot.startsWith("/")) throw new InvalidArgumentError(`Invalid outRoot "${options.outRoot}": must be an absolute path`);
  let newc: Buffer;
  try {
    newc = writeNewc(await initramfsEntries(options));
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err;
    throw new InternalError(`Cannot build the initramfs from "${options.kernel.modulesDir}"`, { cause: err });
  }
  // Named by the uncompressed archive: hashing it is cheap, compressing it is not, so an
  // unchanged initramfs is found without gzip.
  const hex = createHash("sha256").update(newc).digest("hex");
  const path = join(options.outRoot, `${hex}.cpio.gz`);
  const result = { path, digest: `sha256:${hex}` };
  try {
    if ((await stat(path)).size > 0) return result;
  } catch {
    // not built yet
  }
  await mkdir(options.outRoot, { recursive: true, mode: 0o755 });
  await writeFileAtomic(path, gzipSync(newc, { level: 6 }), 0o444);
  return result;
}
