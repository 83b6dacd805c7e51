/**
 * Directory transfer: a tar stream unpacked into a sandbox directory, and a sandbox directory
 * packed into one. The archive is parsed by protocol's bounded reader (paths relative, no "..",
 * entry and byte limits); every file goes through the agent's confined writeFile and is audited.
 */
import {
  InvalidArgumentError,
  TransportError,
  readTar,
  tarEnd,
  tarHeader,
  tarPadding,
  treeLimits,
  type TreeOptions,
  type TreeWriteResult,
} from "@mvm/protocol";
import { checkPath, type EngineCore } from "./core.js";
import { listDir, mkdir, readFile, stat, writeFile } from "./files.js";

export async function writeTree(
  core: EngineCore,
  id: string,
  path: string,
  tar: AsyncIterable<Uint8Array>,
  options: TreeOptions = {},
): Promise<TreeWriteResult> {
  const root = checkPath(path);
  const call = options.signal ? { signal: options.signal } : {};
  await mkdir(core, id, root, true, call);
  const result: TreeWriteResult = { files: 0, dirs: 0, bytes: 0, skipped: 0 };
  for await (const { entry, body } of readTar(tar, treeLimits(options))) {
    options.signal?.throwIfAborted();
    const target = root === "/" ? `/${entry.path}` : `${root}/${entry.path}`;
    if (entry.type === "dir") {
      await mkdir(core, id, target, true, call);
      result.dirs += 1;
    } else if (entry.type === "file") {
      const { bytes } = await writeFile(core, id, target, body, { ...call, mode: entry.mode, createParents: true });
      if (bytes !== entry.size) throw new TransportError(`Sandbox "${id}" stored ${bytes} of the ${entry.size} bytes of "${target}"`);
      result.files += 1;
      result.bytes += bytes;
    } else {
      result.skipped += 1;
    }
  }
  return result;
}

export async function readTree(core: EngineCore, id: string, path: string, options: TreeOptions = {}): Promise<AsyncIterable<Uint8Array>> {
  const root = checkPath(path);
  const call = options.signal ? { signal: options.signal } : {};
  const top = await stat(core, id, root, call);
  if (top.type !== "dir") throw new InvalidArgumentError(`Cannot read "${root}" as a tree: not a directory`);
  return packTree(core, id, root, options);
}

/** Walks the tree depth first in name order and yields the archive; the guest's names are checked. */
async function* packTree(core: EngineCore, id: string, root: string, options: TreeOptions): AsyncGenerator<Uint8Array> {
  const { maxEntries, maxBytes } = treeLimits(options);
  const call = options.signal ? { signal: options.signal } : {};
  let entries = 0;
  let bytes = 0;
  const stack: string[] = [""];
  while (stack.length > 0) {
    const rel = stack.pop() as string;
    const dir = rel === "" ? root : root === "/" ? `/${rel}` : `${root}/${rel}`;
    const listing = await listDir(core, id, dir, call);
    if (listing.truncated) throw new InvalidArgumentError(`Cannot pack "${dir}": it holds more entries than one listing returns`);
    const dirs: string[] = [];
    for (const info of listing.entries) {
      options.signal?.throwIfAborted();
      if (info.name === "" || info.name === "." || info.name === ".." || info.name.includes("/") || info.name.includes("\0")) {
        throw new TransportError(`Agent of "${id}" listed an impossible name in "${dir}": ${JSON.stringify(info.name.slice(0, 100))}`);
      }
      if (info.type !== "file" && info.type !== "dir") continue;
      entries += 1;
      if (entries > maxEntries) throw new InvalidArgumentError(`Cannot pack "${root}": more than ${maxEntries} entries`);
      const path = rel === "" ? info.name : `${rel}/${info.name}`;
      const abs = `${dir === "/" ? "" : dir}/${info.name}`;
      if (info.type === "dir") {
        yield tarHeader({ path, type: "dir", mode: info.mode & 0o777, size: 0, mtimeMs: info.mtimeMs });
        dirs.push(path);
        continue;
      }
      const file = await readFile(core, id, abs);
      bytes += file.size;
      if (bytes > maxBytes) {
        await file.body[Symbol.asyncIterator]().return?.();
        throw new InvalidArgumentError(`Cannot pack "${root}": more than ${maxBytes} bytes of files`);
      }
      yield tarHeader({ path, type: "file", mode: info.mode & 0o777, size: file.size, mtimeMs: info.mtimeMs });
      let sent = 0;
      for await (const chunk of file.body) {
        sent += chunk.byteLength;
        if (sent > file.size) throw new TransportError(`File "${abs}" in "${id}" grew past its announced ${file.size} bytes while being packed`);
        yield chunk;
      }
      if (sent !== file.size) throw new TransportError(`File "${abs}" in "${id}" ended after ${sent} of its ${file.size} bytes while being packed`);
      yield tarPadding(file.size);
    }
    stack.push(...dirs.reverse());
  }
  yield tarEnd();
}
