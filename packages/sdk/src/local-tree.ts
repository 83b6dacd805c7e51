/**
 * Directories on the caller's machine as tar streams: packing one (symlinks are never followed)
 * and unpacking one path-safely (entries stay under the destination, never pass through a
 * symlink, never carry setuid bits). Used by `files.uploadDir`, `files.downloadDir` and
 * `mvmctl cp -r`.
 */
import { constants as fsc } from "node:fs";
import { lstat, mkdir, open, readdir, chmod } from "node:fs/promises";
import { join } from "node:path";
import {
  InvalidArgumentError,
  NotFoundError,
  readTar,
  tarEnd,
  tarHeader,
  tarPadding,
  treeLimits,
  type TreeOptions,
  type TreeWriteResult,
} from "@mvm/protocol";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The local directory `dir` as a tar stream of its files and directories, in name order.
 * Symlinks, sockets, devices and FIFOs are left out (counted in `skipped` of the returned tally).
 * @throws NotFoundError when `dir` does not exist; InvalidArgumentError when it is not a directory
 * @example
 * await sb.files.writeTar("/work/src", packLocalDir("./src").tar);
 */
export function packLocalDir(dir: string, options: TreeOptions = {}): { tar: AsyncGenerator<Uint8Array>; tally: TreeWriteResult } {
  const tally: TreeWriteResult = { files: 0, dirs: 0, bytes: 0, skipped: 0 };
  return { tar: pack(dir, options, tally), tally };
}

async function* pack(root: string, options: TreeOptions, tally: TreeWriteResult): AsyncGenerator<Uint8Array> {
  const { maxEntries, maxBytes } = treeLimits(options);
  const top = await lstat(root).catch((err: unknown) => {
    throw (err as NodeJS.ErrnoException).code === "ENOENT" ? new NotFoundError(`No directory "${root}"`, { cause: err }) : err;
  });
  if (!top.isDirectory()) throw new InvalidArgumentError(`Cannot pack "${root}": not a directory`);
  const stack: string[] = [""];
  let entries = 0;
  while (stack.length > 0) {
    const rel = stack.pop() as string;
    const names = (await readdir(rel === "" ? root : join(root, rel), { encoding: "buffer" })).sort(Buffer.compare);
    const dirs: string[] = [];
    for (const raw of names) {
      options.signal?.throwIfAborted();
      let name: string;
      try {
        name = utf8.decode(raw);
      } catch (cause) {
        throw new InvalidArgumentError(`Cannot pack "${root}": a name in "${rel || "."}" is not UTF-8`, { cause });
      }
      const path = rel === "" ? name : `${rel}/${name}`;
      const abs = join(root, path);
      const st = await lstat(abs);
      if (!st.isDirectory() && !st.isFile()) {
        tally.skipped += 1;
        continue;
      }
      if (++entries > maxEntries) throw new InvalidArgumentError(`Cannot pack "${root}": more than ${maxEntries} entries`);
      if (st.isDirectory()) {
        yield tarHeader({ path, type: "dir", mode: st.mode & 0o777, size: 0, mtimeMs: st.mtimeMs });
        tally.dirs += 1;
        dirs.push(path);
        continue;
      }
      const handle = await open(abs, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
      try {
        const fst = await handle.stat();
        if (!fst.isFile()) throw new InvalidArgumentError(`Cannot pack "${abs}": it changed while it was read`);
        if (tally.bytes + fst.size > maxBytes) throw new InvalidArgumentError(`Cannot pack "${root}": more than ${maxBytes} bytes of files`);
        yield tarHeader({ path, type: "file", mode: fst.mode & 0o777, size: fst.size, mtimeMs: fst.mtimeMs });
        let left = fst.size;
        const buf = Buffer.allocUnsafe(256 * 1024);
        while (left > 0) {
          const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, left), null);
          if (bytesRead === 0) throw new InvalidArgumentError(`Cannot pack "${abs}": it shrank while it was read`);
          left -= bytesRead;
          yield Buffer.from(buf.subarray(0, bytesRead));
        }
        yield tarPadding(fst.size);
        tally.files += 1;
        tally.bytes += fst.size;
      } finally {
        await handle.close();
      }
    }
    stack.push(...dirs.reverse());
  }
  yield tarEnd();
}

/**
 * Unpacks the tar stream `tar` into the local directory `dest` (made when missing). Every entry
 * lands under `dest`: the archive's paths are checked by the reader, and a path that would pass
 * through a symlink or a non-directory already on disk is refused. Only files and directories
 * are written (links and special files are counted in `skipped`); modes keep the permission bits only.
 * @throws InvalidArgumentError for an unsafe or malformed archive, or one over the bounds
 */
export async function extractTarToDir(tar: AsyncIterable<Uint8Array>, dest: string, options: TreeOptions = {}): Promise<TreeWriteResult> {
  await mkdir(dest, { recursive: true });
  if (!(await lstat(dest)).isDirectory()) throw new InvalidArgumentError(`Cannot unpack into "${dest}": not a directory`);
  const result: TreeWriteResult = { files: 0, dirs: 0, bytes: 0, skipped: 0 };
  const dirModes: [string, number][] = [];
  for await (const { entry, body } of readTar(tar, treeLimits(options))) {
    options.signal?.throwIfAborted();
    if (entry.type !== "file" && entry.type !== "dir") {
      result.skipped += 1;
      continue;
    }
    const parts = entry.path.split("/");
    const parents = entry.type === "dir" ? parts : parts.slice(0, -1);
    let at = dest;
    for (const part of parents) {
      at = join(at, part);
      await ensureDir(at, entry.path);
    }
    if (entry.type === "dir") {
      dirModes.push([at, entry.mode]);
      result.dirs += 1;
      continue;
    }
    const target = join(at, parts.at(-1) as string);
    let handle;
    try {
      handle = await open(target, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW, entry.mode | 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ELOOP") throw new InvalidArgumentError(`Refusing archive entry "${entry.path}": a symlink is in the way`, { cause: err });
      throw err;
    }
    try {
      if (!(await handle.stat()).isFile()) throw new InvalidArgumentError(`Refusing archive entry "${entry.path}": not a regular file on disk`);
      for await (const chunk of body) await handle.write(chunk);
      await handle.chmod(entry.mode);
    } finally {
      await handle.close();
    }
    result.files += 1;
    result.bytes += entry.size;
  }
  for (const [dir, mode] of dirModes.reverse()) await chmod(dir, mode | 0o700);
  return result;
}

/** Makes `path` a directory, or checks that it is one (and not a symlink). */
async function ensureDir(path: string, entry: string): Promise<void> {
  try {
    await mkdir(path, { mode: 0o755 });
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const st = await lstat(path);
  if (st.isSymbolicLink()) throw new InvalidArgumentError(`Refusing archive entry "${entry}": "${path}" is a symlink`);
  if (!st.isDirectory()) throw new InvalidArgumentError(`Refusing archive entry "${entry}": "${path}" is not a directory`);
}
