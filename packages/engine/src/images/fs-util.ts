/**
 * File-system helpers of the image store: atomic replace of small files, bounded reads, and tree
 * removal that refuses to descend into anything mounted below the tree.
 */
import { constants as fsc } from "node:fs";
import { open, readFile, rename, rm, unlink } from "node:fs/promises";
import { dirname, resolve, sep } from "node:path";
import { CleanupError, InvalidArgumentError } from "@mvm/protocol";
import { uniqueOwnedName } from "./lock.js";

/**
 * Replaces `path` with `data` atomically: writes a temp file beside it (O_EXCL), fsyncs it,
 * renames it over `path` and fsyncs the directory. Readers see the old or the new content, never a mix.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const temp = `${path}.${await uniqueOwnedName()}.tmp`;
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

/** Mount points at or below `dir` in this process's mount namespace. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const base = resolve(dir);
  const text = await readFile("/proc/self/mountinfo", "utf8");
  const found: string[] = [];
  for (const line of text.split("\n")) {
    const field = line.split(" ")[4];
    if (field === undefined) continue;
    const point = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    if (point === base || point.startsWith(base + sep)) found.push(point);
  }
  return found;
}

/**
 * Removes a tree without following symlinks. Refuses (CleanupError) when something is mounted
 * below it, so a leaked bind mount of a host directory is never emptied.
 */
export async function removeTree(dir: string): Promise<void> {
  const mounts = await mountsUnder(dir);
  if (mounts.length > 0) {
    throw new CleanupError(`Cannot remove ${JSON.stringify(dir)}: ${mounts.length} mount point(s) below it, e.g. ${JSON.stringify(mounts[0])}`, {
      hint: `unmount them (umount -R ${dir}) and retry`,
    });
  }
  await rm(dir, { recursive: true, force: true, maxRetries: 2 });
}
