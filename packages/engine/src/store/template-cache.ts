/**
 * The registry's templates in use: one verified template per snapshot digest under
 * `<root>/templates/<hex>/`, made once and shared (templates.ts builds and checks one), held while
 * in use and removed by sweeps once nobody holds it.
 *
 * Holding works across processes: while a process uses template `<hex>` it keeps one file
 * `holds/<owner>.<hex>`, and in-process uses are counted. Checking or building a template and
 * removing one both run under that digest's lock (`locks/template-<hex>.lock`), so a removal never
 * slips between a caller's check and its hold.
 */
import { lstat, readdir, rename, rm, unlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { KeyObject } from "node:crypto";
import { fsyncDir } from "./atomic.js";
import type { ChunkStore } from "./chunks.js";
import { FileLock, isAlive, parseOwnerTag, uniqueOwnedName } from "./lock.js";
import type { SnapshotManifest } from "./manifest.js";
import { buildTemplate, checkTemplate, partsOf, type PartName, type TemplateIdentity } from "./templates.js";

export interface TemplateCacheOptions {
  /** The registry root: templates/, holds/, locks/ and tmp/ are under it. */
  readonly root: string;
  readonly chunks: ChunkStore;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** Registers a build in progress (chunk removal waits for it); returns the marker to unlink. */
  readonly markBusy: () => Promise<string>;
}

export class TemplateCache {
  readonly #o: TemplateCacheOptions;
  /** Template identities verified in this process. */
  readonly #identities = new Map<string, TemplateIdentity>();
  /** In-process uses of each template (by digest hex), and this process's hold file for it. */
  readonly #holds = new Map<string, number>();
  readonly #holdFiles = new Map<string, string>();
  /** Checks or builds in flight, by digest hex. */
  readonly #inflight = new Map<string, Promise<void>>();

  constructor(options: TemplateCacheOptions) {
    this.#o = options;
  }

  /** Where template `hex` lives. */
  dirOf(hex: string): string {
    return join(this.#o.root, "templates", hex);
  }

  /**
   * Holds template `hex` of `manifest` (digest `digest`) and makes sure it is intact, building it
   * when missing or not intact; concurrent calls share one check or build. Returns the part files
   * and the matching release (idempotent).
   */
  async acquire(hex: string, manifest: SnapshotManifest, digest: string, signal?: AbortSignal): Promise<{ parts: Partial<Record<PartName, string>>; release: () => Promise<void> }> {
    this.#holds.set(hex, (this.#holds.get(hex) ?? 0) + 1);
    let released = false;
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      const left = (this.#holds.get(hex) ?? 1) - 1;
      if (left > 0) return void this.#holds.set(hex, left);
      this.#holds.delete(hex);
      const file = this.#holdFiles.get(hex);
      this.#holdFiles.delete(hex);
      if (file !== undefined) await unlink(file).catch(() => undefined);
    };
    try {
      let work = this.#inflight.get(hex);
      if (work === undefined) {
        work = this.#ensure(hex, manifest, digest, signal).finally(() => this.#inflight.delete(hex));
        this.#inflight.set(hex, work);
      }
      await work;
    } catch (err) {
      await release();
      throw err;
    }
    const parts: Partial<Record<PartName, string>> = {};
    for (const part of partsOf(manifest)) parts[part] = join(this.dirOf(hex), part);
    return { parts, release };
  }

  /**
   * Removes every template nobody holds that is not in `live` or, if it is, was last used more than
   * `idleMs` before `now`; and any entry of templates/ that is not a digest. Returns how many went.
   */
  async sweep(live: ReadonlySet<string>, now: Date, idleMs: number): Promise<number> {
    let removed = 0;
    for (const name of await readdir(join(this.#o.root, "templates"))) {
      if (!/^[0-9a-f]{64}$/.test(name)) {
        if (await this.discard(this.dirOf(name))) removed++;
        continue;
      }
      if (live.has(name)) {
        // A template is a cache: one nobody has used for a while goes, and is rebuilt when needed.
        const lastUse = (await lstat(this.dirOf(name)).catch(() => undefined))?.mtimeMs;
        if (lastUse === undefined || now.getTime() - lastUse <= idleMs) continue;
      }
      if (await this.removeIfUnheld(name)) removed++;
    }
    return removed;
  }

  /** Removes template `hex` unless this or another live process holds it. Returns whether it went. */
  async removeIfUnheld(hex: string): Promise<boolean> {
    await using _lock = await this.#lock(hex);
    if ((this.#holds.get(hex) ?? 0) > 0) return false;
    for (const name of await readdir(join(this.#o.root, "holds"))) {
      if (!name.endsWith(`.${hex}`)) continue;
      const owner = parseOwnerTag(name);
      if (owner !== undefined && (await isAlive(owner))) return false;
    }
    this.#identities.delete(this.dirOf(hex));
    return this.discard(this.dirOf(hex));
  }

  /** Moves `path` into tmp/ (one rename: it is gone from where it was) and removes it there. */
  async discard(path: string): Promise<boolean> {
    const aside = join(this.#o.root, "tmp", `${await uniqueOwnedName()}.discard`);
    try {
      await rename(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw err;
    }
    await rm(aside, { recursive: true, force: true });
    return true;
  }

  #lock(hex: string): Promise<FileLock> {
    return FileLock.acquire(join(this.#o.root, "locks", `template-${hex}.lock`));
  }

  /** Checks the template of `hex` and (re)builds it when it is missing or not intact; holds it for this process. */
  async #ensure(hex: string, manifest: SnapshotManifest, digest: string, signal?: AbortSignal): Promise<void> {
    await using _lock = await this.#lock(hex);
    if (!this.#holdFiles.has(hex)) {
      const file = join(this.#o.root, "holds", `${await uniqueOwnedName()}.${hex}`);
      await writeFile(file, "", { flag: "wx", mode: 0o600 });
      this.#holdFiles.set(hex, file);
    }
    const dir = this.dirOf(hex);
    const problem = await checkTemplate(dir, manifest, digest, this.#o.publicKey, this.#identities);
    if (problem === undefined) {
      const now = new Date();
      await utimes(dir, now, now); // its last use, for sweep
      return;
    }
    if (problem !== "it is missing") await this.discard(dir);
    this.#identities.delete(dir);
    const busy = await this.#o.markBusy();
    const build = join(this.#o.root, "tmp", `${await uniqueOwnedName()}.template`);
    try {
      await buildTemplate(this.#o.chunks, manifest, digest, build, this.#o.privateKey, signal);
      await rename(build, dir);
      await fsyncDir(join(this.#o.root, "templates"));
    } catch (err) {
      await rm(build, { recursive: true, force: true });
      throw err;
    } finally {
      await unlink(busy).catch(() => undefined);
    }
  }
}
