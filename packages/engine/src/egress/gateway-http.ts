/**
 * The gateway's HTTP/1.1 proxy front: Node's own parser (an `http.Server` that never listens, fed
 * one stream at a time) for CONNECT and absolute-form requests, and the plain-HTTP forwarder.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { connectTo, connectFailure, deniedBody, endThenDestroy, oneLine, rawResponse } from "./gateway-io.js";
import { emitDenied, type Flow } from "./gateway-flow.js";
import type { Decision } from "./gateway-decide.js";
import type { EgressSandbox } from "./gateway.js";

/** Largest request head the parser accepts, in bytes. */
export const MAX_PROXY_HEADER_BYTES = 16 * 1024;
/** Longest CONNECT authority or request URL accepted, in characters. */
const MAX_TARGET_CHARS = 2048;

/** Request and response headers never forwarded: hop-by-hop, proxy-only, and Host (rebuilt). */
const DROPPED_HEADERS = new Set(["connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade", "host"]);

/**
 * Splits a CONNECT authority (`host:port` or `[v6]:port`); undefined when malformed. Never throws.
 * @example parseAuthority("[::1]:443") // { host: "::1", port: 443 }
 */
export function parseAuthority(text: string): { host: string; port: number } | undefined {
  if (text.length > MAX_TARGET_CHARS) return undefined;
  const match = /^\[([0-9A-Fa-f:.]{2,45})\]:([0-9]{1,5})$/.exec(text) ?? /^([A-Za-z0-9._-]{1,253}):([0-9]{1,5})$/.exec(text);
  if (match === null) return undefined;
  const port = Number(match[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: match[1] ?? "", port };
}

/** An absolute-form `http://` request target; undefined for anything else. Never throws. */
export function parseAbsoluteUrl(text: string): { host: string; port: number; authority: string; path: string } | undefined {
  if (text.length > MAX_TARGET_CHARS || !/^http:\/\//i.test(text)) return undefined;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  if (url.protocol !== "http:" || url.hostname === "" || url.username !== "" || url.password !== "") return undefined;
  const port = url.port === "" ? 80 : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host: url.hostname, port, authority: url.host, path: `${url.pathname}${url.search}` };
}

/** Header pairs from raw headers, minus the dropped ones and any named by `Connection`. */
export function forwardedHeaders(raw: readonly string[]): [string, string][] {
  const named = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() === "connection") for (const token of (raw[i + 1] ?? "").split(",")) named.add(token.trim().toLowerCase());
  }
  const out: [string, string][] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? "";
    const lower = name.toLowerCase();
    if (DROPPED_HEADERS.has(lower) || lower.startsWith("proxy-") || named.has(lower)) continue;
    out.push([name, raw[i + 1] ?? ""]);
  }
  return out;
}

export interface HttpFrontHandlers {
  connect(stream: Duplex, sandbox: EgressSandbox, host: string, port: number, head: Buffer): void;
  request(req: IncomingMessage, res: ServerResponse, sandbox: EgressSandbox): void;
}

/** Feeds client streams to one non-listening `http.Server` and routes what it parses. */
export class HttpFront {
  readonly #server: Server;
  readonly #sandboxOf = new WeakMap<Duplex, EgressSandbox>();
  readonly #deadlines = new WeakMap<Duplex, NodeJS.Timeout>();

  constructor(handlers: HttpFrontHandlers, private readonly headersTimeoutMs: number) {
    this.#server = createServer({ maxHeaderSize: MAX_PROXY_HEADER_BYTES, headersTimeout: headersTimeoutMs, requestTimeout: 0 });
    this.#server.on("connect", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const sandbox = this.#routed(socket);
      const target = parseAuthority(req.url ?? "");
      if (sandbox === undefined || target === undefined) {
        endThenDestroy(socket, rawResponse(400, `mvm egress: bad request: CONNECT needs host:port, got ${JSON.stringify(oneLine((req.url ?? "").slice(0, 200)))}\n`, false));
        return;
      }
      handlers.connect(socket, sandbox, target.host, target.port, head);
    });
    this.#server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      const sandbox = this.#routed(req.socket);
      if (sandbox === undefined) {
        res.destroy();
        return;
      }
      handlers.request(req, res, sandbox);
    });
    this.#server.on("upgrade", (_req: IncomingMessage, socket: Duplex) => {
      endThenDestroy(socket, rawResponse(400, "mvm egress: bad request: protocol upgrades are not supported\n", false));
    });
    this.#server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
      const status = err.code === "HPE_HEADER_OVERFLOW" ? 431 : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
      if (socket.writable) socket.end(`HTTP/1.1 ${status} ${status === 431 ? "Request Header Fields Too Large" : status === 408 ? "Request Timeout" : "Bad Request"}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
      socket.destroy();
    });
  }

  /** Hands `stream` (its first bytes unshifted back) to the parser, with a deadline for the first request head. */
  accept(stream: Duplex, sandbox: EgressSandbox): void {
    this.#sandboxOf.set(stream, sandbox);
    const timer = setTimeout(() => stream.destroy(), this.headersTimeoutMs);
    this.#deadlines.set(stream, timer);
    stream.once("close", () => clearTimeout(timer));
    this.#server.emit("connection", stream);
  }

  /** The sandbox a parsed stream belongs to; the first parsed head clears the stream's deadline. */
  #routed(stream: Duplex): EgressSandbox | undefined {
    const timer = this.#deadlines.get(stream);
    if (timer !== undefined) clearTimeout(timer);
    return this.#sandboxOf.get(stream);
  }

  close(): void {
    this.#server.close();
  }
}

export interface ForwardDeps {
  readonly connectTimeoutMs: number;
  decide(sandbox: EgressSandbox, host: string, port: number, signal: AbortSignal): Promise<Decision>;
  /** Tracks an allowed request as a flow; undefined when the gateway is closing. */
  open(sandbox: EgressSandbox, decision: Extract<Decision, { allowed: true }>): Flow | undefined;
}

function reply(res: ServerResponse, status: number, body: string, denied: boolean): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body), ...(denied ? { "x-mvm-egress": "denied" } : {}) });
  res.end(body);
}

/** Decides, then forwards one absolute-form request to the checked address; one event per request. */
export async function forwardRequest(req: IncomingMessage, res: ServerResponse, sandbox: EgressSandbox, deps: ForwardDeps): Promise<void> {
  const target = parseAbsoluteUrl(req.url ?? "");
  if (target === undefined) {
    req.resume();
    reply(res, 400, "mvm egress: bad request: expected an absolute http:// URL or CONNECT\n", false);
    return;
  }
  const gone = new AbortController();
  const onGone = (): void => gone.abort();
  res.once("close", onGone);
  try {
    const decision = await deps.decide(sandbox, target.host, target.port, gone.signal);
    if (!decision.allowed) {
      emitDenied(sandbox, "http-proxy", decision);
      req.resume();
      reply(res, decision.httpStatus, deniedBody(decision.reason), true);
      return;
    }
    const flow = deps.open(sandbox, decision);
    if (flow === undefined) {
      res.destroy();
      return;
    }
    await relay(req, res, target, flow, deps.connectTimeoutMs, gone.signal);
  } finally {
    res.off("close", onGone);
  }
}

async function relay(req: IncomingMessage, res: ServerResponse, target: { authority: string; path: string }, flow: Flow, connectTimeoutMs: number, gone: AbortSignal): Promise<void> {
  const { ip, port } = flow.decision;
  flow.onAbort(() => {
    res.destroy();
    req.socket.destroy();
  });
  let socket: Socket | undefined;
  res.once("close", () => {
    socket?.destroy();
    flow.finish();
  });
  try {
    socket = await connectTo(ip, port, connectTimeoutMs, AbortSignal.any([gone, flow.signal]));
  } catch (err) {
    flow.note(err instanceof Error ? err.message : "connect failed");
    req.resume();
    reply(res, connectFailure(err).httpStatus, `mvm egress: ${oneLine(err instanceof Error ? err.message : "connect failed")}\n`, false);
    return;
  }
  const connected = socket;
  connected.on("error", () => undefined);
  flow.own(() => connected.destroy());
  const upstream = httpRequest({
    createConnection: () => connected,
    method: req.method ?? "GET",
    path: target.path,
    setHost: false,
    headers: [["host", target.authority], ...forwardedHeaders(req.rawHeaders)].flat(),
  });
  upstream.on("error", (err) => {
    flow.note(`Upstream request failed: ${err.message}`);
    reply(res, 502, `mvm egress: upstream request failed\n`, false);
    connected.destroy();
  });
  upstream.on("response", (answer: IncomingMessage) => {
    if (res.headersSent || res.destroyed) {
      answer.destroy();
      return;
    }
    res.writeHead(answer.statusCode ?? 502, answer.statusMessage ?? "", forwardedHeaders(answer.rawHeaders).flat());
    answer.on("data", (chunk: Buffer) => {
      flow.counts.bytesIn += chunk.length;
    });
    answer.on("error", () => res.destroy());
    answer.pipe(res);
    // The socket belongs to this one request; it is closed once the answer is read.
    answer.once("end", () => connected.end());
  });
  req.on("data", (chunk: Buffer) => {
    flow.counts.bytesOut += chunk.length;
  });
  req.pipe(upstream);
}
