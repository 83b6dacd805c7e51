/**
 * Runs one command in a sandbox the way a terminal user expects: output streamed live, stdin
 * forwarded when it is not a terminal, interrupts forwarded to the command.
 */
import { AbortedError, type EngineApi, type ExecApiRequest, type ExitInfo } from "@mvm/protocol";
import type { CommandContext } from "./command.js";
import type { CliSignal, OutStream } from "./io.js";
import { ExitCode, exitCodeOf, signalNumber } from "./exit-code.js";
import { formatBytes } from "./text.js";
import { cliExecRequest } from "./tier-warning.js";

/** Largest stdin chunk sent in one write, in bytes. */
const STDIN_CHUNK_BYTES = 64 * 1024;
/** Per-stream output cap asked of the engine when output is streamed to the terminal (the API's maximum), in bytes. */
export const STREAM_OUTPUT_BYTES = 1024 * 1024 * 1024;
/** Output kept per stream for `--json` results, in bytes; the engine is asked to cut there too. */
export const JSON_CAPTURE_BYTES = 8 * 1024 * 1024;

/** Bytes of one output stream kept for a JSON result, up to a cap. */
class Capture {
  readonly #chunks: Uint8Array[] = [];
  #kept = 0;
  #seen = 0;
  constructor(private readonly limitBytes: number) {}
  add(chunk: Uint8Array): void {
    this.#seen += chunk.byteLength;
    const room = this.limitBytes - this.#kept;
    if (room <= 0) return;
    const part = chunk.byteLength <= room ? chunk : chunk.subarray(0, room);
    this.#chunks.push(Uint8Array.from(part));
    this.#kept += part.byteLength;
  }
  text(): string {
    return Buffer.concat(this.#chunks).toString("utf8");
  }
  get truncated(): boolean {
    return this.#seen > this.#kept;
  }
}

/** The JSON printed by `run` and `exec` in `--json` mode (`run` adds `sandbox`). */
export interface ExecJsonResult {
  sandboxId: string;
  exitCode: number;
  exit: ExitInfo;
  /** The command's stdout as UTF-8 text (invalid bytes replaced), at most 8 MiB. */
  stdout: string;
  stderr: string;
  /** True when `stdout` is shorter than what the command wrote. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

export interface StreamedExec {
  /** mvmctl's exit code for this run. */
  exitCode: number;
  /** Undefined when an interrupt aborted the call before the command's end was reported. */
  exit: ExitInfo | undefined;
  json: ExecJsonResult | undefined;
}

/**
 * Runs `request` in sandbox `sandboxId`. In human mode stdout and stderr go straight to mvmctl's;
 * in JSON mode they are captured (bounded) into the result. An interrupt is forwarded to the
 * command as the same signal; a second one aborts the call, which kills the command.
 */
export async function streamExec(
  ctx: CommandContext,
  engine: EngineApi,
  sandboxId: string,
  request: ExecApiRequest,
  options: { readonly forwardStdin?: boolean } = {},
): Promise<StreamedExec> {
  const { io, out } = ctx;
  const json = ctx.global.json;
  const forwardStdin = options.forwardStdin === true || io.stdin.isTTY !== true;
  const stdoutCapture = new Capture(JSON_CAPTURE_BYTES);
  const stderrCapture = new Capture(JSON_CAPTURE_BYTES);
  const fullRequest: ExecApiRequest = cliExecRequest(request, io.env);
  if (forwardStdin) fullRequest.openStdin = true;
  // Streamed output is not kept anywhere, so it may be as large as the API allows.
  fullRequest.maxOutputBytes = json ? JSON_CAPTURE_BYTES : STREAM_OUTPUT_BYTES;

  const abort = new AbortController();
  let proc: number | undefined;
  let interruptedBy: CliSignal | undefined;
  const forward = (signal: Exclude<CliSignal, "SIGPIPE">, to: number): void => {
    engine.signalProcess(sandboxId, to, signal).catch(() => abort.abort(new AbortedError(`Interrupted by ${signal}`)));
  };
  const restore = ctx.onInterrupt((signal, count) => {
    interruptedBy ??= signal;
    // A repeated interrupt, or nobody reads stdout any more (SIGPIPE): kill the command.
    if (count > 1 || signal === "SIGPIPE") abort.abort(new AbortedError(`Interrupted by ${signal}`));
    // Before the process is known the signal waits; it is forwarded as soon as exec answers.
    else if (proc !== undefined) forward(signal, proc);
  });

  let ended = false;
  try {
    const started = await engine.exec(
      sandboxId,
      fullRequest,
      {
        onStdout: (chunk) => (json ? stdoutCapture.add(chunk) : passOn(io.stdout, chunk)),
        onStderr: (chunk) => (json ? stderrCapture.add(chunk) : passOn(io.stderr, chunk)),
      },
      { signal: abort.signal },
    );
    proc = started.proc;
    if (interruptedBy !== undefined && !abort.signal.aborted && interruptedBy !== "SIGPIPE") forward(interruptedBy, proc);
    const pump = forwardStdin ? pumpStdin(ctx, engine, sandboxId, started.proc, () => ended) : Promise.resolve();
    let exit: ExitInfo;
    try {
      exit = await started.exit;
    } finally {
      ended = true;
      if (forwardStdin) io.stdin.destroy();
      await pump;
    }
    if (!json) reportExitNotes(ctx, exit);
    const exitCode = exitCodeOf(exit);
    const result: ExecJsonResult | undefined = json
      ? {
          sandboxId,
          exitCode,
          exit,
          stdout: stdoutCapture.text(),
          stderr: stderrCapture.text(),
          stdoutTruncated: exit.stdoutTruncated || stdoutCapture.truncated,
          stderrTruncated: exit.stderrTruncated || stderrCapture.truncated,
        }
      : undefined;
    return { exitCode, exit, json: result };
  } catch (err) {
    if (interruptedBy !== undefined && abort.signal.aborted) {
      out.note(`mvmctl: ${interruptedBy}: the command was killed`);
      out.jsonResult({ error: { code: "ABORTED", message: `Interrupted by ${interruptedBy}: the command was killed` } });
      return { exitCode: ExitCode.SignalBase + (signalNumber(interruptedBy) ?? 2), exit: undefined, json: undefined };
    }
    throw err;
  } finally {
    ended = true;
    restore();
  }
}

/**
 * Writes output to mvmctl's own stream; while its reader lags, the returned promise holds the
 * command's output (the engine takes no more until it settles) instead of mvmctl buffering it.
 */
function passOn(stream: OutStream, chunk: Uint8Array): Promise<void> | undefined {
  if (stream.write(chunk)) return;
  return stream.drained?.();
}

/** Copies mvmctl's stdin to the command's stdin, then closes it. Stops quietly when the command has ended. */
async function pumpStdin(ctx: CommandContext, engine: EngineApi, sandboxId: string, proc: number, ended: () => boolean): Promise<void> {
  try {
    for await (const chunk of ctx.io.stdin) {
      if (ended()) return;
      const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
      for (let off = 0; off < bytes.byteLength; off += STDIN_CHUNK_BYTES) {
        await engine.writeStdin(sandboxId, proc, bytes.subarray(off, off + STDIN_CHUNK_BYTES));
        if (ended()) return;
      }
    }
    if (!ended()) await engine.writeStdin(sandboxId, proc, null);
  } catch {
    // The command closed its stdin or ended: the rest of the input has nowhere to go.
  }
}

/** Human-mode notes on stderr about output the engine cut and memory kills. */
function reportExitNotes(ctx: CommandContext, exit: ExitInfo): void {
  if (exit.stdoutTruncated) ctx.out.note(`warning: stdout was cut after ${formatBytes(exit.stdoutBytes)} by the engine's output cap`);
  if (exit.stderrTruncated) ctx.out.note(`warning: stderr was cut after ${formatBytes(exit.stderrBytes)} by the engine's output cap`);
  if (exit.oomKilled) ctx.out.note("warning: the sandbox hit its memory limit and the kernel killed a process (raise --memory)");
  if (exit.timedOut) ctx.out.note("mvmctl: the command ran past --timeout and was killed");
  for (const w of exit.warnings ?? []) ctx.out.note(`warning: ${w}`);
}
