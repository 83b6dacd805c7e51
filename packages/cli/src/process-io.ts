/**
 * The real CliIo: this process's streams, environment and signals; the SDK for engine
 * connections and the engine package for `mvmctl daemon`. Both are loaded on first use, so
 * `--help` and usage errors never load an engine.
 */
import { homedir } from "node:os";
import { isatty } from "node:tty";
import type { CliIo, CliSignal, DaemonOptions, InStream, OutStream, TerminalIo } from "./io.js";

async function serveDaemon(options: DaemonOptions): Promise<void> {
  const [{ openEngine, startDaemonServer }, { resolveSocketPath }] = await Promise.all([import("@mvm/engine"), import("@mvm/sdk")]);
  // The same resolution the SDK's clients use: the flag, else $MVM_DAEMON_SOCKET, else the default.
  const socketPath = resolveSocketPath(options.socketPath).path;
  if (options.signal.aborted) return;
  const engine = await openEngine();
  try {
    const server = await startDaemonServer({
      engine,
      socketPath,
      signal: options.signal,
      ...(options.group === undefined ? {} : { group: options.group }),
    });
    try {
      const stopped = new Promise<void>((resolve) => options.signal.addEventListener("abort", () => resolve(), { once: true }));
      if (!options.signal.aborted) await options.onListening({ socketPath, engine });
      await stopped;
    } finally {
      await server.close();
    }
  } finally {
    await engine.close();
  }
}

/** This process's stdin, opened only when read, so an unused stdin holds nothing open. */
function lazyStdin(): InStream {
  let opened: NodeJS.ReadStream | undefined;
  return {
    isTTY: isatty(0),
    [Symbol.asyncIterator]() {
      opened ??= process.stdin;
      return opened[Symbol.asyncIterator]();
    },
    destroy() {
      opened?.destroy();
    },
  };
}

/** Bytes mvmctl lets wait in its own stdout or stderr buffer before a writer must wait, 1 MiB. */
const OUTPUT_BUFFER_BYTES = 1024 * 1024;

/**
 * Resolves at once while less than OUTPUT_BUFFER_BYTES wait in the stream's buffer, else on its
 * next 'drain', or once it fails or closes (then nothing will drain).
 */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.destroyed || !stream.writableNeedDrain || stream.writableLength <= OUTPUT_BUFFER_BYTES) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off("drain", done);
      stream.off("error", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("error", done);
    stream.on("close", done);
  });
}

/**
 * stdout that reports its reader going away as a "SIGPIPE" and drops later writes, and stderr
 * whose write errors are ignored: neither may crash mvmctl while a sandbox needs cleaning up.
 * Both report a full buffer, so a caller can wait for a slow reader instead of buffering.
 */
function guardedStreams(): { stdout: OutStream; stderr: OutStream; onPipe: Set<() => void> } {
  const onPipe = new Set<() => void>();
  let broken = false;
  process.stdout.on("error", () => {
    if (broken) return;
    broken = true;
    for (const handler of onPipe) handler();
  });
  process.stderr.on("error", () => {});
  const stdout: OutStream = {
    get isTTY() {
      return process.stdout.isTTY;
    },
    get columns() {
      return process.stdout.columns;
    },
    write: (chunk) => (broken ? true : process.stdout.write(chunk)),
    drained: () => (broken ? Promise.resolve() : drained(process.stdout)),
  };
  const stderr: OutStream = {
    get isTTY() {
      return process.stderr.isTTY;
    },
    get columns() {
      return process.stderr.columns;
    },
    write: (chunk) => process.stderr.write(chunk),
    drained: () => drained(process.stderr),
  };
  return { stdout, stderr, onPipe };
}

/** This process's terminal: raw mode on stdin, the window size of stdout, SIGWINCH. */
function processTerminal(): TerminalIo {
  return {
    size() {
      if (!process.stdout.isTTY) return undefined;
      const [cols, rows] = process.stdout.getWindowSize();
      return cols > 0 && rows > 0 ? { cols, rows } : undefined;
    },
    enterRaw() {
      const stdin = process.stdin;
      if (!stdin.isTTY) return () => {};
      stdin.setRawMode(true);
      let restored = false;
      const restore = (): void => {
        if (restored) return;
        restored = true;
        process.off("exit", restore);
        try {
          stdin.setRawMode(false);
        } catch {
          // stdin is already closed: the terminal's mode was restored with it.
        }
      };
      process.on("exit", restore);
      return restore;
    },
    onResize(handler) {
      process.on("SIGWINCH", handler);
      return () => {
        process.off("SIGWINCH", handler);
      };
    },
  };
}

export function processIo(): CliIo {
  const { stdout, stderr, onPipe } = guardedStreams();
  return {
    stdout,
    stderr,
    stdin: lazyStdin(),
    terminal: processTerminal(),
    env: process.env,
    uid: typeof process.getuid === "function" ? process.getuid() : undefined,
    homeDir: homedir(),
    async connect(request) {
      const { connectEngine } = await import("@mvm/sdk");
      return connectEngine(request.socketPath === undefined ? { mode: request.mode } : { mode: request.mode, socketPath: request.socketPath });
    },
    onSignal(signal: CliSignal, handler: () => void) {
      if (signal === "SIGPIPE") {
        onPipe.add(handler);
        return () => {
          onPipe.delete(handler);
        };
      }
      process.on(signal, handler);
      return () => {
        process.off(signal, handler);
      };
    },
    serveDaemon,
    exitNow(code: number): never {
      process.exit(code);
    },
  };
}
