/**
 * A started command (`CommandHandle`), how it ended (`CommandResult`), and the rule that turns a
 * failed result into a CommandExitError.
 */
import {
  CommandExitError,
  InvalidArgumentError,
  NotFoundError,
  type CallOptions,
  type EngineApi,
  type ExitInfo,
  type KillSignal,
  type PtySize,
  type Receipt,
} from "@mvm/protocol";
import type { OutputBuffer } from "./_internal/output.js";

/** How a command ended, with its output. */
export interface CommandResult {
  /** Exit status, or null when a signal ended the process. */
  exitCode: number | null;
  /** The signal that ended the process (e.g. "SIGKILL"), or null. */
  signal: string | null;
  stdout: string;
  stderr: string;
  /** The process hit `timeoutSeconds`. */
  timedOut: boolean;
  /** The sandbox's memory limit was hit while the process ran. */
  oomKilled: boolean;
  /** Wall time from start to exit, in milliseconds. */
  durationMs: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** What ran where: sandbox, process handle, image digest, backend, start and end times. */
  receipt: Receipt;
}

/** A started command. */
export class CommandHandle {
  /** The engine's handle for the process (stable for the sandbox's life). */
  readonly proc: number;
  /** pid inside the sandbox. */
  readonly pid: number;
  readonly argv: readonly string[];
  /** Stdout as decoded text chunks, from the first; each loop over it starts at the beginning. */
  readonly stdout: AsyncIterable<string>;
  /** Stderr as decoded text chunks, from the first; each loop over it starts at the beginning. */
  readonly stderr: AsyncIterable<string>;
  readonly #engine: EngineApi;
  readonly #sandboxId: string;
  readonly #result: Promise<CommandResult>;
  readonly #check: boolean;
  readonly #stdinOpen: boolean;
  #exited = false;

  /** @internal Built by {@link Commands.start}. */
  constructor(init: {
    engine: EngineApi;
    sandboxId: string;
    argv: readonly string[];
    proc: number;
    pid: number;
    stdout: OutputBuffer;
    stderr: OutputBuffer;
    result: Promise<CommandResult>;
    check: boolean;
    stdinOpen: boolean;
  }) {
    this.#engine = init.engine;
    this.#sandboxId = init.sandboxId;
    this.argv = init.argv;
    this.proc = init.proc;
    this.pid = init.pid;
    this.stdout = { [Symbol.asyncIterator]: () => init.stdout.chunks() };
    this.stderr = { [Symbol.asyncIterator]: () => init.stderr.chunks() };
    this.#check = init.check;
    this.#stdinOpen = init.stdinOpen;
    this.#result = init.result.finally(() => {
      this.#exited = true;
    });
    this.#result.catch(() => {});
  }

  /** True once the process has ended and its output is complete. */
  get exited(): boolean {
    return this.#exited;
  }

  /**
   * Waits for the process to end.
   * @throws CommandExitError when it failed and `check` is on (the default)
   * @example
   * const p = await sb.commands.start(["make", "test"]);
   * const r = await p.wait();
   */
  async wait(): Promise<CommandResult> {
    const result = await this.#result;
    if (this.#check) throwIfFailed(this.argv, result);
    return result;
  }

  /**
   * Sends `killSignal` to the process. Resolves false when the process had already ended.
   * @param killSignal @default "SIGKILL"
   * @example
   * await p.kill("SIGTERM");
   */
  async kill(killSignal: KillSignal = "SIGKILL", options?: CallOptions): Promise<boolean> {
    if (this.#exited) return false;
    try {
      await this.#engine.signalProcess(this.#sandboxId, this.proc, killSignal, options);
      return true;
    } catch (err) {
      if (err instanceof NotFoundError) return false;
      throw err;
    }
  }

  /**
   * Writes to the process's stdin (start it with `openStdin: true`).
   * @example
   * const p = await sb.commands.start(["cat"], { openStdin: true });
   * await p.sendStdin("hello\n"); await p.closeStdin();
   */
  async sendStdin(data: string | Uint8Array, options?: CallOptions): Promise<void> {
    this.#requireStdin();
    await this.#engine.writeStdin(this.#sandboxId, this.proc, toBytes(data), options);
  }

  /**
   * Sets the window size of the process's terminal (start it with `pty`); its foreground
   * process group gets SIGWINCH.
   * @param size columns and rows, each 1 to 4096 character cells
   * @throws InvalidArgumentError when the process has no terminal; NotFoundError once it ended
   * @example
   * const p = await sb.commands.start(["bash"], { pty: { cols: 80, rows: 24 } });
   * await p.resize({ cols: 120, rows: 40 });
   */
  async resize(size: PtySize, options?: CallOptions): Promise<void> {
    await this.#engine.resizePty(this.#sandboxId, this.proc, size, options);
  }

  /**
   * Closes the process's stdin (it reads end-of-file).
   * @example
   * await p.closeStdin();
   */
  async closeStdin(options?: CallOptions): Promise<void> {
    this.#requireStdin();
    await this.#engine.writeStdin(this.#sandboxId, this.proc, null, options);
  }

  #requireStdin(): void {
    if (!this.#stdinOpen) {
      throw new InvalidArgumentError(`Stdin of command "${describeArgv(this.argv)}" is not open`, {
        hint: "Start the command with { openStdin: true }",
      });
    }
  }
}

export function toBytes(data: string | Uint8Array): Uint8Array {
  return typeof data === "string" ? new TextEncoder().encode(data) : data;
}

export function toResult(exit: ExitInfo, stdout: OutputBuffer, stderr: OutputBuffer): CommandResult {
  return {
    exitCode: exit.exitCode,
    signal: exit.signal,
    stdout: stdout.text(),
    stderr: stderr.text(),
    timedOut: exit.timedOut,
    oomKilled: exit.oomKilled,
    durationMs: exit.durationMs,
    stdoutTruncated: exit.stdoutTruncated || stdout.truncated,
    stderrTruncated: exit.stderrTruncated || stderr.truncated,
    receipt: exit.receipt,
  };
}

/** True when the command did not exit 0 on its own. */
export function commandFailed(r: CommandResult): boolean {
  return r.timedOut || r.signal !== null || r.exitCode !== 0;
}

function throwIfFailed(argv: readonly string[], r: CommandResult): void {
  if (!commandFailed(r)) return;
  const what = `Command "${describeArgv(argv)}"`;
  let message: string;
  if (r.timedOut) message = `${what} timed out after ${Math.round(r.durationMs)} ms`;
  else if (r.signal !== null) message = `${what} was killed by ${r.signal}${r.oomKilled ? " (out of memory)" : ""}`;
  else message = `${what} exited with code ${r.exitCode}`;
  const tail = lastLine(r.stderr);
  throw new CommandExitError<CommandResult>(tail === "" ? message : `${message}: ${tail}`, r);
}

/** The argv as one short printable line. */
export function describeArgv(argv: readonly string[]): string {
  return printable(argv.join(" "), 120);
}

/** The last non-empty line of `text`, printable and short: workload output is untrusted. */
function lastLine(text: string): string {
  const lines = text.slice(-4096).split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = (lines[i] as string).trim();
    if (line !== "") return printable(line, 200);
  }
  return "";
}

function printable(text: string, max: number): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, "?");
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}
