/**
 * Saved VMs: one per guest shape (kernel, initramfs, image disk, agent disk, RAM, vCPUs, work disk
 * size, accelerator), booted once to a ready agent and saved, so later sandboxes of that shape
 * restore it instead of booting.
 *
 * Layout, under `root/<sha256 of the shape>/` (files 0600, owned by the engine; the directory 0700
 * once saved, 0711 while it is built):
 *
 *   ram           guest RAM as the saved guest left it (a sparse file of the VM's RAM size)
 *   device        QEMU's device state, saved with x-ignore-shared (no RAM in it)
 *   work          the work disk as the saved guest left it (mounted, empty)
 *   manifest.json what the engine recorded when it saved them: each part's size and sha256
 *   shape.json    the shape, for people reading the directory
 *
 * A restore copies `ram` and `work` sparsely into files of its own and hands QEMU the device
 * state; no file of the saved VM is ever given to QEMU writable.
 *
 * A saved VM is built in `root/.build-<random>/` and renamed into place, so a directory that exists
 * is complete. A directory without a valid manifest for its shape is not used: the next sandbox of
 * that shape saves a new one over it. `openVerified` checks every part against the manifest the
 * first time this process uses the saved VM (sha256 of every byte), and afterwards checks that
 * each file is still the one checked (same inode, size, mtime and ctime: any write changes ctime);
 * the device state, which QEMU parses, is hashed on every use. A saved VM that fails is moved aside
 * to `root/.quarantine-<random>/`.
 *
 * Nothing secret is in it: the agent has not started a session, and every restore gets a fresh RNG
 * seed from the host before its agent says hello.
 */
import { createHash, randomBytes } from "node:crypto";
import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { chmod, lstat, mkdir, open, readdir, rename, rm, stat, utimes, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { AbortedError, InternalError, type Sha256Digest, SnapshotMismatchError } from "@mvm/protocol";
import { readSmallFile, writeFileAtomic } from "../../store/atomic.js";
import { SAVED_VM_MANIFEST_VERSION, SAVED_VM_PARTS, decodeSavedVmManifest, encodeSavedVmManifest, type SavedPartRecord, type SavedVmManifest, type SavedVmPart } from "./snapshot-manifest.js";

const run = promisify(execFile);

/** Everything that must be equal between the saved VM and the one restoring it. */
export interface VmShape {
  readonly kernelDigest: string;
  readonly initrdPath: string;
  readonly rootDiskKey: string;
  readonly agentDiskKey: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly workMiB: number;
  readonly accel: "kvm" | "tcg";
  readonly tscKhz?: number;
  readonly guestUid: number;
  /** The QEMU binary's identity (size and mtime): a new QEMU may not load an old stream. */
  readonly qemu: string;
  /** sha256 of QEMU's arguments (machine, devices, kernel command line). */
  readonly argsDigest: string;
}

export interface SavedVm {
  readonly dir: string;
  /** What the engine recorded when it saved the parts. */
  readonly manifest: SavedVmManifest;
  /** The device state file's identity when it was found (`quarantine` moves only this one aside). */
  readonly stateId: { readonly dev: number; readonly ino: number };
}

/** What a build reports of the parts it wrote (`ram`, `device`, `work` in its directory). */
export type SavedPartsRecord = Readonly<Record<SavedVmPart, SavedPartRecord>>;

/** The parts of a saved VM opened read-only and checked; the caller closes them. */
export interface VerifiedParts {
  readonly ram: FileHandle;
  /** Positioned at 0: what QEMU reads next. */
  readonly device: FileHandle;
  readonly work: FileHandle;
  close(): Promise<void>;
}

/** The manifest's name in a saved VM's directory. */
export const MANIFEST_FILE = "manifest.json";
const MAX_MANIFEST_BYTES = 4096;
/** Read size while hashing a part, bytes. */
const HASH_CHUNK_BYTES = 4 * 1024 * 1024;

export function shapeKey(shape: VmShape): string {
  const canonical = JSON.stringify(Object.fromEntries(Object.entries(shape).sort(([a], [b]) => a.localeCompare(b))));
  return createHash("sha256").update(`mvm-saved-vm v2\n${canonical}`).digest("hex");
}

/** The identity of the QEMU binary for `VmShape.qemu`. */
export async function qemuIdentity(qemuPath: string): Promise<string> {
  const st = await stat(qemuPath);
  return `${qemuPath}:${st.size}:${st.mtimeMs}`;
}

/** A file's identity: any write to it, or a new file in its place, changes it. */
function identity(st: { dev: number; ino: number; size: number; mtimeMs: number; ctimeMs: number }): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

/**
 * Reads the file open on `handle` through it (positioned reads: its offset stays 0) and returns
 * its size and sha256. Throws AbortedError when `signal` fires.
 */
export async function hashHandle(handle: FileHandle, what: string, signal?: AbortSignal): Promise<SavedPartRecord> {
  const hash = createHash("sha256");
  const buffer = Buffer.allocUnsafe(HASH_CHUNK_BYTES);
  let bytes = 0;
  for (;;) {
    if (signal?.aborted) throw new AbortedError(`${what}: checking it was aborted`, { cause: signal.reason });
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, bytes);
    if (bytesRead === 0) break;
    hash.update(buffer.subarray(0, bytesRead));
    bytes += bytesRead;
  }
  return { bytes, digest: `sha256:${hash.digest("hex")}` as Sha256Digest };
}

/** sha256 and size of the file at `path`. */
export async function hashFile(path: string, signal?: AbortSignal): Promise<SavedPartRecord> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    return await hashHandle(handle, `"${path}"`, signal);
  } finally {
    await handle.close();
  }
}

export class SavedVmStore {
  readonly #building = new Map<string, Promise<SavedVm>>();
  /** Per saved VM directory: the identities of its ram and work files when they were last hashed. */
  readonly #verified = new Map<string, { ram: string; work: string }>();

  constructor(readonly root: string) {}

  /**
   * The saved VM of `shape` when one is stored whole: its parts and a manifest that decodes, names
   * this shape and gives each part's current size. Anything else is not a saved VM the engine
   * made, and is treated as absent.
   */
  async find(shape: VmShape): Promise<SavedVm | undefined> {
    const key = shapeKey(shape);
    const dir = join(this.root, key);
    try {
      const [text, ...parts] = await Promise.all([readSmallFile(join(dir, MANIFEST_FILE), MAX_MANIFEST_BYTES), ...SAVED_VM_PARTS.map((name) => lstat(join(dir, name)))]);
      const manifest = decodeSavedVmManifest(text.toString("utf8"));
      if (manifest.shapeKey !== key) return undefined;
      for (const [i, name] of SAVED_VM_PARTS.entries()) {
        const st = parts[i]!;
        if (!st.isFile() || st.size !== manifest.parts[name].bytes) return undefined;
      }
      const device = parts[1]!;
      return { dir, manifest, stateId: { dev: device.dev, ino: device.ino } };
    } catch {
      return undefined;
    }
  }

  /**
   * The saved VM of `shape`, built with `build(dir)` when missing (once per shape at a time in
   * this process). `build` fills `dir` with `ram`, `device` and `work` and reports each one's size
   * and sha256, which go into the manifest.
   */
  async ensure(shape: VmShape, build: (dir: string) => Promise<SavedPartsRecord>): Promise<SavedVm> {
    const found = await this.find(shape);
    if (found) return found;
    const key = shapeKey(shape);
    let pending = this.#building.get(key);
    if (pending === undefined) {
      pending = this.#build(shape, key, build).finally(() => this.#building.delete(key));
      this.#building.set(key, pending);
    }
    return pending;
  }

  async #build(shape: VmShape, key: string, build: (dir: string) => Promise<SavedPartsRecord>): Promise<SavedVm> {
    await mkdir(this.root, { recursive: true, mode: 0o711 });
    const tmp = join(this.root, `.build-${randomBytes(6).toString("hex")}`);
    await mkdir(tmp, { mode: 0o711 });
    try {
      const parts = await build(tmp);
      for (const name of SAVED_VM_PARTS) {
        const written = await lstat(join(tmp, name));
        if (!written.isFile() || written.size !== parts[name].bytes) {
          throw new InternalError(`Saving a VM in "${tmp}": its ${name} file holds ${written.size} bytes, the save reported ${parts[name].bytes}`);
        }
        await chmod(join(tmp, name), 0o600);
      }
      await writeFile(join(tmp, "shape.json"), `${JSON.stringify(shape, null, 2)}\n`, { mode: 0o600 });
      await writeFileAtomic(join(tmp, MANIFEST_FILE), encodeSavedVmManifest({ version: SAVED_VM_MANIFEST_VERSION, shapeKey: key, parts }), 0o600);
      await chmod(tmp, 0o700);
      const final = join(this.root, key);
      try {
        await rename(tmp, final);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOTEMPTY" && (err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        if ((await this.find(shape)) === undefined) {
          // A damaged saved VM (a part missing) is in the way: replace it with this one.
          await rm(final, { recursive: true, force: true });
          await rename(tmp, final);
        } else {
          // Another engine saved the same shape first: keep theirs.
          await rm(tmp, { recursive: true, force: true });
        }
      }
      const saved = await this.find(shape);
      if (saved === undefined) throw new InternalError(`Saved VM "${final}" vanished as it was saved`);
      return saved;
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * Opens `saved`'s parts read-only and checks them against its manifest through the returned
   * descriptors, so the bytes checked are the bytes copied or read by QEMU. Each must be a regular
   * file of the engine's uid that no group or other may write. The device state is hashed every
   * time; ram and work are hashed the first time and afterwards only checked to be the very files
   * hashed, unchanged. Throws SnapshotMismatchError when a part is not so, or its size or sha256
   * differs from the manifest; AbortedError when `signal` fires while they are read.
   */
  async openVerified(saved: SavedVm, signal?: AbortSignal): Promise<VerifiedParts> {
    const what = `Saved VM "${saved.dir}"`;
    const handles: FileHandle[] = [];
    const close = async () => {
      await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
    };
    try {
      const ids: Partial<Record<SavedVmPart, string>> = {};
      for (const name of SAVED_VM_PARTS) {
        const handle = await open(join(saved.dir, name), constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: unknown) => {
          throw new SnapshotMismatchError(`${what}: cannot open its ${name} file`, { cause: err });
        });
        handles.push(handle);
        const st = await handle.stat();
        const euid = process.geteuid?.();
        if (!st.isFile() || (euid !== undefined && st.uid !== euid) || (st.mode & 0o022) !== 0) {
          throw new SnapshotMismatchError(`${what}: its ${name} file is not a regular file the engine alone can write (uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)})`);
        }
        ids[name] = identity(st);
      }
      const [ram, device, work] = handles as [FileHandle, FileHandle, FileHandle];
      const known = this.#verified.get(saved.dir);
      const toHash: [SavedVmPart, FileHandle][] = [["device", device]];
      if (known === undefined || known.ram !== ids.ram || known.work !== ids.work) toHash.push(["ram", ram], ["work", work]);
      for (const [name, handle] of toHash) {
        const got = await hashHandle(handle, `${what}: its ${name} file`, signal);
        const recorded = saved.manifest.parts[name];
        if (got.bytes !== recorded.bytes || got.digest !== recorded.digest) {
          this.#verified.delete(saved.dir);
          throw new SnapshotMismatchError(`${what}: its ${name} file does not match the digest recorded when it was saved (${got.bytes} bytes, ${got.digest}; recorded ${recorded.bytes} bytes, ${recorded.digest})`, {
            hint: "the saved VM was set aside; the next sandbox of this shape boots and saves a new one",
          });
        }
      }
      this.#verified.set(saved.dir, { ram: ids.ram!, work: ids.work! });
      return { ram, device, work, close };
    } catch (err) {
      await close();
      throw err;
    }
  }

  /**
   * Moves a saved VM that failed to restore aside, to `root/.quarantine-<random>/` (kept for
   * inspection until `sweep` removes it), so the next sandbox of its shape saves a new one. Does
   * nothing when the directory no longer holds the state file `saved` was found with (another
   * caller moved it already, and perhaps a new one was saved).
   */
  async quarantine(saved: SavedVm): Promise<void> {
    this.#verified.delete(saved.dir);
    const st = await lstat(join(saved.dir, "device")).catch(() => undefined);
    if (st === undefined || st.dev !== saved.stateId.dev || st.ino !== saved.stateId.ino) return;
    const aside = join(this.root, `.quarantine-${randomBytes(6).toString("hex")}`);
    await rename(saved.dir, aside).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    });
    const now = new Date();
    await utimes(aside, now, now).catch(() => undefined);
  }

  /** Marks a saved VM as used now (sweep keeps recently used ones). */
  async touch(saved: Pick<SavedVm, "dir">): Promise<void> {
    const now = new Date();
    await utimes(saved.dir, now, now).catch(() => undefined);
  }

  /**
   * Removes build directories an engine left when it died mid-build and quarantined saved VMs
   * (both older than `buildAgeMs`), and saved VMs nobody restored for `unusedMs` (a new kernel,
   * image or agent makes a new shape).
   */
  async sweep(buildAgeMs: number, unusedMs: number): Promise<string[]> {
    const removed: string[] = [];
    const names = await readdir(this.root).catch(() => [] as string[]);
    for (const name of names) {
      const dir = join(this.root, name);
      const st = await stat(dir).catch(() => undefined);
      if (st === undefined) continue;
      const age = Date.now() - st.mtimeMs;
      if (((name.startsWith(".build-") || name.startsWith(".quarantine-")) && age > buildAgeMs) || (/^[0-9a-f]{64}$/.test(name) && age > unusedMs)) {
        await rm(dir, { recursive: true, force: true });
        removed.push(dir);
      }
    }
    return removed;
  }
}

/** Copies the saved work disk for one sandbox, keeping it sparse. */
export async function copyWorkDisk(template: string, target: string): Promise<void> {
  try {
    await run("cp", ["--sparse=always", "--reflink=auto", "--no-preserve=all", "--", template, target]);
  } catch (err) {
    await rm(target, { force: true });
    throw new InternalError(`Cannot copy the saved work disk to "${target}"`, { cause: err });
  }
}
