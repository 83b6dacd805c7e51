/**
 * The host end of a namespace sandbox's egress relay: a Unix socket that bubblewrap binds into the
 * sandbox at NAMESPACE_RELAY_PATH and that accepts exactly one connection, the agent's (it
 * connects before its hello, so before any workload runs). Then the listener closes and the
 * socket file is unlinked: later connect() calls inside the sandbox are refused.
 *
 * Where the socket lives: a fresh per-sandbox directory made by mkdtemp under the host's
 * temporary directory, not the sandbox's stateDir. When the engine runs as root, bubblewrap runs
 * as the sandbox's host uid and must search every directory on the socket's path, and stateDir
 * sits under the engine's 0700 sandboxes directory. The directory is 0711 for a root engine
 * (others may pass through, not list) and 0700 otherwise; the socket is 0600 and owned by the
 * sandbox's host uid, so only the agent's uid (and root) can connect.
 *
 * The socket is bound through /proc/self/fd/N/relay.sock, N an open handle of the directory: the
 * address a socket is bound with is copied to every connection it accepts, and the agent's end of
 * that connection lives in the sandbox's network namespace, where /proc/net/unix shows it. That
 * address then names no host directory. The handle stays open until the listening socket is
 * closed: libuv unlinks the bound path when it closes the socket, and N must still name this
 * directory then.
 */
import { type FileHandle, chmod, chown, lstat, mkdtemp, open, readdir, rmdir, unlink } from "node:fs/promises";
import { type Server, type Socket, createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, isAbsolute, join, normalize } from "node:path";
import { AdmissionError, TransportError } from "@mvm/protocol";

/** Name of the socket inside its directory. */
export const RELAY_SOCKET_NAME = "relay.sock";
/** Prefix of the per-sandbox directory; mkdtemp appends six characters. */
export const RELAY_DIR_PREFIX = "mvm-relay-";
/** sun_path holds 108 bytes, the terminating NUL included. */
export const MAX_SOCKET_PATH_BYTES = 107;
/** How long the agent has to connect the relay after the listener opens, ms. */
export const RELAY_CONNECT_TIMEOUT_MS = 30_000;

const RELAY_DIR_NAME = new RegExp(`^${RELAY_DIR_PREFIX}[A-Za-z0-9]{6}$`);

export interface RelayListenerOptions {
  readonly sandboxId: string;
  /** The sandbox's host uid (root engine): owns the socket, which others cannot reach. */
  readonly hostUid?: number;
  /** Where the per-sandbox directory is made. @default os.tmpdir() */
  readonly parentDir?: string;
  /** How long the agent has to connect, ms. @default RELAY_CONNECT_TIMEOUT_MS */
  readonly connectTimeoutMs?: number;
}

/** True when `dir` can be a relay directory RelayListener made (absolute, normalized, its name pattern). */
export function isRelayDir(dir: string): boolean {
  return isAbsolute(dir) && normalize(dir) === dir && dir !== "/" && RELAY_DIR_NAME.test(basename(dir));
}

/**
 * Files the launcher may add to the relay directory: the sandbox user's passwd and group copies
 * (identity.ts), which bubblewrap, running as the sandbox's host uid, must be able to open.
 */
export const RELAY_DIR_EXTRA_FILES: readonly string[] = ["passwd", "group"];

/** Removes a relay directory, its socket and extra files, whoever made them; "already gone" is not an error. */
export async function removeRelayDir(dir: string): Promise<void> {
  await unlink(join(dir, RELAY_SOCKET_NAME)).catch(ignoreMissing);
  for (const name of RELAY_DIR_EXTRA_FILES) await unlink(join(dir, name)).catch(ignoreMissing);
  await rmdir(dir).catch(ignoreMissing);
}

/**
 * Removes relay directories under `parentDir` that this uid made more than `olderThanMs` ago (by
 * default twice the agent's connect timeout): left when an engine died between opening a
 * listener and writing the sandbox's record. A live sandbox loses nothing: its socket was
 * unlinked when its agent connected (the bind mount holds the inode, not the path), and a
 * listener still waiting is never that old.
 */
export async function sweepRelayDirs(parentDir: string = tmpdir(), olderThanMs = 2 * RELAY_CONNECT_TIMEOUT_MS): Promise<string[]> {
  const removed: string[] = [];
  let names: string[];
  try {
    names = await readdir(parentDir);
  } catch {
    return removed;
  }
  const uid = process.getuid?.();
  for (const name of names) {
    const dir = join(parentDir, name);
    if (!isRelayDir(dir)) continue;
    try {
      const st = await lstat(dir);
      if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || Date.now() - st.mtimeMs < olderThanMs) continue;
      await removeRelayDir(dir);
      removed.push(dir);
    } catch {
      // raced with its owner, or not ours to remove
    }
  }
  return removed;
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
}

/**
 * @example
 * const relay = await RelayListener.open({ sandboxId, hostUid });
 * // bwrap ... --ro-bind relay.path /dev/mvm-relay ...
 * const socket = await relay.connection;
 * // ... later
 * await relay.close();
 */
export class RelayListener {
  /** Resolves with the agent's connection; rejects on timeout, abandon() or close() before it. */
  readonly connection: Promise<Socket>;
  /** The socket's host path (what bubblewrap binds). */
  readonly path: string;
  #resolve!: (socket: Socket) => void;
  #reject!: (err: Error) => void;
  #settled = false;
  #accepted: Socket | undefined;
  #timer: NodeJS.Timeout | undefined;
  #unlinked: Promise<void> | undefined;
  /** The directory's handle the socket is bound through; closed after the listening socket. */
  #dirHandle: FileHandle | undefined;
  #dirHandleClosed: Promise<void> | undefined;

  private constructor(
    /** The per-sandbox directory holding the socket. */
    readonly dir: string,
    private readonly server: Server,
    private readonly sandboxId: string,
  ) {
    this.path = join(dir, RELAY_SOCKET_NAME);
    this.connection = new Promise<Socket>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // Callers that never ask for the relay must not turn its failure into an unhandled rejection.
    this.connection.catch(() => undefined);
    server.on("connection", (socket) => this.#onConnection(socket));
    server.on("error", (err) => this.abandon(new TransportError(`The egress relay of sandbox "${sandboxId}" failed`, { cause: err })));
  }

  /** Makes the directory and listens on the socket; throws AdmissionError when that is not possible. */
  static async open(options: RelayListenerOptions): Promise<RelayListener> {
    const parent = options.parentDir ?? tmpdir();
    const planned = join(parent, `${RELAY_DIR_PREFIX}XXXXXX`, RELAY_SOCKET_NAME);
    const bytes = Buffer.byteLength(planned);
    if (!isAbsolute(parent) || bytes > MAX_SOCKET_PATH_BYTES) {
      throw new AdmissionError(
        `Cannot start sandbox "${options.sandboxId}": relay socket path "${planned}" is not absolute or is ${bytes} bytes, over the ${MAX_SOCKET_PATH_BYTES} a Unix socket allows`,
        { hint: "point TMPDIR at a short absolute directory, such as /tmp" },
      );
    }
    let dir: string;
    try {
      dir = await mkdtemp(join(parent, RELAY_DIR_PREFIX));
    } catch (err) {
      throw new AdmissionError(`Cannot start sandbox "${options.sandboxId}": cannot make a relay directory in "${parent}"`, { cause: err });
    }
    const server = createServer();
    const listener = new RelayListener(dir, server, options.sandboxId);
    try {
      listener.#dirHandle = await open(dir, "r");
      await listen(server, `/proc/self/fd/${listener.#dirHandle.fd}/${RELAY_SOCKET_NAME}`);
      if (options.hostUid !== undefined) await chown(listener.path, options.hostUid, options.hostUid);
      await chmod(listener.path, 0o600);
      // Opened to other uids only once the socket is theirs alone.
      if (options.hostUid !== undefined) await chmod(dir, 0o711);
    } catch (err) {
      await listener.close().catch(() => undefined);
      throw new AdmissionError(`Cannot start sandbox "${options.sandboxId}": cannot listen on relay socket "${listener.path}"`, { cause: err });
    }
    const timeoutMs = options.connectTimeoutMs ?? RELAY_CONNECT_TIMEOUT_MS;
    listener.#timer = setTimeout(() => {
      listener.abandon(new TransportError(`The agent of sandbox "${options.sandboxId}" did not connect its egress relay within ${timeoutMs} ms`));
    }, timeoutMs);
    listener.#timer.unref();
    return listener;
  }

  #onConnection(socket: Socket): void {
    if (this.#settled) {
      socket.destroy();
      return;
    }
    this.#settled = true;
    this.#accepted = socket;
    // Errors (ECONNRESET when the sandbox dies) reach the relay's user as a close event.
    socket.on("error", () => undefined);
    this.#stopListening();
    this.#resolve(socket);
  }

  /** Stops waiting for the agent: rejects `connection` with `reason` unless it already resolved. */
  abandon(reason: Error): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#stopListening();
    this.#reject(reason);
  }

  /** Closes the listener and the connection and removes the socket and its directory. Idempotent. */
  async close(): Promise<void> {
    this.abandon(new TransportError(`Sandbox "${this.sandboxId}" was stopped before its agent connected the egress relay`));
    this.#accepted?.destroy();
    await this.#unlinked;
    await this.#dirHandleClosed;
    await removeRelayDir(this.dir);
  }

  #stopListening(): void {
    clearTimeout(this.#timer);
    if (this.server.listening) this.server.close();
    this.#dirHandleClosed ??= this.#dirHandle?.close().catch(() => undefined);
    this.#unlinked ??= unlink(this.path).catch(() => undefined);
  }
}

/** Resolves once `server` listens on `path`; removes its listeners either way. */
function listen(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      server.off("listening", onListening);
      reject(err);
    };
    const onListening = (): void => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ path, exclusive: true });
  });
}

