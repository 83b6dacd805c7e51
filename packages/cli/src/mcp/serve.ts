/**
 * The MCP server's transports: stdio (one session, ended when stdin closes) and streamable HTTP
 * on a loopback address, where every request carries the operator's bearer token.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { randomUUID } from "node:crypto";
import type { Readable, Writable } from "node:stream";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { InvalidArgumentError, parseJsonStrict, type EngineApi } from "@mvm/protocol";
import { isLoopbackHost } from "../loopback.js";
import type { McpConfig } from "./config.js";
import { createMcpSession, type McpSession } from "./server.js";

/** Largest HTTP request body read, in bytes (a write_file of MAX_TOOL_TEXT_BYTES, JSON-escaped, fits). */
export const MAX_MCP_BODY_BYTES = 32 * 1024 * 1024;
/** Most HTTP sessions open at once. */
export const MAX_MCP_HTTP_SESSIONS = 32;
/** Shortest bearer token accepted, in characters. */
export const MIN_MCP_TOKEN_CHARS = 32;

/** Serves one session on `stdin`/`stdout` until stdin ends or `signal` aborts; then ends the session. */
export async function serveMcpStdio(engine: EngineApi, config: McpConfig, io: { stdin: Readable; stdout: Writable; signal: AbortSignal }): Promise<void> {
  const session = createMcpSession(engine, config);
  const transport = new StdioServerTransport(io.stdin, io.stdout);
  const ended = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    io.stdin.once("end", resolve);
    io.stdin.once("close", resolve);
    io.signal.addEventListener("abort", () => resolve(), { once: true });
  });
  await session.server.connect(transport);
  await ended;
  await session.close();
}


/** Checks a token the operator set: long enough, printable, no spaces. */
export function checkToken(token: string): string {
  const t = token.trim();
  if (t.length < MIN_MCP_TOKEN_CHARS || !/^[\x21-\x7e]+$/.test(t)) {
    throw new InvalidArgumentError(`The MCP bearer token must be at least ${MIN_MCP_TOKEN_CHARS} printable characters without spaces`, {
      hint: "make one with: openssl rand -hex 32",
    });
  }
  return t;
}

/** Constant-time check of an Authorization header against the token (hashes compared, so lengths never leak). */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const given = header?.startsWith("Bearer ") === true ? header.slice("Bearer ".length) : "";
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(token).digest();
  return timingSafeEqual(a, b) && given.length > 0;
}

export interface McpHttpOptions {
  host: string;
  port: number;
  token: string;
  signal: AbortSignal;
  onListening(address: { host: string; port: number }): void;
}

/** Serves streamable HTTP at http://host:port/mcp until `signal` aborts; then ends every session. */
export async function serveMcpHttp(engine: EngineApi, config: McpConfig, options: McpHttpOptions): Promise<void> {
  if (!isLoopbackHost(options.host)) {
    throw new InvalidArgumentError(`The MCP HTTP transport listens on loopback only, not "${options.host}"`, { hint: "use 127.0.0.1 or ::1; reach it from elsewhere through an SSH tunnel" });
  }
  const token = checkToken(options.token);
  const sessions = new Map<string, { transport: StreamableHTTPServerTransport; session: McpSession }>();

  const answer = (res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void => {
    if (res.headersSent) return void res.end();
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!bearerMatches(req.headers.authorization, token)) {
      req.resume();
      return answer(res, 401, "Unauthorized: a valid bearer token is required", { "www-authenticate": 'Bearer realm="mvm-mcp"' });
    }
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/mcp") return answer(res, 404, "Not found: the MCP endpoint is /mcp");
    const sessionId = req.headers["mcp-session-id"];
    let body: unknown;
    if (req.method === "POST") {
      const read = await readBody(req);
      if (!read.ok) return answer(res, read.status, read.message);
      body = read.body;
    } else {
      req.resume();
    }
    if (typeof sessionId === "string") {
      const known = sessions.get(sessionId);
      if (known === undefined) return answer(res, 404, "Session not found");
      return known.transport.handleRequest(req, res, body);
    }
    if (req.method !== "POST" || !isInitializeRequest(body)) return answer(res, 400, "Bad request: no session id, and not an initialize request");
    if (sessions.size >= MAX_MCP_HTTP_SESSIONS) return answer(res, 503, `Too many sessions (at most ${MAX_MCP_HTTP_SESSIONS})`);
    const session = createMcpSession(engine, config);
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => void sessions.set(id, { transport, session }),
      enableDnsRebindingProtection: true,
      allowedHosts: [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`],
    });
    transport.onclose = () => {
      if (transport.sessionId !== undefined) sessions.delete(transport.sessionId);
      void session.close();
    };
    await session.server.connect(transport);
    await transport.handleRequest(req, res, body);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => answer(res, 500, `Internal error: ${err instanceof Error ? err.message : String(err)}`.slice(0, 1024)));
  });
  server.requestTimeout = 0; // a tool call may run for as long as the config allows
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : options.port;
  options.onListening({ host: options.host, port });
  await new Promise<void>((resolve) => {
    if (options.signal.aborted) return resolve();
    options.signal.addEventListener("abort", () => resolve(), { once: true });
  });
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  await Promise.all([...sessions.values()].map(({ transport, session }) => transport.close().then(() => session.close())));
  server.closeAllConnections();
  await closed;
}

type BodyRead = { ok: true; body: unknown } | { ok: false; status: number; message: string };

async function readBody(req: IncomingMessage): Promise<BodyRead> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.byteLength;
    if (size > MAX_MCP_BODY_BYTES) {
      req.destroy();
      return { ok: false, status: 413, message: `Request body over ${MAX_MCP_BODY_BYTES} bytes` };
    }
    chunks.push(chunk);
  }
  try {
    return { ok: true, body: parseJsonStrict(Buffer.concat(chunks).toString("utf8")) };
  } catch (err) {
    return { ok: false, status: 400, message: `Parse error: ${(err as Error).message}`.slice(0, 512) };
  }
}
