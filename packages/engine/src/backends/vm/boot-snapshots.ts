/**
 * Boot snapshots in the engine's snapshot store: for each guest shape, the booted and saved VM
 * (`ram`, `device`, `work`) that its sandboxes restore, kept as a `kind: "boot"` snapshot keyed
 * by the shape key, with `{ unusedSeconds }` retention.
 *
 * `open` finds the shape's boot snapshot (saving one when there is none, once per shape at a time
 * in this process), has the store materialize it (chunks verified when its read-only template is
 * built, the template's identity checked before this use) and opens the three parts read-only,
 * the device state positioned past its header once that header names the VM about to load it. A
 * boot snapshot that fails any of this is deleted, so the next launch of its shape saves a new one.
 */
import { constants } from "node:fs";
import { mkdir, mkdtemp, open, readdir, rm, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { SnapshotMismatchError } from "@mvm/protocol";
import type { SnapshotShape } from "../../store/manifest.js";
import type { SnapshotStore, StoredSnapshot } from "../../store/snapshot-store.js";
import { readDeviceHeader, type DeviceHeader } from "./vm-snapshot.js";

/** A boot snapshot unused this long is removed by the store's sweep, s. */
export const BOOT_SNAPSHOT_UNUSED_SECONDS = 7 * 24 * 60 * 60;

/** A boot snapshot's parts, open read-only; the caller closes them and releases the template. */
export interface OpenedBootSnapshot {
  readonly snap: StoredSnapshot;
  readonly ram: FileHandle;
  /** Positioned where QEMU's stream starts. */
  readonly device: FileHandle;
  readonly work: FileHandle;
  /** Closes the parts and ends this use of the template. Idempotent. */
  close(): Promise<void>;
}

export class BootSnapshots {
  readonly #builds = new Map<string, Promise<StoredSnapshot>>();

  /** `buildRoot`: where boots are saved before they go into the store (the engine's, 0700). */
  constructor(
    readonly store: SnapshotStore,
    readonly buildRoot: string,
  ) {}

  /**
   * The boot snapshot of `key`, opened. `save(dir)` boots and saves a VM into `dir` (`ram`,
   * `device`, `work`) and returns the shape to record, when there is none. Throws
   * SnapshotMismatchError when the snapshot fails verification or its header does not name
   * `header` (it is then deleted), the save's error when a save fails.
   */
  async open(key: string, header: DeviceHeader, save: (dir: string) => Promise<SnapshotShape>, signal?: AbortSignal): Promise<OpenedBootSnapshot> {
    let snap = await this.store.findByKey(key);
    if (snap === undefined) {
      let pending = this.#builds.get(key);
      if (pending === undefined) {
        pending = this.#build(key, save).finally(() => this.#builds.delete(key));
        this.#builds.set(key, pending);
      }
      snap = await pending;
    }
    const found = snap;
    const dropBad = async (err: unknown): Promise<never> => {
      if (err instanceof SnapshotMismatchError) await this.drop(found);
      throw err;
    };
    const materialized = await this.store.materialize(found, signal).catch(dropBad);
    const handles: FileHandle[] = [];
    const close = async () => {
      await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
      await materialized.release();
    };
    try {
      for (const part of ["ram", "device", "work"] as const) {
        const path = materialized.parts[part];
        if (path === undefined) throw new SnapshotMismatchError(`Boot snapshot ${found.id} has no ${part} part`);
        handles.push(await open(path, constants.O_RDONLY | constants.O_NOFOLLOW));
      }
      await readDeviceHeader(handles[1]!, header, `Boot snapshot ${found.id}`);
      return { snap: found, ram: handles[0]!, device: handles[1]!, work: handles[2]!, close };
    } catch (err) {
      await close();
      return dropBad(err);
    }
  }

  /** Marks a boot snapshot used now (its retention counts from its last use). */
  async touch(snap: StoredSnapshot): Promise<void> {
    await this.store.touch(snap).catch(() => undefined);
  }

  /** Deletes a boot snapshot that failed to restore; the next launch of its shape saves a new one. */
  async drop(snap: StoredSnapshot): Promise<void> {
    await this.store.delete(snap.id).catch(() => undefined);
  }

  /** Removes save directories older than `minAgeMs` (left by an engine that died while saving). */
  async sweep(minAgeMs: number): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(this.buildRoot).catch(() => [] as string[])) {
      const dir = join(this.buildRoot, name);
      const st = await stat(dir).catch(() => undefined);
      if (st === undefined || Date.now() - st.mtimeMs < minAgeMs) continue;
      await rm(dir, { recursive: true, force: true });
      removed.push(dir);
    }
    return removed;
  }

  async #build(key: string, save: (dir: string) => Promise<SnapshotShape>): Promise<StoredSnapshot> {
    await mkdir(this.buildRoot, { recursive: true, mode: 0o700 });
    const dir = await mkdtemp(join(this.buildRoot, "build-"));
    try {
      const shape = await save(dir);
      return await this.store.create({
        parts: { ram: join(dir, "ram"), device: join(dir, "device"), work: join(dir, "work") },
        shape,
        kind: "boot",
        source: "vm-backend",
        retention: { unusedSeconds: BOOT_SNAPSHOT_UNUSED_SECONDS },
        memory: true,
        key,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}
