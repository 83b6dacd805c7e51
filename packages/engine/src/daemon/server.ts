/**
 * The daemon: serves an EngineApi as HTTP+JSON (and NDJSON streams) on a Unix socket inside a
 * private runtime directory. Every request is aborted when its client goes away.
 *
 * Who may connect: the socket's file mode (0600, or 0660 for an operator group) and, behind it,
 * the kernel's record of each connection's peer (SO_PEERCRED): root, the daemon's uid and
 * members of the operator group are served, anyone else gets 403 before any route runs.
 * Connections beyond a cap get 503; headers, bodies and whole requests have deadlines.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { chmod, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import {
  AbortedError,
  DAEMON_BODY_IDLE_TIMEOUT_MS,
  DAEMON_HEADERS_TIMEOUT_MS,
  DAEMON_MAX_CONNECTIONS,
  DAEMON_REQUEST_TIMEOUT_MS,
  InternalError,
  InvalidArgumentError,
  TransportError,
  type EngineApi,
} from "@mvm/protocol";
import { sendError, setBodyIdleTimeout, wireErrorOf } from "./http-io.js";
import {
  buildPeerCredHelper,
  peerAdmitted,
  peerPrivileged,
  peerRefused,
  readPeerCredentials,
  resolveGroup,
  type PeerCredentials,
  type PeerPolicy,
} from "./peer-cred.js";
import { matchRoute, type Route } from "./router.js";
import { clearStaleSocket, ensurePrivateDir, giveToGroup } from "./runtime-dir.js";
import { fileRoutes } from "./routes-files.js";
import { imageRoutes } from "./routes-images.js";
import { networkRoutes } from "./routes-network.js";
import { sandboxRoutes } from "./routes-sandboxes.js";
import { snapshotRoutes } from "./routes-snapshots.js";
import { poolRoutes } from "./routes-pools.js";
import { bundleRoutes } from "./routes-bundles.js";

export interface DaemonServerOptions {
  /** The engine to serve. The server never closes it. */
  engine: EngineApi;
  /**
   * Absolute path of the Unix socket. Its directory is created 0700 (or must already be private
   * and owned by this uid); the socket is made 0600. With `group`: 0710 and 0660, group-owned.
   */
  socketPath: string;
  /**
   * The operator group (a name or a gid) whose members may use the daemon besides root and the
   * daemon's own uid. Members can do everything root can through the API; host paths they name
   * (image import) are read with their own permissions. @default none
   */
  group?: string;
  /** Deadlines and the connection cap; each defaults to its constant in @mvm/protocol's limits. */
  limits?: DaemonLimits;
  /**
   * An executable mvm-peercred (packages/engine/host/mvm-peercred.c) to use. @default built with
   * the system C compiler into `.helpers/` of the socket's directory
   */
  peerCredHelper?: string;
  /** Closes the server when aborted. */
  signal?: AbortSignal;
}

/** The daemon's HTTP deadlines (milliseconds) and connection cap. */
export interface DaemonLimits {
  /** @default DAEMON_HEADERS_TIMEOUT_MS (30 s) */
  headersTimeoutMs?: number;
  /** Whole request, headers and body. @default DAEMON_REQUEST_TIMEOUT_MS (30 min) */
  requestTimeoutMs?: number;
  /** Wait for the next byte of a body being read. @default DAEMON_BODY_IDLE_TIMEOUT_MS (30 s) */
  bodyIdleTimeoutMs?: number;
  /** @default DAEMON_MAX_CONNECTIONS (256) */
  maxConnections?: number;
}

export interface DaemonServer {
  readonly socketPath: string;
  /**
   * Stops accepting, aborts every request in flight (so non-background execs are killed), waits
   * for their handlers to finish, and removes the socket file. Idempotent.
   */
  close(): Promise<void>;
}

const ROUTES: readonly Route[] = [...sandboxRoutes, ...snapshotRoutes, ...poolRoutes, ...networkRoutes, ...fileRoutes, ...imageRoutes, ...bundleRoutes];

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
  const operatorGid = options.group === undefined ? undefined : await resolveGroup(options.group);
  const policy: PeerPolicy = { daemonUid: process.getuid?.() ?? -1, operatorGid };
  await ensurePrivateDir(dirname(socketPath), operatorGid === undefined ? {} : { groupGid: operatorGid });
  const helper = options.peerCredHelper ?? (await buildPeerCredHelper(join(dirname(socketPath), ".helpers")));
  await clearStaleSocket(socketPath);

  const limits = {
    headersTimeoutMs: options.limits?.headersTimeoutMs ?? DAEMON_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: options.limits?.requestTimeoutMs ?? DAEMON_REQUEST_TIMEOUT_MS,
    bodyIdleTimeoutMs: options.limits?.bodyIdleTimeoutMs ?? DAEMON_BODY_IDLE_TIMEOUT_MS,
    maxConnections: options.limits?.maxConnections ?? DAEMON_MAX_CONNECTIONS,
  };
  const active = new Set<AbortController>();
  const handlers = new Set<Promise<void>>();
  const peers = new WeakMap<Socket, Promise<PeerCredentials>>();
  const server = createServer(
    {
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs),
      keepAliveTimeout: 5_000,
      connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.floor(limits.headersTimeoutMs / 4))),
    },
    (req, res) => {
      const controller = new AbortController();
      active.add(controller);
      setBodyIdleTimeout(req, limits.bodyIdleTimeoutMs);
      const peer = peers.get(req.socket) ?? Promise.reject(new InternalError("Cannot check the peer: unknown connection"));
      const done = handle(engine, req, res, controller, peer, policy).finally(() => {
        active.delete(controller);
        handlers.delete(done);
      });
      handlers.add(done);
    },
  );
  // Connections past the cap are answered 503 and closed before an HTTP parser is attached;
  // the others get their peer looked up at once, while their first request's headers arrive.
  const httpListeners = server.listeners("connection") as ((socket: Socket) => void)[];
  server.removeAllListeners("connection");
  const refused = new Set<Socket>();
  let open = 0;
  server.on("connection", (socket: Socket) => {
    if (open >= limits.maxConnections) {
      refuseConnection(socket, limits.maxConnections, refused);
      return;
    }
    open++;
    socket.once("close", () => open--);
    const peer = readPeerCredentials(helper, socket);
    peer.catch(() => {});
    peers.set(socket, peer);
    for (const listener of httpListeners) listener.call(server, socket);
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
    if (operatorGid === undefined) {
      await chmod(socketPath, 0o600);
    } else {
      await giveToGroup(socketPath, policy.daemonUid, operatorGid);
      await chmod(socketPath, 0o660);
    }
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
      for (const socket of refused) socket.destroy();
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

/** Answers a connection past the cap with 503 (a typed error body) and closes it. */
function refuseConnection(socket: Socket, max: number, refused: Set<Socket>): void {
  refused.add(socket);
  socket.once("close", () => refused.delete(socket));
  socket.on("error", () => {});
  socket.setTimeout(5_000, () => socket.destroy());
  const error = new TransportError(`The daemon is serving its maximum of ${max} connections: this one is refused`, {
    hint: "Retry later, or close idle connections to the daemon",
  });
  const body = JSON.stringify({ error: wireErrorOf(error) });
  socket.end(
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  socket.resume();
  socket.once("end", () => socket.destroy());
}

async function handle(
  engine: EngineApi,
  req: IncomingMessage,
  res: ServerResponse,
  controller: AbortController,
  peerLookup: Promise<PeerCredentials>,
  policy: PeerPolicy,
): Promise<void> {
  res.once("close", () => {
    if (!res.writableFinished) controller.abort(new AbortedError("The client closed the connection"));
  });
  try {
    const peer = await peerLookup.catch((err: unknown) => {
      res.setHeader("Connection", "close");
      throw err;
    });
    if (!peerAdmitted(peer, policy)) {
      res.setHeader("Connection", "close");
      throw peerRefused(peer, policy);
    }
    const url = new URL(req.url ?? "/", "http://mvmd");
    const { handler, params } = matchRoute(ROUTES, req.method ?? "", url.pathname);
    const privileged = peerPrivileged(peer, policy.daemonUid);
    await handler({ engine, req, res, params, query: url.searchParams, signal: controller.signal, peer, peerPrivileged: privileged });
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
