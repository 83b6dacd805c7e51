/**
 * Sources of an image tree: a tar archive (plain or gzip) or a host directory. Both only
 * read; every write goes through {@link TreeWriter}, which enforces the path and mode rules.
 */
import { constants as fsc, createReadStream } from "node:fs";
import { lstat, open, readdir, readlink, stat } from "node:fs/promises";
import { join } from "node:path";
import type { ReadEntry } from "tar";
import { AbortedError, InvalidArgumentError } from "@mvm/protocol";
import { quote } from "./ref.js";
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX, type TreeWriter } from "./tree-writer.js";

export interface SourceOptions {
  signal?: AbortSignal;
  /**
   * Treat the archive as an OCI image layer: `.wh.NAME` entries remove NAME from lower layers and
   * `.wh..wh..opq` empties its directory of lower layers' entries; neither is written.
   * @default false
   */
  layer?: boolean;
  /** Called as the source is read: bytes consumed so far and the source's total (tar only). */
  onBytes?: (readBytes: number, totalBytes: number) => void;
}

/** Largest pax or GNU long-name header accepted. */
const MAX_META_ENTRY_BYTES = 1024 * 1024;
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Streams the archive at `tarPath` into `writer`, one entry at a time.
 * @throws InvalidArgumentError for a malformed archive or an entry the writer refuses.
 */
export async function extractTar(tarPath: string, writer: TreeWriter, options: SourceOptions = {}): Promise<void> {
  const st = await stat(tarPath);
  if (!st.isFile()) throw new InvalidArgumentError(`Cannot import ${quote(tarPath)}: not a regular file`);
  const input = createReadStream(tarPath, { highWaterMark: 256 * 1024 });
  try {
    await extractTarStream(input, st.size, quote(tarPath), writer, options);
  } finally {
    input.destroy();
  }
}

/**
 * Streams a tar archive (plain or gzip, as `tar` detects) from `input` into `writer`, one entry
 * at a time. `totalBytes` is only for progress (0 when unknown); `what` names the source in errors.
 * The caller owns `input` and destroys it.
 * @throws InvalidArgumentError for a malformed archive or an entry the writer refuses.
 */
export async function extractTarStream(
  input: AsyncIterable<Buffer>,
  totalBytes: number,
  what: string,
  writer: TreeWriter,
  options: SourceOptions = {},
): Promise<void> {
  const { signal, onBytes } = options;
  const layer = options.layer === true;
  // Loaded on first use: only image imports read tar archives.
  const { Parser } = await import("tar");
  const parser = new Parser({ strict: true, maxMetaEntrySize: MAX_META_ENTRY_BYTES });
  const queue: ReadEntry[] = [];
  let failure: unknown;
  let ended = false;
  let drained = true;
  let waiters: (() => void)[] = [];
  const notify = (): void => {
    const pending = waiters;
    waiters = [];
    for (const wake of pending) wake();
  };
  const changed = (): Promise<void> => new Promise((resolve) => waiters.push(resolve));
  const fail = (err: unknown): void => {
    failure ??= err;
    notify();
  };
  const onAbort = (): void => fail(new AbortedError("Image import aborted", { cause: signal?.reason }));

  parser.on("entry", (entry: ReadEntry) => {
    queue.push(entry);
    notify();
  });
  parser.on("ignoredEntry", (entry: ReadEntry) => {
    fail(new InvalidArgumentError(`Cannot import entry ${quote(entry.path)}: unsupported tar entry type ${quote(String(entry.type))}`));
  });
  parser.on("error", (err: unknown) => {
    fail(new InvalidArgumentError(`Cannot import ${what}: not a readable tar archive: ${errorText(err)}`, { cause: err }));
  });
  parser.on("drain", () => {
    drained = true;
    notify();
  });
  parser.on("end", () => {
    ended = true;
    notify();
  });
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();

  const feed = async (): Promise<void> => {
    let readBytes = 0;
    try {
      for await (const chunk of input) {
        if (failure !== undefined) return;
        readBytes += chunk.length;
        onBytes?.(readBytes, totalBytes);
        drained = false;
        if (parser.write(chunk)) drained = true;
        while (!drained && failure === undefined) await changed();
      }
      if (failure === undefined) parser.end();
    } catch (err) {
      fail(err);
    }
  };

  const work = async (): Promise<void> => {
    for (;;) {
      if (failure !== undefined) throw failure;
      const entry = queue.shift();
      if (entry === undefined) {
        if (ended) return;
        await changed();
        continue;
      }
      try {
        await writeEntry(entry, writer, layer);
      } catch (err) {
        fail(err);
      }
    }
  };

  try {
    await Promise.all([feed(), work()]);
  } finally {
    signal?.removeEventListener("abort", onAbort);
    parser.removeAllListeners();
    parser.on("error", () => undefined);
  }
}

async function writeEntry(entry: ReadEntry, writer: TreeWriter, layer: boolean): Promise<void> {
  if (layer) {
    const base = entry.path.replace(/\/+$/, "").split("/").at(-1) ?? "";
    if (base.startsWith(WHITEOUT_PREFIX)) {
      if (entry.type === "Directory" || entry.type === "GNUDumpDir") {
        throw new InvalidArgumentError(`Cannot import entry ${quote(entry.path)}: a whiteout must not be a directory`);
      }
      await (base === WHITEOUT_OPAQUE ? writer.opaque(entry.path) : writer.whiteout(entry.path));
      entry.resume();
      return;
    }
  }
  const mtime = entry.mtime instanceof Date && Number.isFinite(entry.mtime.getTime()) ? entry.mtime : undefined;
  switch (entry.type) {
    case "File":
    case "OldFile":
    case "ContiguousFile":
      await writer.file(entry.path, entry.mode ?? 0o644, entry as AsyncIterable<Buffer>, entry.size ?? 0, mtime);
      return;
    case "Directory":
    case "GNUDumpDir":
      await writer.directory(entry.path, entry.mode ?? 0o755, mtime);
      break;
    case "SymbolicLink":
      await writer.symlink(entry.path, entry.linkpath ?? "", mtime);
      break;
    case "Link":
      await writer.hardlink(entry.path, entry.linkpath ?? "");
      break;
    case "CharacterDevice":
    case "BlockDevice":
    case "FIFO":
      writer.drop(entry.path);
      break;
    default:
      throw new InvalidArgumentError(`Cannot import entry ${quote(entry.path)}: unsupported tar entry type ${quote(String(entry.type))}`);
  }
  entry.resume(); // lets the parser move past this entry (and any body it carries)
}

/**
 * Copies the host directory `srcDir` into `writer` without following symlinks below it. Files
 * hard-linked together in the source stay linked. Special files are dropped.
 * @throws InvalidArgumentError when `srcDir` is not a directory or a name is not UTF-8.
 */
export async function copyDir(srcDir: string, writer: TreeWriter, options: SourceOptions = {}): Promise<void> {
  const top = await stat(srcDir);
  if (!top.isDirectory()) throw new InvalidArgumentError(`Cannot import ${quote(srcDir)}: not a directory`);
  const linked = new Map<string, string>();
  const stack: string[] = [""];
  let readBytes = 0;
  while (stack.length > 0) {
    const rel = stack.pop() as string;
    const names = (await readdir(rel === "" ? srcDir : join(srcDir, rel), { encoding: "buffer" })).sort(Buffer.compare);
    const dirsHere: string[] = [];
    for (const raw of names) {
      if (options.signal?.aborted) throw new AbortedError("Image import aborted", { cause: options.signal.reason });
      let name: string;
      try {
        name = utf8.decode(raw);
      } catch (cause) {
        throw new InvalidArgumentError(`Cannot import ${quote(srcDir)}: a name in ${quote(rel || ".")} is not UTF-8`, { cause });
      }
      const path = rel === "" ? name : `${rel}/${name}`;
      const abs = join(srcDir, path);
      const st = await lstat(abs);
      if (st.isDirectory()) {
        await writer.directory(path, st.mode, st.mtime);
        dirsHere.push(path);
      } else if (st.isSymbolicLink()) {
        await writer.symlink(path, await readlink(abs), st.mtime);
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? linked.get(key) : undefined;
        if (first !== undefined) {
          await writer.hardlink(path, first);
          continue;
        }
        if (st.nlink > 1) linked.set(key, path);
        await copyFile(abs, path, st.ino, st.mode, st.mtime, writer);
        readBytes += st.size;
        options.onBytes?.(readBytes, 0);
      } else {
        writer.drop(path);
      }
    }
    stack.push(...dirsHere.reverse()); // popped in name order
  }
}

async function copyFile(abs: string, path: string, ino: number, mode: number, mtime: Date, writer: TreeWriter): Promise<void> {
  const handle = await open(abs, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.ino !== ino) {
      throw new InvalidArgumentError(`Cannot import ${quote(abs)}: the file changed while it was read`);
    }
    async function* chunks(): AsyncGenerator<Uint8Array> {
      const buf = Buffer.allocUnsafe(256 * 1024);
      for (;;) {
        const { bytesRead } = await handle.read(buf, 0, buf.length, null);
        if (bytesRead === 0) return;
        yield Buffer.from(buf.subarray(0, bytesRead));
      }
    }
    await writer.file(path, mode, chunks(), st.size, mtime);
  } finally {
    await handle.close();
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
