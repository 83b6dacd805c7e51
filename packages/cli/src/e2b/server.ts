/**
 * `mvmctl serve --e2b`: one HTTP endpoint that speaks both halves of what the E2B SDK talks to.
 * A request with an `E2b-Sandbox-Id` header goes to that sandbox's "envd" (health, `/files`, the
 * Connect process and filesystem services), checked against the sandbox's access token; any
 * other request is the control API, checked against the operator's API keys.
 */
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { posix } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { ZodError } from "zod";
import { InvalidArgumentError, MvmError, NotFoundError, parseJsonStrict, type EngineApi } from "@mvm/protocol";
import { accessTokenMatches, apiKeyMatches } from "./apikeys.js";
import type { E2bConfig } from "./config.js";
import { ConnectError, ServerStream, answerUnary, readBody, toConnectError, unwrapEnvelope, parseMessage, CONNECT_STATUS } from "./connect.js";
import { ApiError, ControlApi } from "./control.js";
import { FilesystemService, sandboxPath } from "./envd-fs.js";
import { ProcessService, type EnvdCall } from "./envd-process.js";

/** Largest control API body, in bytes. */
export const MAX_CONTROL_BODY_BYTES = 256 * 1024;
/** Largest Connect request (a unary message or a stream's one envelope), in bytes. */
export const MAX_RPC_BODY_BYTES = 12 * 1024 * 1024;
/** Largest `/files` upload, in bytes. */
export const MAX_UPLOAD_BYTES = 256 * 1024 * 1024;
/** Most requests served at once (streams included). */
export const MAX_CONCURRENT_REQUESTS = 512;


export interface E2bServerOptions {
  engine: EngineApi;
  config: E2bConfig;
  stateDir: string;
  /** The access-token secret (loadTokenSecret). */
  secret: Buffer;
  host: string;
  port: number;
}

type Unary = (call: EnvdCall, msg: unknown) => Promise<unknown>;
type Streaming = (call: EnvdCall, msg: unknown, stream: ServerStream) => Promise<void>;

/** A running server; `close()` stops it and every stream and watcher it serves. */
export interface E2bServer {
  readonly url: string;
  close(): Promise<void>;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return void res.end();
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** The E2B error body for what a handler threw. */
function apiError(err: unknown): { status: number; message: string } {
  if (err instanceof ApiError) return { status: err.status, message: err.message };
  if (err instanceof ConnectError) return { status: err.code === "resource_exhausted" ? 413 : CONNECT_STATUS[err.code], message: err.message };
  if (err instanceof ZodError) return { status: 400, message: `Invalid request: ${err.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ").slice(0, 1000)}` };
  if (err instanceof NotFoundError) return { status: 404, message: err.message };
  if (err instanceof InvalidArgumentError) return { status: 400, message: err.message };
  if (err instanceof MvmError) {
    const c = toConnectError(err);
    return { status: CONNECT_STATUS[c.code], message: err.message };
  }
  return { status: 500, message: "Internal error" };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** The user a request names (HTTP Basic "user:"): only the sandbox's own user exists here. */
function checkUser(req: IncomingMessage, query?: URLSearchParams): void {
  const auth = header(req, "authorization");
  let user = query?.get("username") ?? undefined;
  if (auth !== undefined) {
    const m = /^Basic ([A-Za-z0-9+/=]{1,512})$/.exec(auth);
    if (m === null) throw new ConnectError("unauthenticated", "Malformed Authorization header");
    user = Buffer.from(m[1]!, "base64").toString("utf8").split(":")[0];
  }
  if (user !== undefined && user !== "" && user !== "user") {
    throw new ConnectError("invalid_argument", `User "${user.slice(0, 64)}" is not available: mvm runs every workload as the sandbox's unprivileged user ("user")`);
  }
}

/** A set that forgets its oldest member past `max`. */
class BoundedSet {
  readonly #items = new Set<string>();
  constructor(readonly max: number) {}
  has(item: string): boolean {
    return this.#items.has(item);
  }
  add(item: string): void {
    if (this.#items.has(item)) return;
    if (this.#items.size >= this.max) this.#items.delete(this.#items.values().next().value!);
    this.#items.add(item);
  }
  delete(item: string): void {
    this.#items.delete(item);
  }
}

/** Starts the server; resolves once it listens. */
export async function startE2bServer(options: E2bServerOptions): Promise<E2bServer> {
  const { engine, stateDir, secret } = options;
  const control = new ControlApi(engine, options.config, secret);
  const processes = new ProcessService();
  const filesystem = new FilesystemService();
  const stopping = new AbortController();
  let inFlight = 0;
  const known = new BoundedSet(4096);

  const unary: Record<string, Unary> = {
    "/process.Process/List": (c, m) => processes.list(c, m),
    "/process.Process/SendInput": (c, m) => processes.sendInput(c, m),
    "/process.Process/SendSignal": (c, m) => processes.sendSignal(c, m),
    "/process.Process/CloseStdin": (c, m) => processes.closeStdin(c, m),
    "/process.Process/Update": (c, m) => processes.update(c, m),
    "/filesystem.Filesystem/Stat": (c, m) => filesystem.stat(c, m),
    "/filesystem.Filesystem/ListDir": (c, m) => filesystem.listDir(c, m),
    "/filesystem.Filesystem/MakeDir": (c, m) => filesystem.makeDir(c, m),
    "/filesystem.Filesystem/Move": (c, m) => filesystem.move(c, m),
    "/filesystem.Filesystem/Remove": (c, m) => filesystem.remove(c, m),
    "/filesystem.Filesystem/CreateWatcher": (c, m) => filesystem.createWatcher(c, m),
    "/filesystem.Filesystem/GetWatcherEvents": (c, m) => filesystem.getWatcherEvents(c, m),
    "/filesystem.Filesystem/RemoveWatcher": (c, m) => filesystem.removeWatcher(c, m),
  };
  const streaming: Record<string, Streaming> = {
    "/process.Process/Start": (c, m, s) => processes.start(c, m, s),
    "/process.Process/Connect": (c, m, s) => processes.connect(c, m, s),
    "/filesystem.Filesystem/WatchDir": (c, m, s) => filesystem.watchDir(c, m, s),
  };

  async function handleControl(req: IncomingMessage, res: ServerResponse, url: URL, signal: AbortSignal): Promise<void> {
    if (!(await apiKeyMatches(stateDir, header(req, "x-api-key")))) {
      return sendJson(res, 401, { code: 401, message: "Invalid API key" });
    }
    const path = url.pathname;
    const body = async (): Promise<unknown> => {
      const bytes = await readBody(req, MAX_CONTROL_BODY_BYTES);
      if (bytes.byteLength === 0) return undefined;
      try {
        return parseJsonStrict(bytes.toString("utf8"), { maxDepth: 16 });
      } catch (err) {
        throw new ApiError(400, `Malformed JSON body: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    const m = /^\/(?:v2\/)?sandboxes(?:\/([^/]+))?(?:\/([a-z]+))?$/.exec(path);
    const [, id, action] = m ?? [];
    const method = req.method ?? "GET";
    if (m !== null && id === undefined && action === undefined) {
      if (method === "POST") return sendJson(res, 201, await control.create(await body(), signal));
      if (method === "GET") return sendJson(res, 200, await control.list(url.searchParams, signal));
    } else if (m !== null && id !== undefined) {
      const sid = decodeURIComponent(id);
      if (action === undefined && method === "GET") return sendJson(res, 200, await control.get(sid, signal));
      if (action === undefined && method === "DELETE") {
        await control.kill(sid, signal);
        res.writeHead(204).end();
        return;
      }
      if (action === "timeout" && method === "POST") {
        await control.setTimeout(sid, await body(), signal);
        res.writeHead(204).end();
        return;
      }
      if (action === "connect" && method === "POST") return sendJson(res, 200, await control.connect(sid, await body(), signal));
    }
    return sendJson(res, 501, { code: 501, message: `${method} ${path.slice(0, 200)} is not supported by mvm's E2B API (see docs/E2B.md)` });
  }

  async function handleFiles(req: IncomingMessage, res: ServerResponse, call: EnvdCall, url: URL): Promise<void> {
    const method = req.method ?? "GET";
    checkUser(req, url.searchParams);
    const target = url.searchParams.get("path");
    if (method === "GET") {
      if (target === null) throw new ApiError(400, "The path query parameter is required");
      const file = await call.engine.readFile(call.sandboxId, sandboxPath(target), { signal: call.signal });
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": file.size });
      await pipeline(Readable.from(file.body), res);
      return;
    }
    if (method !== "POST") throw new ApiError(405, `${method} /files is not supported`);
    const type = header(req, "content-type") ?? "";
    if (header(req, "content-encoding") !== undefined) throw new ApiError(400, "Compressed uploads are not supported by mvm's E2B API");
    const written: { path: string; name: string; type: string }[] = [];
    if (type.startsWith("application/octet-stream")) {
      if (target === null) throw new ApiError(400, "The path query parameter is required");
      const dest = sandboxPath(target);
      let seen = 0;
      async function* capped(): AsyncGenerator<Uint8Array> {
        for await (const chunk of req as AsyncIterable<Buffer>) {
          seen += chunk.byteLength;
          if (seen > MAX_UPLOAD_BYTES) throw new ApiError(413, `Upload over ${MAX_UPLOAD_BYTES} bytes`);
          yield chunk;
        }
      }
      await call.engine.writeFile(call.sandboxId, dest, capped(), { signal: call.signal });
      written.push({ path: dest, name: posix.basename(dest), type: "file" });
    } else if (type.startsWith("multipart/form-data")) {
      const bytes = await readBody(req, MAX_UPLOAD_BYTES);
      const form = await new Request("http://upload.invalid/", { method: "POST", headers: { "content-type": type }, body: bytes }).formData().catch(() => {
        throw new ApiError(400, "Malformed multipart body");
      });
      const files = form.getAll("file");
      if (files.length === 0 || files.length > 1000) throw new ApiError(400, "A multipart upload carries 1 to 1000 parts named \"file\"");
      for (const part of files) {
        if (typeof part === "string") throw new ApiError(400, "A \"file\" part must be a file");
        const dest = sandboxPath(target ?? part.name);
        await call.engine.writeFile(call.sandboxId, dest, new Uint8Array(await part.arrayBuffer()), { signal: call.signal });
        written.push({ path: dest, name: posix.basename(dest), type: "file" });
      }
    } else {
      throw new ApiError(400, `Unsupported upload content type "${type.slice(0, 100)}"`);
    }
    sendJson(res, 200, written);
  }

  async function handleEnvd(req: IncomingMessage, res: ServerResponse, url: URL, signal: AbortSignal, sandboxId: string): Promise<void> {
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(sandboxId) || !accessTokenMatches(secret, sandboxId, header(req, "x-access-token"))) {
      return sendJson(res, 401, { code: 401, message: "Invalid access token" });
    }
    // Whether a sandbox was made through this API never changes (its labels are fixed), so it is
    // looked up once; whether it still lives is the engine's answer to each call, and /health's.
    if ((url.pathname === "/health" || !known.has(sandboxId)) && (await control.isOurs(sandboxId, signal)) === undefined) {
      known.delete(sandboxId);
      return sendJson(res, 502, { sandboxId, message: "The sandbox was not found", code: 502 });
    }
    known.add(sandboxId);
    const timeout = Number(header(req, "connect-timeout-ms") ?? "");
    const keepalive = Number(header(req, "keepalive-ping-interval") ?? "");
    const call: EnvdCall = {
      engine,
      sandboxId,
      signal,
      timeoutMs: Number.isSafeInteger(timeout) && timeout > 0 ? timeout : undefined,
      keepaliveSeconds: Number.isSafeInteger(keepalive) && keepalive > 0 ? keepalive : undefined,
    };
    const path = url.pathname;
    if (path === "/health") {
      res.writeHead(204).end();
      return;
    }
    if (path === "/files") {
      try {
        return await handleFiles(req, res, call, url);
      } catch (err) {
        const e = apiError(err);
        return sendJson(res, e.status, { code: e.status, message: e.message });
      }
    }
    const u = unary[path];
    const s = streaming[path];
    if (u === undefined && s === undefined) {
      if (path === "/process.Process/StreamInput") {
        return answerUnary(res, { error: new ConnectError("unimplemented", "StreamInput (client streaming) is not supported by mvm's E2B API: use SendInput") });
      }
      return sendJson(res, 404, { code: 404, message: `${path.slice(0, 200)} is not served by mvm's E2B API` });
    }
    if (req.method !== "POST") return answerUnary(res, { error: new ConnectError("unimplemented", "Connect calls are POSTs") });
    const type = header(req, "content-type") ?? "";
    if (u !== undefined) {
      try {
        if (!type.startsWith("application/json")) throw new ConnectError("invalid_argument", `Only the JSON codec is served, not "${type.slice(0, 64)}"`);
        checkUser(req);
        const msg = parseMessage(await readBody(req, MAX_RPC_BODY_BYTES));
        answerUnary(res, { ok: await u(call, msg) });
      } catch (err) {
        answerUnary(res, { error: err });
      }
      return;
    }
    if (!type.startsWith("application/connect+json")) {
      return answerUnary(res, { error: new ConnectError("invalid_argument", `Only the JSON codec is served, not "${type.slice(0, 64)}"`) });
    }
    let msg: unknown;
    try {
      checkUser(req);
      msg = unwrapEnvelope(await readBody(req, MAX_RPC_BODY_BYTES));
    } catch (err) {
      const stream = new ServerStream(res);
      return stream.end(err);
    }
    const stream = new ServerStream(res);
    try {
      await s!(call, msg, stream);
    } catch (err) {
      stream.end(err);
    }
  }

  const server: Server = createServer((req, res) => {
    if (inFlight >= MAX_CONCURRENT_REQUESTS) return sendJson(res, 429, { code: 429, message: "Too many requests at once" });
    inFlight++;
    const done = new AbortController();
    const onStop = (): void => done.abort();
    stopping.signal.addEventListener("abort", onStop, { once: true });
    res.once("close", () => {
      inFlight--;
      done.abort();
      stopping.signal.removeEventListener("abort", onStop);
    });
    const url = new URL(req.url ?? "/", "http://e2b.invalid");
    const sandboxId = header(req, "e2b-sandbox-id");
    const work = sandboxId === undefined ? handleControl(req, res, url, done.signal) : handleEnvd(req, res, url, done.signal, sandboxId);
    work.catch((err: unknown) => {
      const e = apiError(err);
      if (!res.headersSent) sendJson(res, e.status, { code: e.status, message: e.message });
      else res.destroy();
    });
  });
  // Streams may run long (requestTimeout off); idle connections and slow headers are bounded.
  server.maxConnections = 2 * MAX_CONCURRENT_REQUESTS;
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  server.listen(options.port, options.host);
  await once(server, "listening");
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : options.port;
  const hostPart = options.host.includes(":") ? `[${options.host}]` : options.host;
  return {
    url: `http://${hostPart}:${port}`,
    async close() {
      stopping.abort();
      await filesystem.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
