/**
 * Atomic writes and bounded reads: the one implementation every store under the state directory
 * uses (images, VM caches, saved VMs, snapshots, sandbox records).
 */
import { constants as fsc } from "node:fs";
import { chmod, mkdir, open, readdir, rename, rm, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
import { isAlive, parseOwnerTag, uniqueOwnedName } from "./lock.js";

/**
 * Replaces `path` with `data` atomically: writes a temp file beside it (O_EXCL), fsyncs it,
 * renames it over `path` and fsyncs the directory. Readers see the old or the new content, never a mix.
 * `tempDir` puts the temp file in another directory of the same file system (one a sweep owns).
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  mode = 0o644,
  options: { tempDir?: string } = {},
): Promise<void> {
  const temp = options.tempDir === undefined ? `${path}.${await uniqueOwnedName()}.tmp` : join(options.tempDir, `${await uniqueOwnedName()}.tmp`);
  const handle = await open(temp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
  try {
    try {
      await handle.writeFile(data);
      await handle.chmod(mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dirname(path));
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Reads a file of the store's own making, refusing symlinks and anything over `maxBytes`. */
export async function readSmallFile(path: string, maxBytes: number): Promise<Buffer> {
  const handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size > maxBytes) {
      throw new InvalidArgumentError(`Cannot read ${JSON.stringify(path)}: not a regular file of at most ${maxBytes} bytes`);
    }
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/**
 * A temp name in `dir` for something being built there: `.<pid>-<start time>-<random>.<suffix>`,
 * hidden, and owner-tagged so `removeDeadTemps` can tell a dead builder's leftovers.
 */
export async function tempPathIn(dir: string, suffix = "tmp"): Promise<string> {
  return join(dir, `.${await uniqueOwnedName()}.${suffix}`);
}

/**
 * Removes the entries of `dir` named by `tempPathIn` whose process is gone (a builder killed
 * before it renamed or removed its work); those of live processes stay. Returns how many went.
 */
export async function removeDeadTemps(dir: string, remove: (path: string) => Promise<void> = (p) => rm(p, { recursive: true, force: true })): Promise<number> {
  let removed = 0;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw err;
  }
  for (const name of names) {
    if (!/^\.\d+-\d+-[0-9a-f]+\./.test(name)) continue;
    const owner = parseOwnerTag(name.slice(1));
    if (owner === undefined || (await isAlive(owner))) continue;
    await remove(join(dir, name));
    removed++;
  }
  return removed;
}

/**
 * Puts a file that `make(temp)` writes (a compiler's output, an mkfs image) at `path` atomically:
 * `make` gets an owner-tagged temp path beside `path` that does not exist yet; the file it leaves
 * there is given `mode` (when set), fsynced, renamed over `path`, and the directory fsynced. On any
 * failure the temp file is removed and the error rethrown. Returns what `make` returns.
 */
export async function publishFile<T>(path: string, make: (temp: string) => Promise<T>, options: { mode?: number } = {}): Promise<T> {
  const temp = await tempPathIn(dirname(path), `${basename(path)}.tmp`);
  try {
    const result = await make(temp);
    if (options.mode !== undefined) await chmod(temp, options.mode);
    const handle = await open(temp, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
    await fsyncDir(dirname(path));
    return result;
  } finally {
    await rm(temp, { force: true });
  }
}

export interface PublishDirOptions {
  /**
   * What to do when `path` already exists (found before the rename or raced in by another
   * process): `"keep"` it (ours is removed) or `"replace"` it (it is moved aside and removed).
   */
  readonly ifExists: (path: string) => Promise<"keep" | "replace">;
  /** Removes a tree (e.g. one with read-only directories). @default rm -rf */
  readonly remove?: (path: string) => Promise<void>;
}

/**
 * Puts a directory that `make(temp)` fills at `path` in one rename: `temp` is an empty 0700
 * owner-tagged directory beside `path` (`make` sets the modes it wants). On failure it is removed.
 * @returns true when ours was put in place, false when an existing one was kept.
 */
export async function publishDir(path: string, make: (temp: string) => Promise<void>, options: PublishDirOptions): Promise<boolean> {
  const remove = options.remove ?? ((p: string) => rm(p, { recursive: true, force: true }));
  const parent = dirname(path);
  const temp = await tempPathIn(parent, "build");
  await mkdir(temp, { mode: 0o700 });
  try {
    await make(temp);
    for (;;) {
      try {
        await rename(temp, path);
        await fsyncDir(parent);
        return true;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
      }
      if ((await options.ifExists(path)) === "keep") return false;
      const aside = await tempPathIn(parent, "stale");
      await rename(path, aside).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
      await remove(aside);
    }
  } finally {
    await remove(temp);
  }
}
