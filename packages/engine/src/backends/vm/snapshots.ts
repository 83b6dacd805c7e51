/**
 * Saved VMs: one per guest shape (kernel, initramfs, image disk, agent disk, RAM, vCPUs, work disk
 * size, accelerator), booted once to a ready agent and saved, so later sandboxes of that shape
 * restore it instead of booting.
 *
 * Layout, under `root/<sha256 of the shape>/` (files 0600, owned by the engine; the directory 0700
 * once saved, 0711 while it is built so a jailed QEMU can reach the socket directory it is given):
 *
 *   state         QEMU's migration stream (device state and guest RAM)
 *   manifest.json what the engine recorded when it saved `state`: its size and sha256
 *   work.img      the work disk as the saved guest left it (mounted, empty); each restore gets a copy
 *   shape.json    the shape, for people reading the directory
 *
 * A saved VM is built in `root/.build-<random>/` and renamed into place, so a directory that exists
 * is complete. A directory without a valid manifest for its shape (half-copied, or left by an engine
 * that wrote none) is not used: the next sandbox of that shape saves a new one over it. Every
 * restore reads the state through the descriptor QEMU gets and compares it with the manifest first
 * (`openVerifiedState`); a saved VM that fails is moved aside to `root/.quarantine-<random>/`.
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
import { decodeSavedVmManifest, encodeSavedVmManifest, type SavedVmManifest } from "./snapshot-manifest.js";

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
  readonly statePath: string;
  readonly workTemplatePath: string;
  /** What the engine recorded when it saved the state. */
  readonly manifest: SavedVmManifest;
  /** The state file's identity when it was found (`quarantine` moves only this one aside). */
  readonly stateId: { readonly dev: number; readonly ino: number };
}

/** What a build reports of the state file it wrote. */
export interface SavedStateRecord {
  /** Size, bytes. */
  readonly bytes: number;
  /** sha256 of the bytes written. */
  readonly digest: Sha256Digest;
}

/** The manifest's name in a saved VM's directory. */
export const MANIFEST_FILE = "manifest.json";
const MAX_MANIFEST_BYTES = 4096;
/** Read size while hashing a state file, bytes. */
const HASH_CHUNK_BYTES = 4 * 1024 * 1024;

export function shapeKey(shape: VmShape): string {
  const canonical = JSON.stringify(Object.fromEntries(Object.entries(shape).sort(([a], [b]) => a.localeCompare(b))));
  return createHash("sha256").update(`mvm-saved-vm v1\n${canonical}`).digest("hex");
}

/** The identity of the QEMU binary for `VmShape.qemu`. */
export async function qemuIdentity(qemuPath: string): Promise<string> {
  const st = await stat(qemuPath);
  return `${qemuPath}:${st.size}:${st.mtimeMs}`;
}

export class SavedVmStore {
  readonly #building = new Map<string, Promise<SavedVm>>();

  constructor(readonly root: string) {}

  /**
   * The saved VM of `shape` when one is stored whole: its state, its work disk and a manifest
   * that decodes, names this shape and gives the state's current size. Anything else is not a
   * saved VM the engine made, and is treated as absent.
   */
  async find(shape: VmShape): Promise<SavedVm | undefined> {
    const key = shapeKey(shape);
    const dir = join(this.root, key);
    const statePath = join(dir, "state");
    const workTemplatePath = join(dir, "work.img");
    try {
      const [text, state] = await Promise.all([readSmallFile(join(dir, MANIFEST_FILE), MAX_MANIFEST_BYTES), lstat(statePath), stat(workTemplatePath)]);
      const manifest = decodeSavedVmManifest(text.toString("utf8"));
      if (manifest.shapeKey !== key || !state.isFile() || state.size !== manifest.state.bytes) return undefined;
      return { dir, statePath, workTemplatePath, manifest, stateId: { dev: state.dev, ino: state.ino } };
    } catch {
      return undefined;
    }
  }

  /**
   * The saved VM of `shape`, built with `build(dir)` when missing (once per shape at a time in
   * this process). `build` fills `dir` with `state` and `work.img` and reports the size and sha256
   * of the state it wrote, which go into the manifest.
   */
  async ensure(shape: VmShape, build: (dir: string) => Promise<SavedStateRecord>): Promise<SavedVm> {
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

  async #build(shape: VmShape, key: string, build: (dir: string) => Promise<SavedStateRecord>): Promise<SavedVm> {
    await mkdir(this.root, { recursive: true, mode: 0o711 });
    const tmp = join(this.root, `.build-${randomBytes(6).toString("hex")}`);
    await mkdir(tmp, { mode: 0o711 });
    try {
      const state = await build(tmp);
      const written = await lstat(join(tmp, "state"));
      if (!written.isFile() || written.size !== state.bytes) {
        throw new InternalError(`Saving a VM in "${tmp}": the state file holds ${written.size} bytes, the save reported ${state.bytes}`);
      }
      await writeFile(join(tmp, "shape.json"), `${JSON.stringify(shape, null, 2)}\n`, { mode: 0o600 });
      await writeFileAtomic(join(tmp, MANIFEST_FILE), encodeSavedVmManifest({ version: 1, shapeKey: key, state }), 0o600);
      await chmod(tmp, 0o700);
      const final = join(this.root, key);
      try {
        await rename(tmp, final);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOTEMPTY" && (err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        if ((await this.find(shape)) === undefined) {
          // A damaged saved VM (state or work.img missing) is in the way: replace it with this one.
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
   * Opens `saved`'s state file read-only and checks it against its manifest by reading it through
   * the returned descriptor (positioned reads: its offset stays 0), so the bytes checked are the
   * bytes a QEMU given this descriptor reads. The file must be a regular file of the engine's uid
   * that no group or other may write. Throws SnapshotMismatchError when it is not, or its size
   * or sha256 differs from the manifest; AbortedError when `signal` fires while it is read. The
   * caller closes the handle.
   */
  async openVerifiedState(saved: SavedVm, signal?: AbortSignal): Promise<FileHandle> {
    const what = `Saved VM "${saved.dir}"`;
    const handle = await open(saved.statePath, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: unknown) => {
      throw new SnapshotMismatchError(`${what}: cannot open its state file`, { cause: err });
    });
    try {
      const st = await handle.stat();
      const euid = process.geteuid?.();
      if (!st.isFile() || (euid !== undefined && st.uid !== euid) || (st.mode & 0o022) !== 0) {
        throw new SnapshotMismatchError(`${what}: its state file is not a regular file the engine alone can write (uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)})`);
      }
      const hash = createHash("sha256");
      const buffer = Buffer.allocUnsafe(HASH_CHUNK_BYTES);
      let bytes = 0;
      for (;;) {
        if (signal?.aborted) throw new AbortedError(`${what}: checking its state was aborted`, { cause: signal.reason });
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, bytes);
        if (bytesRead === 0) break;
        hash.update(buffer.subarray(0, bytesRead));
        bytes += bytesRead;
      }
      const digest = `sha256:${hash.digest("hex")}`;
      const recorded = saved.manifest.state;
      if (bytes !== recorded.bytes || digest !== recorded.digest) {
        throw new SnapshotMismatchError(`${what}: its state does not match the digest recorded when it was saved (${bytes} bytes, ${digest}; recorded ${recorded.bytes} bytes, ${recorded.digest})`, {
          hint: "the saved VM was set aside; the next sandbox of this shape boots and saves a new one",
        });
      }
      return handle;
    } catch (err) {
      await handle.close();
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
    const st = await lstat(saved.statePath).catch(() => undefined);
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
