/**
 * Atomic writes and bounded reads: the one implementation every store under the state directory
 * uses (images, VM caches, saved VMs, snapshots, sandbox records).
 */
import { constants as fsc } from "node:fs";
import { open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
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
