/**
 * `mvmctl cp SRC DST`: copy one file into or out of a sandbox, streamed in both directions so
 * memory stays bounded whatever the file's size. `-` on the local side means stdin or stdout.
 * `-r` copies a directory as one tar stream, unpacked path-safely on the receiving side.
 */
import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  InvalidArgumentError,
  MvmError,
  NotFoundError,
  PermissionDeniedError,
  SandboxIdSchema,
  TransportError,
  isSandboxPath,
  type EngineApi,
} from "@mvm/protocol";
import { extractTarToDir, packLocalDir } from "@mvm/sdk";
import { defineCommand, type CommandContext } from "../command.js";
import { booleanFlag } from "../flags.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

export type CpEndpoint = { kind: "sandbox"; sandboxId: string; path: string } | { kind: "local"; path: string };
export interface CpOptions {
  from: CpEndpoint;
  to: CpEndpoint;
  recursive: boolean;
}
/** `cp --json` output; `files`, `dirs` and `skipped` only with `-r`. */
export interface CpJsonResult {
  from: string;
  to: string;
  bytes: number;
  files?: number;
  dirs?: number;
  skipped?: number;
}

const REMOTE = /^(sbx_[a-z2-7]{20}):(.*)$/s;

/** Reads `sbx_…:/path` as a sandbox endpoint and anything else as a local path. */
export function parseEndpoint(arg: string): CpEndpoint {
  const m = REMOTE.exec(arg);
  if (m === null) {
    if (arg === "") throw new UsageError("Empty path for mvmctl cp");
    return { kind: "local", path: arg };
  }
  const [, sandboxId = "", path = ""] = m;
  if (!SandboxIdSchema.safeParse(sandboxId).success || !isSandboxPath(path)) {
    throw new UsageError(`Invalid sandbox path "${arg}": expected ID:/absolute/path without '.' or '..' segments`);
  }
  return { kind: "sandbox", sandboxId, path };
}

function describe(e: CpEndpoint): string {
  return e.kind === "sandbox" ? `${e.sandboxId}:${e.path}` : e.path;
}

/** A local file-system failure as a typed error naming the path. */
function localError(err: unknown, path: string, action: string): MvmError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = `Cannot ${action} "${path}": ${err instanceof Error ? err.message : String(err)}`;
  if (code === "ENOENT") return new NotFoundError(message, { cause: err });
  if (code === "EACCES" || code === "EPERM") return new PermissionDeniedError(message, { cause: err });
  return new InvalidArgumentError(message, { cause: err });
}

/** Counts bytes passing through, failing when they exceed `limit`. */
function byteCounter(limit: number, source: string): Transform & { bytes: number } {
  const t = new Transform({
    transform(chunk: Buffer, _enc, done) {
      t.bytes += chunk.byteLength;
      if (t.bytes > limit) done(new TransportError(`"${source}" sent more than the ${limit} bytes it announced`));
      else done(null, chunk);
    },
  }) as Transform & { bytes: number };
  t.bytes = 0;
  return t;
}

function checkComplete(received: number, announced: number, source: string): void {
  if (received !== announced) throw new TransportError(`"${source}" ended after ${received} of the ${announced} bytes it announced`);
}

async function download(ctx: CommandContext, engine: EngineApi, from: { sandboxId: string; path: string }, to: string): Promise<number> {
  const source = `${from.sandboxId}:${from.path}`;
  const file = await engine.readFile(from.sandboxId, from.path, { signal: ctx.signal });
  const counter = byteCounter(file.size, source);
  if (to === "-") {
    await pipeline(Readable.from(file.body, { objectMode: false }), counter, async function* (chunks: AsyncIterable<Buffer>) {
      for await (const chunk of chunks) ctx.io.stdout.write(chunk);
    }, { signal: ctx.signal });
  } else {
    let target = to;
    try {
      if ((await stat(to)).isDirectory()) target = join(to, basename(from.path));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw localError(err, to, "inspect");
    }
    // Written beside the target and renamed over it, so a failed copy leaves no partial file.
    const temp = join(dirname(target), `.${basename(target)}.mvmctl-${randomBytes(6).toString("hex")}.tmp`);
    try {
      await pipeline(Readable.from(file.body, { objectMode: false }), counter, createWriteStream(temp, { flags: "wx" }), { signal: ctx.signal });
      checkComplete(counter.bytes, file.size, source);
      await rename(temp, target);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      if (err instanceof MvmError) throw err;
      throw localError(err, target, "write");
    }
  }
  checkComplete(counter.bytes, file.size, source);
  return counter.bytes;
}

async function upload(ctx: CommandContext, engine: EngineApi, from: string, to: { sandboxId: string; path: string }): Promise<number> {
  let mode: number | undefined;
  let input: AsyncIterable<Uint8Array | string>;
  if (from === "-") {
    input = ctx.io.stdin;
  } else {
    try {
      const st = await stat(from);
      if (!st.isFile()) throw new InvalidArgumentError(`Cannot copy "${from}": not a regular file`, { hint: "mvmctl cp copies one file at a time" });
      mode = st.mode & 0o777;
    } catch (err) {
      if (err instanceof MvmError) throw err;
      throw localError(err, from, "read");
    }
    input = createReadStream(from);
  }
  let path = to.path;
  try {
    const info = await engine.stat(to.sandboxId, to.path, { signal: ctx.signal });
    if (info.type === "dir") path = to.path === "/" ? `/${basename(from)}` : `${to.path}/${basename(from)}`;
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
  if (from === "-" && path !== to.path) throw new InvalidArgumentError(`Cannot copy stdin to "${to.path}": it is a directory`, { hint: "Name the file to write" });
  let sent = 0;
  async function* counted(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of input) {
        const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
        sent += bytes.byteLength;
        yield bytes;
      }
    } catch (err) {
      throw localError(err, from, "read");
    }
  }
  const result = await engine.writeFile(to.sandboxId, path, counted(), { signal: ctx.signal, ...(mode === undefined ? {} : { mode }) });
  if (result.bytes !== sent) {
    throw new TransportError(`Sandbox "${to.sandboxId}" stored ${result.bytes} bytes of the ${sent} sent to "${path}"`);
  }
  return sent;
}

/**
 * `cp -r`: the source directory's contents land in DST (made when missing), like `cp -r SRC/. DST`.
 */
async function copyTree(ctx: CommandContext, engine: EngineApi, from: CpEndpoint, to: CpEndpoint): Promise<Omit<CpJsonResult, "from" | "to">> {
  const call = { signal: ctx.signal };
  if (from.kind === "local" && to.kind === "sandbox") {
    if (from.path === "-") throw new UsageError('"-" cannot be copied with -r', { hint: "Name a directory" });
    try {
      if (!(await stat(from.path)).isDirectory()) throw new InvalidArgumentError(`Cannot copy "${from.path}" with -r: not a directory`);
    } catch (err) {
      if (err instanceof MvmError) throw err;
      throw localError(err, from.path, "read");
    }
    const packed = packLocalDir(from.path, call);
    const written = await engine.writeTree(to.sandboxId, to.path, packed.tar, call);
    return { ...written, skipped: written.skipped + packed.tally.skipped };
  }
  if (from.kind === "sandbox" && to.kind === "local") {
    if (to.path === "-") throw new UsageError('"-" cannot receive a directory', { hint: "Name a local directory" });
    const tar = await engine.readTree(from.sandboxId, from.path, call);
    try {
      return await extractTarToDir(tar, to.path, call);
    } catch (err) {
      if (err instanceof MvmError) throw err;
      throw localError(err, to.path, "write");
    }
  }
  throw new UsageError("One side of mvmctl cp must be in a sandbox");
}

export const cpCommand = defineCommand<CpOptions>({
  name: "cp",
  summary: "Copy a file or directory into or out of a sandbox",
  usage: "SRC DST",
  details:
    'Exactly one of SRC and DST is "ID:/path" in a sandbox. "-" as the local side means stdin or\n' +
    "stdout. A directory as DST receives the file under its own name. With --json\n" +
    "{from, to, bytes} is printed. With -r SRC is a directory whose contents are copied into DST\n" +
    "(made when missing), carried as one tar stream; symlinks and special files are skipped.",
  flags: { recursive: { type: "boolean", short: "r", description: "Copy a directory and everything under it" } },
  positionals: { min: 2, max: 2 },
  connection: "daemon",
  parse(raw) {
    const from = parseEndpoint(raw.positionals[0] ?? "");
    const to = parseEndpoint(raw.positionals[1] ?? "");
    if (from.kind === to.kind) {
      throw new UsageError(
        from.kind === "local" ? "Neither side of mvmctl cp is in a sandbox" : "Both sides of mvmctl cp are in sandboxes",
        { hint: 'Write the sandbox side as ID:/path, e.g. "mvmctl cp ./in.txt sbx_…:/work/in.txt"' },
      );
    }
    return { from, to, recursive: booleanFlag(raw, "recursive") };
  },
  async run(ctx, { from, to, recursive }) {
    if (ctx.global.json && to.kind === "local" && to.path === "-") {
      throw new UsageError('Options "--json" and "-" as DST exclude each other: both write stdout', { hint: "Name a destination file" });
    }
    return withEngine(ctx, async (engine) => {
      if (recursive) {
        const tally = await copyTree(ctx, engine, from, to);
        ctx.out.jsonResult({ from: describe(from), to: describe(to), ...tally } satisfies CpJsonResult);
        return 0;
      }
      const bytes =
        from.kind === "sandbox" && to.kind === "local"
          ? await download(ctx, engine, from, to.path)
          : from.kind === "local" && to.kind === "sandbox"
            ? await upload(ctx, engine, from.path, to)
            : 0;
      const json: CpJsonResult = { from: describe(from), to: describe(to), bytes };
      ctx.out.jsonResult(json);
      return 0;
    });
  },
});
