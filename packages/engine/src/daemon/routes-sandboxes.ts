/** Routes for health, sandbox lifecycle, exec and processes. */
import { ENGINE_VERSION } from "../engine.js";
import {
  CreateSandboxRequest,
  PlanApiRequest,
  ExecApiRequest,
  MAX_EXEC_REQUEST_JSON_BYTES,
  SignalApiRequest,
  PtySizeApiRequest,
  PauseApiRequest,
  SetTimeoutApiRequest,
  type ExecEvent,
  type ExecStarted,
  type ProgressEvent,
} from "@mvm/protocol";
import { z } from "zod";
import { readJson, readRawBody, sendJson, sendNoContent, booleanParam, wireErrorOf } from "./http-io.js";
import { assertSecretSourcesAllowed } from "./host-read.js";
import { NdjsonWriter, wantsNdjson } from "./ndjson.js";
import { procParam, sandboxIdParam, type Route, type RouteContext } from "./router.js";

/** Body of POST /v1/sandboxes/:id/resume: nothing. */
const EmptyBody = z.strictObject({});

/** Largest stdin write the daemon buffers per request, in bytes. Clients split larger writes. */
export const MAX_STDIN_REQUEST_BYTES = 16 * 1024 * 1024;

/** Largest raw chunk put in one stdout/stderr event; its base64 stays under the 512 KiB schema cap. */
const MAX_EVENT_CHUNK_BYTES = 256 * 1024;

export const sandboxRoutes: readonly Route[] = [
  // That the daemon answers, cheaply: clients check it before their first call (health probes every backend).
  { method: "GET", pattern: "/v1/ping", handler: async (ctx) => sendJson(ctx.res, 200, { version: ENGINE_VERSION }) },
  { method: "GET", pattern: "/v1/health", handler: async (ctx) => sendJson(ctx.res, 200, await ctx.engine.health({ signal: ctx.signal })) },
  { method: "POST", pattern: "/v1/sandboxes", handler: createSandbox },
  {
    method: "POST",
    pattern: "/v1/plans",
    handler: async (ctx) => {
      const body = await readJson(ctx.req, PlanApiRequest);
      const options = { signal: ctx.signal, ...(body.validForSeconds !== undefined ? { validForSeconds: body.validForSeconds } : {}) };
      sendJson(ctx.res, 200, await ctx.engine.planSandbox(body.request, options));
    },
  },
  {
    method: "GET",
    pattern: "/v1/sandboxes",
    handler: async (ctx) => sendJson(ctx.res, 200, { sandboxes: await ctx.engine.listSandboxes({ signal: ctx.signal }) }),
  },
  {
    method: "GET",
    pattern: "/v1/sandboxes/:id",
    handler: async (ctx) => sendJson(ctx.res, 200, await ctx.engine.getSandbox(sandboxIdParam(ctx), { signal: ctx.signal })),
  },
  {
    method: "DELETE",
    pattern: "/v1/sandboxes/:id",
    handler: async (ctx) => sendJson(ctx.res, 200, await ctx.engine.killSandbox(sandboxIdParam(ctx), { signal: ctx.signal })),
  },
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/pause",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, PauseApiRequest);
      sendJson(ctx.res, 200, await ctx.engine.pauseSandbox(id, body, { signal: ctx.signal }));
    },
  },
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/resume",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      await readJson(ctx.req, EmptyBody);
      sendJson(ctx.res, 200, await ctx.engine.resumeSandbox(id, { signal: ctx.signal }));
    },
  },
  {
    method: "POST",
    pattern: "/v1/sandboxes/:id/timeout",
    handler: async (ctx) => {
      const id = sandboxIdParam(ctx);
      const body = await readJson(ctx.req, SetTimeoutApiRequest);
      sendJson(ctx.res, 200, await ctx.engine.setSandboxTimeout(id, body.ttlSeconds, { signal: ctx.signal }));
    },
  },
  { method: "POST", pattern: "/v1/sandboxes/:id/exec", handler: exec },
  {
    method: "GET",
    pattern: "/v1/sandboxes/:id/processes",
    handler: async (ctx) =>
      sendJson(ctx.res, 200, { processes: await ctx.engine.listProcesses(sandboxIdParam(ctx), { signal: ctx.signal }) }),
  },
  { method: "POST", pattern: "/v1/sandboxes/:id/processes/:proc/signal", handler: signalProcess },
  { method: "POST", pattern: "/v1/sandboxes/:id/processes/:proc/stdin", handler: writeStdin },
  { method: "POST", pattern: "/v1/sandboxes/:id/processes/:proc/resize", handler: resizePty },
  { method: "POST", pattern: "/v1/sandboxes/:id/processes/:proc/connect", handler: connectProcess },
];

async function createSandbox(ctx: RouteContext): Promise<void> {
  const request = await readJson(ctx.req, CreateSandboxRequest);
  assertSecretSourcesAllowed(request, ctx.peer, ctx.peerPrivileged);
  if (!wantsNdjson(ctx.req.headers.accept)) {
    sendJson(ctx.res, 201, await ctx.engine.createSandbox(request, { signal: ctx.signal }));
    return;
  }
  const out = new NdjsonWriter(ctx.res);
  out.start();
  try {
    const onProgress = (event: ProgressEvent): void => out.line({ type: "progress", event });
    const sandbox = await ctx.engine.createSandbox(request, { signal: ctx.signal, onProgress });
    out.line({ type: "result", sandbox });
  } catch (err) {
    out.line({ type: "error", error: wireErrorOf(err) });
  }
  out.end();
}

/**
 * Streams an exec as NDJSON: `started`, then `stdout`/`stderr` (base64), then `exit` or `error`.
 * A client that leaves before `exit` takes a non-background process with it (SIGKILL).
 */
async function exec(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const request = await readJson(ctx.req, ExecApiRequest, MAX_EXEC_REQUEST_JSON_BYTES);
  const background = request.background === true;

  // The engine sees an abort on disconnect: always before the start, and after it only when the
  // process must not outlive the stream.
  const engineAbort = new AbortController();
  let started: ExecStarted | undefined;
  const onGone = (): void => {
    if (started === undefined || !background) engineAbort.abort(ctx.signal.reason);
  };
  if (ctx.signal.aborted) onGone();
  else ctx.signal.addEventListener("abort", onGone, { once: true });

  const out = new NdjsonWriter(ctx.res);
  // Output waits for the `started` line, then for the client to read: the engine takes the next
  // chunk (and the agent gets credit) only once this one is on its way, so nothing piles up here.
  const { open, forward } = outputForwarder(out);

  try {
    started = await ctx.engine.exec(id, request, { onStdout: forward("stdout"), onStderr: forward("stderr") }, {
      signal: engineAbort.signal,
    });
  } finally {
    if (started === undefined) {
      ctx.signal.removeEventListener("abort", onGone);
      open(false);
    }
  }
  const { proc, pid, exit } = started;
  exit.catch(() => {});
  // The headers go out with the `started` line, and the last line with the end: two writes for a
  // command that prints nothing.
  out.start(200, false);
  out.line({ type: "started", proc, pid });
  open(true);

  // Once the client is gone the handler stops waiting: a background process runs on, any other
  // gets SIGKILL (the process may have ended meanwhile; then there is nothing to kill).
  let ended = false;
  let leave!: () => void;
  const gone = new Promise<"gone">((resolve) => (leave = () => resolve("gone")));
  const onDisconnect = (): void => {
    if (!ended && !background) ctx.engine.signalProcess(id, proc, "SIGKILL").catch(() => {});
    leave();
  };
  if (ctx.signal.aborted) onDisconnect();
  else ctx.signal.addEventListener("abort", onDisconnect, { once: true });
  let last: ExecEvent | undefined;
  try {
    const outcome = await Promise.race([exit, gone]);
    ended = true;
    if (outcome !== "gone") last = { type: "exit", exit: outcome };
  } catch (err) {
    ended = true;
    const wire = wireErrorOf(err);
    last = { type: "error", error: { code: wire.code, message: wire.message } };
  } finally {
    ctx.signal.removeEventListener("abort", onDisconnect);
    ctx.signal.removeEventListener("abort", onGone);
  }
  out.end(last);
}

async function signalProcess(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const proc = procParam(ctx);
  const { signal } = await readJson(ctx.req, SignalApiRequest);
  await ctx.engine.signalProcess(id, proc, signal, { signal: ctx.signal });
  sendNoContent(ctx.res);
}

/**
 * Output events of one process stream: `forward(type)` sends each chunk as base64 `stdout`/`stderr`
 * events (pieces of at most MAX_EVENT_CHUNK_BYTES) once `open(true)` is called after the `started`
 * line, each awaiting the client's read; after `open(false)` chunks are dropped.
 */
function outputForwarder(out: NdjsonWriter): { open: (streaming: boolean) => void; forward: (type: "stdout" | "stderr") => (chunk: Uint8Array) => Promise<void> } {
  let open!: (streaming: boolean) => void;
  const opened = new Promise<boolean>((resolve) => (open = resolve));
  const forward = (type: "stdout" | "stderr") => async (chunk: Uint8Array): Promise<void> => {
    if (!(await opened)) return;
    for (let at = 0; at < chunk.byteLength; at += MAX_EVENT_CHUNK_BYTES) {
      const piece = chunk.subarray(at, at + MAX_EVENT_CHUNK_BYTES);
      await out.send({ type, data: Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength).toString("base64") } satisfies ExecEvent);
    }
  };
  return { open, forward };
}

/**
 * Attaches to a running process and streams it as NDJSON, like exec: `started`, then the
 * backlog and live output as `stdout`/`stderr` (base64), then `exit` or `error`. A client that
 * leaves only detaches: the process runs on.
 */
async function connectProcess(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const proc = procParam(ctx);
  const out = new NdjsonWriter(ctx.res);
  const { open, forward } = outputForwarder(out);
  let started: ExecStarted;
  try {
    started = await ctx.engine.connectProcess(id, proc, { onStdout: forward("stdout"), onStderr: forward("stderr") }, { signal: ctx.signal });
  } catch (err) {
    open(false);
    throw err;
  }
  out.start(200, false);
  out.line({ type: "started", proc: started.proc, pid: started.pid });
  open(true);
  let last: ExecEvent | undefined;
  try {
    last = { type: "exit", exit: await started.exit };
  } catch (err) {
    const wire = wireErrorOf(err);
    last = { type: "error", error: { code: wire.code, message: wire.message } };
  }
  out.end(last);
}

/** Sets the window size of the process's terminal. */
async function resizePty(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const proc = procParam(ctx);
  const size = await readJson(ctx.req, PtySizeApiRequest);
  await ctx.engine.resizePty(id, proc, size, { signal: ctx.signal });
  sendNoContent(ctx.res);
}

/** Writes the raw body to the process's stdin; `?close=1` closes stdin afterwards. */
async function writeStdin(ctx: RouteContext): Promise<void> {
  const id = sandboxIdParam(ctx);
  const proc = procParam(ctx);
  const close = booleanParam(ctx.query, "close", false);
  const data = await readRawBody(ctx.req, MAX_STDIN_REQUEST_BYTES);
  if (data.byteLength > 0) await ctx.engine.writeStdin(id, proc, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), { signal: ctx.signal });
  if (close) await ctx.engine.writeStdin(id, proc, null, { signal: ctx.signal });
  sendNoContent(ctx.res);
}
