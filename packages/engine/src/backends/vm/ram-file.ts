/**
 * Each VM sandbox's own guest RAM file and save-socket directory, on tmpfs:
 *
 *   <root>/                    0711, the engine's
 *   <root>/<sandboxId>/        0711, the engine's (QEMU's jail binds by descriptor, and bubblewrap
 *                              still resolves the path: QEMU's uid needs search permission)
 *     ram                      0600, QEMU's uid: guest RAM (`memory-backend-file,share=on`)
 *     save/                    0700, QEMU's uid: where the engine listens for a device-state save
 *
 * Guest RAM living in a file is what makes snapshots and restores proportional to what the guest
 * uses: a snapshot copies the file's allocated pages, a restore copies a template's allocated
 * pages into a fresh file and loads only the device state (`x-ignore-shared`). The file is
 * sparse; pages the guest frees are punched out again by free page reporting.
 *
 * A restore gets a copy, never the template: QEMU 7.2 opens `mem-path` read-write whatever
 * `share` says, so a template handed to QEMU could be changed by an escaped QEMU under every
 * other sandbox restored from it.
 *
 * QEMU reaches both through descriptors bound into its jail (vm-process.ts), never by a host
 * path. The directory is removed at teardown, after a failed launch, and by `reap`.
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { chmod, chown, mkdir, open, readdir, readlink, rm, stat, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { InternalError, InvalidArgumentError, SnapshotMismatchError } from "@mvm/protocol";

/** Where sandboxes' RAM files live unless configured: the host's shared-memory tmpfs. */
export const DEFAULT_RAM_ROOT = "/dev/shm/mvm-vm";

const NAME = /^[A-Za-z0-9_-]{1,80}$/;
const MiB = 1024 * 1024;

export interface SandboxRam {
  /** The sandbox's directory under the root. */
  readonly dir: string;
  /** The guest RAM file. */
  readonly ramPath: string;
  /** The directory QEMU connects to for a save (bound read-only into its jail). */
  readonly saveDir: string;
}

export interface MakeSandboxRamOptions {
  readonly root: string;
  /** The directory's name (a sandbox id). */
  readonly name: string;
  readonly memoryMiB: number;
  /** Owner of the RAM file and save directory (QEMU's uid when the engine is root). */
  readonly owner?: number;
  /** A RAM template to copy (sparse), opened read-only; absent: a fresh all-hole file. */
  readonly template?: FileHandle;
}

/**
 * Makes a sandbox's RAM directory: the RAM file (a sparse copy of `template`, or empty) of exactly
 * `memoryMiB`, and the save directory. Throws SnapshotMismatchError when the template is not that
 * size, InternalError when the copy fails; nothing is left behind when it throws.
 */
export async function makeSandboxRam(options: MakeSandboxRamOptions): Promise<SandboxRam> {
  if (!NAME.test(options.name)) throw new InvalidArgumentError(`Invalid RAM directory name "${options.name}"`);
  const bytes = options.memoryMiB * MiB;
  await mkdir(options.root, { recursive: true, mode: 0o711 });
  await chmod(options.root, 0o711);
  const dir = join(options.root, options.name);
  await mkdir(dir, { mode: 0o711 });
  const ramPath = join(dir, "ram");
  const saveDir = join(dir, "save");
  try {
    if (options.template !== undefined) {
      const size = (await options.template.stat()).size;
      if (size !== bytes) throw new SnapshotMismatchError(`The RAM template holds ${size} bytes, the VM has ${bytes}`);
      await copySparse(options.template, ramPath);
    } else {
      const file = await open(ramPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      try {
        await file.truncate(bytes);
      } finally {
        await file.close();
      }
    }
    await chmod(ramPath, 0o600);
    await mkdir(saveDir, { mode: 0o700 });
    if (options.owner !== undefined) {
      await chown(ramPath, options.owner, options.owner);
      await chown(saveDir, options.owner, options.owner);
    }
    return { dir, ramPath, saveDir };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Copies the file open on `source` to the new file `target` (mode 0600), keeping holes and making
 * holes of zero blocks. The copy reads the very file `source` is (through /dev/fd), whatever its
 * path now names.
 */
export async function copySparse(source: FileHandle, target: string): Promise<void> {
  try {
    await new Promise<void>((resolve, reject) => {
      // cp reads the source as its fd 3; coreutils skips holes (SEEK_DATA) and writes zero blocks as holes.
      const child = spawn("cp", ["--sparse=always", "--no-preserve=all", "--", "/dev/fd/3", target], { stdio: ["ignore", "ignore", "pipe", source.fd] });
      let stderr = "";
      child.stderr?.setEncoding("utf8").on("data", (c: string) => {
        if (stderr.length < 2048) stderr += c;
      });
      child.once("error", reject);
      child.once("exit", (code, signal) => (code === 0 ? resolve() : reject(new Error(`cp exited with ${code ?? signal}: ${stderr.trim()}`))));
    });
  } catch (err) {
    await rm(target, { force: true });
    throw new InternalError(`Cannot copy a snapshot part to "${target}"`, { cause: err });
  }
}

/**
 * Removes a sandbox's RAM directory. `dir` must be a direct child of `root` (a reap record is
 * only trusted that far).
 */
export async function removeSandboxRam(root: string, dir: string): Promise<void> {
  if (dirname(dir) !== root || !NAME.test(dir.slice(root.length + 1))) return;
  await rm(dir, { recursive: true, force: true });
}

/** True when some process has a file under `dir` open or mapped (scans /proc; root sees all). */
async function inUse(dir: string): Promise<boolean> {
  const prefix = `${dir}/`;
  for (const pid of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^[0-9]+$/.test(pid)) continue;
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
      if (target.startsWith(prefix)) return true;
    }
  }
  return false;
}

/**
 * Removes RAM directories under `root` older than `minAgeMs` that no process holds open (left by
 * an engine that died before it recorded the sandbox). Returns the removed directories.
 */
export async function sweepSandboxRam(root: string, minAgeMs: number): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (!NAME.test(name)) continue;
    const dir = join(root, name);
    const st = await stat(dir).catch(() => undefined);
    if (st === undefined || !st.isDirectory() || Date.now() - st.mtimeMs < minAgeMs) continue;
    if (await inUse(dir)) continue;
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
