/** Routes for sandbox files: raw streamed contents both ways, and JSON for the rest. */
import { once } from "node:events";
import type { IncomingMessage } from "node:http";
import {
  InternalError,
  InvalidArgumentError,
  MkdirApiRequest,
  RenameApiRequest,
  SandboxPath,
  type TreeOptions,
  type WriteFileOptions,
} from "@mvm/protocol";
import {
  BodyStalledError,
  bodyChunksWithDeadline,
  booleanParam,
  check,
  readJson,
  requiredParam,
  sendJson,
  sendNoContent,
} from "./http-io.js";
import { sandboxIdParam, type Route, type RouteContext } from "./router.js";

const FILES = "/v1/sandboxes/:id/files";

export const fileRoutes: readonly Route[] = [
  { method: "GET", pattern: `${FILES}/content`, handler: readContent },
  { method: "PUT", pattern: `${FILES}/content`, handler: writeContent },
  {
    method: "GET",
    pattern: `${FILES}/list`,
    handler: async (ctx) => sendJson(ctx.res, 200, await ctx.engine.listDir(sandboxIdParam(ctx), pathParam(ctx), { signal: ctx.signal })),
  },
  {
    method: "GET",
    pattern: `${FILES}/stat`,
    handler: async (ctx) => sendJson(ctx.res, 200, await ctx.engine.stat(sandboxIdParam(ctx), pathParam(ctx), { signal: ctx.signal })),
  },
  {
    method: "POST",
    pattern: `${FILES}/mkdir`,
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, MkdirApiRequest);
      await ctx.engine.mkdir(id, body.path, body.recursive ?? false, { signal: ctx.signal });
      sendNoContent(ctx.res);
    },
  },
  {
    method: "DELETE",
    pattern: FILES,
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const path = pathParam(ctx);
      await ctx.engine.remove(id, path, booleanParam(ctx.query, "recursive", false), { signal: ctx.signal });
      sendNoContent(ctx.res);
    },
  },
  {
    method: "POST",
    pattern: `${FILES}/rename`,
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, RenameApiRequest);
      await ctx.engine.rename(id, body.from, body.to, { signal: ctx.signal });
      sendNoContent(ctx.res);
    },
  },
  { method: "GET", pattern: `${FILES}/tree`, handler: readTree },
  { method: "PUT", pattern: `${FILES}/tree`, handler: writeTree },
];

/** `maxEntries` and `maxBytes` from the query, when given (the engine clamps them to the protocol's maximum). */
function treeOptions(ctx: RouteContext): TreeOptions {
  const options: TreeOptions = { signal: ctx.signal };
  for (const name of ["maxEntries", "maxBytes"] as const) {
    const raw = ctx.query.get(name);
    if (raw === null) continue;
    if (!/^[0-9]{1,16}$/.test(raw)) throw new InvalidArgumentError(`Query parameter "${name}" must be a non-negative integer, not "${raw.slice(0, 32)}"`);
    options[name] = Number(raw);
  }
  return options;
}

/**
 * Streams the directory as a tar body (chunked: its length is not known ahead). A failure midway
 * cuts the connection, so the client sees an archive without its end marker and refuses it.
 */
async function readTree(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const path = pathParam(ctx);
  const tar = await ctx.engine.readTree(id, path, treeOptions(ctx));
  ctx.res.writeHead(200, { "Content-Type": "application/x-tar", "Cache-Control": "no-store" });
  try {
    for await (const chunk of tar) {
      if (ctx.signal.aborted) break;
      if (!ctx.res.write(chunk)) await once(ctx.res, "drain", { signal: ctx.signal });
    }
  } catch {
    ctx.res.destroy();
    return;
  }
  if (ctx.signal.aborted) ctx.res.destroy();
  else ctx.res.end();
}

/** Receives a tar body and unpacks it into the directory; answers the counts. */
async function writeTree(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const path = pathParam(ctx);
  const body = bodyChunks(ctx.req);
  const result = await ctx.engine.writeTree(id, path, body.chunks, treeOptions(ctx)).catch((err: unknown) => {
    throw body.stalled() ?? err;
  });
  sendJson(ctx.res, 200, result);
}

function pathParam(ctx: RouteContext, name = "path"): string {
  return check(SandboxPath, requiredParam(ctx.query, name), `Query parameter "${name}"`);
}

/**
 * Streams the file as the raw body with Content-Length = size. A chunk is pulled from the engine
 * only once the socket has drained the previous one. A body that disagrees with its size, or
 * fails midway, ends the connection without completing the response.
 */
async function readContent(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const path = pathParam(ctx);
  const file = await ctx.engine.readFile(id, path, { signal: ctx.signal });
  ctx.res.writeHead(200, {
    "Content-Type": "application/octet-stream",
    "Content-Length": String(file.size),
    "Cache-Control": "no-store",
  });
  let sent = 0;
  try {
    for await (const chunk of file.body) {
      if (ctx.signal.aborted) break;
      sent += chunk.byteLength;
      if (sent > file.size) throw new InternalError(`File "${path}" yielded more than its size of ${file.size} bytes`);
      if (!ctx.res.write(chunk)) await once(ctx.res, "drain", { signal: ctx.signal });
    }
    if (!ctx.signal.aborted && sent !== file.size) {
      throw new InternalError(`File "${path}" yielded ${sent} bytes, not its size of ${file.size}`);
    }
  } catch {
    // Headers are gone: the only honest signal left is to cut the connection short.
    ctx.res.destroy();
    return;
  }
  ctx.res.end();
}

/** Receives the raw body and hands it to the engine as a stream; answers `{ bytes, receipt }`. */
async function writeContent(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const path = pathParam(ctx);
  const options: WriteFileOptions = {
    signal: ctx.signal,
    createParents: booleanParam(ctx.query, "createParents", true),
  };
  const mode = ctx.query.get("mode");
  if (mode !== null) options.mode = parseMode(mode);
  const body = bodyChunks(ctx.req);
  const result = await ctx.engine.writeFile(id, path, body.chunks, options).catch((err: unknown) => {
    throw body.stalled() ?? err;
  });
  sendJson(ctx.res, 200, result.receipt ? { bytes: result.bytes, receipt: result.receipt } : { bytes: result.bytes });
}

/** Permission bits written in octal, e.g. `644` or `0755`. */
function parseMode(raw: string): number {
  const mode = /^[0-7]{1,4}$/.test(raw) ? parseInt(raw, 8) : Number.NaN;
  if (!(mode >= 0 && mode <= 0o777)) {
    throw new InvalidArgumentError(`Query parameter "mode" must be octal permission bits up to 777, not "${raw.slice(0, 32)}"`);
  }
  return mode;
}

/**
 * The request body as Uint8Array chunks; the socket is read only as fast as the engine pulls. A
 * client that stops sending fails the write with BodyStalledError, which `stalled()` returns.
 */
function bodyChunks(req: IncomingMessage): { chunks: AsyncGenerator<Uint8Array>; stalled(): BodyStalledError | undefined } {
  let stall: BodyStalledError | undefined;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of bodyChunksWithDeadline(req)) yield new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    } catch (err) {
      if (err instanceof BodyStalledError) stall = err;
      throw err;
    }
  }
  return { chunks: chunks(), stalled: () => stall };
}
