/**
 * The daemon: serves an EngineApi as HTTP+JSON (and NDJSON streams) on a Unix socket inside a
 * private runtime directory. Every request is aborted when its client goes away.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { chmod, stat, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { AbortedError, InvalidArgumentError, type EngineApi } from "@mvm/protocol";
import { sendError } from "./http-io.js";
import { matchRoute, type Route } from "./router.js";
import { clearStaleSocket, ensurePrivateDir } from "./runtime-dir.js";
import { fileRoutes } from "./routes-files.js";
import { imageRoutes } from "./routes-images.js";
import { networkRoutes } from "./routes-network.js";
import { sandboxRoutes } from "./routes-sandboxes.js";

export interface DaemonServerOptions {
  /** The engine to serve. The server never closes it. */
  engine: EngineApi;
  /**
   * Absolute path of the Unix socket. Its directory is created 0700 (or must already be private
   * and owned by this uid); the socket is made 0600.
   */
  socketPath: string;
  /** Closes the server when aborted. */
  signal?: AbortSignal;
}

export interface DaemonServer {
  readonly socketPath: string;
  /**
   * Stops accepting, aborts every request in flight (so non-background execs are killed), waits
   * for their handlers to finish, and removes the socket file. Idempotent.
   */
  close(): Promise<void>;
}

const ROUTES: readonly Route[] = [...sandboxRoutes, ...networkRoutes, ...fileRoutes, ...imageRoutes];

/** Longest socket path Linux accepts (sun_path is 108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

/**
 * Starts serving `engine` on `socketPath`. Resolves once the socket accepts connections.
 *
 * @example
 * const server = await startDaemonServer({ engine, socketPath: "/run/mvm/mvmd.sock" });
 * process.once("SIGTERM", () => void server.close());
 */
export async function startDaemonServer(options: DaemonServerOptions): Promise<DaemonServer> {
  const { engine, socketPath, signal } = options;
  if (!socketPath.startsWith("/")) throw new InvalidArgumentError(`Socket path "${socketPath}" is not absolute`);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    throw new InvalidArgumentError(`Socket path "${socketPath}" is longer than ${MAX_SOCKET_PATH_BYTES} bytes`);
  }
  if (signal?.aborted) throw new AbortedError("Daemon start was aborted", { cause: signal.reason });
  await ensurePrivateDir(dirname(socketPath));
  await clearStaleSocket(socketPath);

  const active = new Set<AbortController>();
  const handlers = new Set<Promise<void>>();
  const server = createServer({ requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 5_000 }, (req, res) => {
    const controller = new AbortController();
    active.add(controller);
    const done = handle(engine, req, res, controller).finally(() => {
      active.delete(controller);
      handlers.delete(done);
    });
    handlers.add(done);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  let socketIno: number;
  try {
    await chmod(socketPath, 0o600);
    socketIno = (await stat(socketPath)).ino;
  } catch (err) {
    server.close();
    throw err;
  }

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      signal?.removeEventListener("abort", onAbort);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of active) c.abort(new AbortedError("The daemon is shutting down"));
      server.closeAllConnections();
      await closed;
      await Promise.allSettled([...handlers]);
      try {
        if ((await stat(socketPath)).ino === socketIno) await unlink(socketPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    })();
    return closing;
  };
  const onAbort = (): void => void close().catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  return { socketPath, close };
}

async function handle(engine: EngineApi, req: IncomingMessage, res: ServerResponse, controller: AbortController): Promise<void> {
  res.once("close", () => {
    if (!res.writableFinished) controller.abort(new AbortedError("The client closed the connection"));
  });
  try {
    const url = new URL(req.url ?? "/", "http://mvmd");
    const { handler, params } = matchRoute(ROUTES, req.method ?? "", url.pathname);
    await handler({ engine, req, res, params, query: url.searchParams, signal: controller.signal });
  } catch (err) {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // A body the handler left unread cannot be skipped safely: answer, then drop the connection.
    if (!req.complete) res.setHeader("Connection", "close");
    sendError(res, err);
  }
}
