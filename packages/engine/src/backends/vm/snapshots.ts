/**
 * Saved VMs: one per guest shape (kernel, initramfs, image disk, agent disk, RAM, vCPUs, work disk
 * size, accelerator), booted once to a ready agent and saved, so later sandboxes of that shape
 * restore it instead of booting.
 *
 * Layout, under `root/<sha256 of the shape>/` (files 0600, owned by the engine; directories 0711,
 * so a jailed QEMU can reach the one subdirectory it is given while saving, and list nothing):
 *
 *   state      QEMU's migration stream (device state and guest RAM)
 *   work.img   the work disk as the saved guest left it (mounted, empty); each restore gets a copy
 *   shape.json the shape, for people reading the directory
 *
 * A saved VM is built in `root/.build-<random>/` and renamed into place, so a directory that exists
 * is complete. Nothing secret is in it: the agent has not started a session, and every restore
 * gets a fresh RNG seed from the host before its agent says hello.
 */
import { createHash, randomBytes } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdir, readdir, rename, rm, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { InternalError } from "@mvm/protocol";

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
}

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

  #paths(dir: string): SavedVm {
    return { dir, statePath: join(dir, "state"), workTemplatePath: join(dir, "work.img") };
  }

  /** The saved VM of `shape` when one is stored. */
  async find(shape: VmShape): Promise<SavedVm | undefined> {
    const saved = this.#paths(join(this.root, shapeKey(shape)));
    try {
      await Promise.all([stat(saved.statePath), stat(saved.workTemplatePath)]);
      return saved;
    } catch {
      return undefined;
    }
  }

  /**
   * The saved VM of `shape`, built with `build(dir)` when missing (once per shape at a time in
   * this process). `build` fills `dir` with `state` and `work.img`.
   */
  async ensure(shape: VmShape, build: (dir: string) => Promise<void>): Promise<SavedVm> {
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

  async #build(shape: VmShape, key: string, build: (dir: string) => Promise<void>): Promise<SavedVm> {
    await mkdir(this.root, { recursive: true, mode: 0o711 });
    const tmp = join(this.root, `.build-${randomBytes(6).toString("hex")}`);
    await mkdir(tmp, { mode: 0o711 });
    try {
      await build(tmp);
      await writeFile(join(tmp, "shape.json"), `${JSON.stringify(shape, null, 2)}\n`, { mode: 0o600 });
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
      return this.#paths(final);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
  }

  /** Marks a saved VM as used now (sweep keeps recently used ones). */
  async touch(saved: SavedVm): Promise<void> {
    const now = new Date();
    await utimes(saved.dir, now, now).catch(() => undefined);
  }

  /**
   * Removes build directories an engine left when it died mid-build (older than `buildAgeMs`) and
   * saved VMs nobody restored for `unusedMs` (a new kernel, image or agent makes a new shape).
   */
  async sweep(buildAgeMs: number, unusedMs: number): Promise<string[]> {
    const removed: string[] = [];
    const names = await readdir(this.root).catch(() => [] as string[]);
    for (const name of names) {
      const dir = join(this.root, name);
      const st = await stat(dir).catch(() => undefined);
      if (st === undefined) continue;
      const age = Date.now() - st.mtimeMs;
      if ((name.startsWith(".build-") && age > buildAgeMs) || (/^[0-9a-f]{64}$/.test(name) && age > unusedMs)) {
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
