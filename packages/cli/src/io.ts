/**
 * Everything mvmctl touches outside itself: standard streams, environment, signals, and the
 * way it reaches an engine. Tests pass their own; `processIo()` is the real one.
 */
import type { EngineApi } from "@mvm/protocol";

/** A writable terminal or pipe. */
export interface OutStream {
  /** Writes `chunk`; false when the stream's buffer is full (wait for `drained` before writing more). */
  write(chunk: string | Uint8Array): boolean;
  /** Resolves once a full buffer has drained, or the stream is gone. Absent: the stream never fills. */
  drained?(): Promise<void>;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

/** The standard input mvmctl may forward to a sandboxed command. */
export interface InStream extends AsyncIterable<Uint8Array | string> {
  readonly isTTY?: boolean;
  /** Stops reading and releases the stream. */
  destroy(): void;
}

/** How a command asks for an engine. */
export interface ConnectRequest {
  /** "auto": the daemon when one answers, else an engine in this process. */
  mode: "auto" | "daemon" | "embedded";
  socketPath?: string;
}

/**
 * The signals mvmctl reacts to. "SIGPIPE" stands for stdout's reader having gone away (a write
 * failed with EPIPE), as Node ignores the real signal.
 */
export type CliSignal = "SIGINT" | "SIGTERM" | "SIGHUP" | "SIGPIPE";

/** mvmctl's own terminal, for `exec -t` / `run -t` (docs/TERMINALS.md). */
export interface TerminalIo {
  /** The window size of the terminal on stdout, or undefined when stdout is not one. */
  size(): { cols: number; rows: number } | undefined;
  /**
   * Puts the terminal on stdin in raw mode (no echo, no line editing, Ctrl-C as a byte) and
   * returns the function that restores it; that function may be called more than once. The
   * mode is also restored when the process exits by any path Node sees.
   */
  enterRaw(): () => void;
  /** Calls `handler` each time the window size changes (SIGWINCH) until the returned function is called. */
  onResize(handler: () => void): () => void;
}

export interface CliIo {
  readonly stdout: OutStream;
  readonly stderr: OutStream;
  readonly stdin: InStream;
  /** This process's terminal; absent where there is none to drive (tests, pipes). */
  readonly terminal?: TerminalIo;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** The effective uid, or undefined where there is none. */
  readonly uid: number | undefined;
  /** The home directory, for the per-user config file. */
  readonly homeDir: string;
  connect(request: ConnectRequest): Promise<EngineApi>;
  /** Calls `handler` each time `signal` arrives until the returned function is called. */
  onSignal(signal: CliSignal, handler: () => void): () => void;
  /** Runs `mvmctl daemon`'s server; resolves when `signal` aborts and the server has stopped. */
  serveDaemon(options: DaemonOptions): Promise<void>;
  /** Ends the process at once (a repeated interrupt). */
  exitNow(code: number): never;
}

export interface DaemonOptions {
  /** Unix socket the daemon listens on; the SDK's default when absent. */
  socketPath?: string;
  /** Operator group (name or gid) whose members may use the daemon. */
  group?: string;
  /** Stops the server and the engine (closing kills every sandbox). */
  signal: AbortSignal;
  /** Called once the socket accepts connections, with the engine's health. */
  onListening(info: { socketPath: string; engine: EngineApi }): void | Promise<void>;
}
