/**
 * `exec -t` / `run -t`: a command on a pseudo-terminal in the sandbox, driven from mvmctl's own
 * terminal the way `docker exec -it` does (docs/TERMINALS.md). mvmctl's terminal is put in raw
 * mode, so every key (Ctrl-C included) travels as bytes to the sandbox's terminal, whose line
 * discipline turns it into a signal for the command there; the window size follows SIGWINCH;
 * the command's exit code becomes mvmctl's. The raw mode is restored on every way out.
 */
import { AbortedError, type EngineApi, type ExecApiRequest, type ExitInfo } from "@mvm/protocol";
import type { CommandContext } from "./command.js";
import { ExitCode, exitCodeOf, signalNumber } from "./exit-code.js";
import type { CliSignal, OutStream } from "./io.js";
import { STREAM_OUTPUT_BYTES } from "./streaming.js";
import { cliExecRequest } from "./tier-warning.js";
import { UsageError } from "./usage-error.js";

/** Window size used when mvmctl's stdout is not a terminal (`-t` with output to a pipe). */
export const DEFAULT_PTY_SIZE = { cols: 80, rows: 24 } as const;
/** Largest piece of terminal input sent in one write, in bytes. */
const INPUT_CHUNK_BYTES = 64 * 1024;

/** How `-i` and `-t` were given. */
export interface TerminalMode {
  /** Forward mvmctl's stdin to the command (`-i`). */
  interactive: boolean;
}

/**
 * Refuses `-t` where it cannot work: `-i -t` needs a terminal on stdin, and `--json` output
 * cannot share stdout with a terminal's screen.
 */
export function checkTerminalUse(ctx: CommandContext, mode: TerminalMode): void {
  if (ctx.global.json) throw new UsageError("--tty cannot be combined with --json", { hint: "Drop -t to capture the output as JSON" });
  if (mode.interactive && (ctx.io.stdin.isTTY !== true || ctx.io.terminal === undefined)) {
    throw new UsageError("-it needs a terminal on stdin, and stdin is not one", { hint: "Drop -t to forward piped input, or run mvmctl in a terminal" });
  }
}

/**
 * Runs `request` on a pseudo-terminal in sandbox `sandboxId` and returns mvmctl's exit code.
 * SIGTERM and SIGHUP sent to mvmctl are passed to the command; a second one kills it.
 */
export async function streamTerminal(ctx: CommandContext, engine: EngineApi, sandboxId: string, request: ExecApiRequest, mode: TerminalMode): Promise<number> {
  const { io, out } = ctx;
  const terminal = io.terminal;
  const full: ExecApiRequest = cliExecRequest(request, io.env);
  full.pty = terminal?.size() ?? { ...DEFAULT_PTY_SIZE };
  full.openStdin = true;
  full.maxOutputBytes = STREAM_OUTPUT_BYTES;

  const abort = new AbortController();
  let proc: number | undefined;
  let interruptedBy: CliSignal | undefined;
  const restoreInterrupt = ctx.onInterrupt((signal, count) => {
    interruptedBy ??= signal;
    if (count > 1 || signal === "SIGPIPE" || proc === undefined) abort.abort(new AbortedError(`Interrupted by ${signal}`));
    else engine.signalProcess(sandboxId, proc, signal).catch(() => abort.abort(new AbortedError(`Interrupted by ${signal}`)));
  });
  const restoreMode = mode.interactive && terminal !== undefined ? terminal.enterRaw() : () => {};
  let stopResize = (): void => {};
  let ended = false;
  try {
    const started = await engine.exec(sandboxId, full, { onStdout: (chunk) => passOn(io.stdout, chunk), onStderr: (chunk) => passOn(io.stderr, chunk) }, { signal: abort.signal });
    const runningProc = started.proc;
    proc = runningProc;
    if (terminal !== undefined) {
      let last = `${full.pty.cols}x${full.pty.rows}`;
      stopResize = terminal.onResize(() => {
        const size = terminal.size();
        if (size === undefined || `${size.cols}x${size.rows}` === last || ended) return;
        last = `${size.cols}x${size.rows}`;
        // A resize that races the command's end has nothing left to resize.
        engine.resizePty(sandboxId, runningProc, size).catch(() => {});
      });
    }
    const pump = mode.interactive ? pumpInput(ctx, engine, sandboxId, runningProc, () => ended) : Promise.resolve();
    let exit: ExitInfo;
    try {
      exit = await started.exit;
    } finally {
      ended = true;
      restoreMode();
      if (mode.interactive) io.stdin.destroy();
      await pump;
    }
    if (exit.timedOut) out.note("mvmctl: the command ran past --timeout and was killed");
    if (exit.oomKilled) out.note("warning: the sandbox hit its memory limit and the kernel killed a process (raise --memory)");
    return exitCodeOf(exit);
  } catch (err) {
    if (interruptedBy !== undefined && abort.signal.aborted) {
      restoreMode();
      out.note(`mvmctl: ${interruptedBy}: the command was killed`);
      return ExitCode.SignalBase + (signalNumber(interruptedBy) ?? 2);
    }
    throw err;
  } finally {
    ended = true;
    restoreMode();
    stopResize();
    restoreInterrupt();
  }
}

/** Writes a chunk to mvmctl's output; when the stream is full, the promise of its drain. */
export function passOn(stream: OutStream, chunk: Uint8Array): Promise<void> | undefined {
  if (stream.write(chunk)) return;
  return stream.drained?.();
}

/** Copies mvmctl's terminal input to the command's terminal as it is typed. Never closes it: a terminal has no end of input. */
async function pumpInput(ctx: CommandContext, engine: EngineApi, sandboxId: string, proc: number, ended: () => boolean): Promise<void> {
  try {
    for await (const chunk of ctx.io.stdin) {
      if (ended()) return;
      const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
      for (let off = 0; off < bytes.byteLength; off += INPUT_CHUNK_BYTES) {
        await engine.writeStdin(sandboxId, proc, bytes.subarray(off, off + INPUT_CHUNK_BYTES));
        if (ended()) return;
      }
    }
  } catch {
    // The command ended: the rest of the input has nowhere to go.
  }
}
