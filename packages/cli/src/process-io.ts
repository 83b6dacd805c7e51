/**
 * The real CliIo: this process's streams, environment and signals; the SDK for engine
 * connections and the engine package for `mvmctl daemon`. Both are loaded on first use, so
 * `--help` and usage errors never load an engine.
 */
import { homedir } from "node:os";
import { isatty } from "node:tty";
import type { CliIo, CliSignal, DaemonOptions, InStream, OutStream } from "./io.js";

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

/**
 * stdout that reports its reader going away as a "SIGPIPE" and drops later writes, and stderr
 * whose write errors are ignored: neither may crash mvmctl while a sandbox needs cleaning up.
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
  };
  return { stdout, stderr: process.stderr, onPipe };
}

export function processIo(): CliIo {
  const { stdout, stderr, onPipe } = guardedStreams();
  return {
    stdout,
    stderr,
    stdin: lazyStdin(),
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
