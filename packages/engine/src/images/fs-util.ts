/**
 * Tree removal that refuses to descend into anything mounted below the tree. (Atomic writes and
 * bounded reads are the store's: `store/atomic.ts`.)
 */
import { constants as fsc } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { resolve, sep } from "node:path";
import { CleanupError } from "@mvm/protocol";

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
