/**
 * `sandbox.commands`: run a command to completion, or start one and hold a handle to it.
 */
import {
  AbortedError,
  InvalidArgumentError,
  NotFoundError,
  STRICT_SECRETS_ENV,
  envFlagOn,
  isPromiseLike,
  type CallOptions,
  type EngineApi,
  type ExecApiRequest,
  type KillSignal,
  type ProcessInfo,
  type PtySize,
} from "@mvm/protocol";
import { CallScope } from "./_internal/call-scope.js";
import { callOptions } from "./_internal/call-options.js";
import { OutputBuffer } from "./_internal/output.js";
import { CommandHandle, describeArgv, toBytes, toResult, type CommandResult } from "./command-handle.js";


export { CommandHandle, commandFailed } from "./command-handle.js";
export type { CommandResult } from "./command-handle.js";

/** Default cap on the output kept per stream, in bytes (16 MiB). */
export const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
/** Default per-command timeout, in seconds. */
export const DEFAULT_COMMAND_TIMEOUT_SECONDS = 60;
/** Stdin up to this size travels inside the exec request; larger stdin is streamed after the start. */
const INLINE_STDIN_BYTES = 8 * 1024 * 1024;

/** Options of {@link Commands.run}. `signal` and `timeoutMs` bound the whole call; ending it early kills the process. */
export interface RunOptions extends CallOptions {
  /** Environment variables added to the sandbox's baseline. */
  env?: Record<string, string>;
  /** Working directory (absolute path in the sandbox). @default "/work" (the engine's default) */
  cwd?: string;
  /** Bytes fed to stdin, then stdin is closed. @default empty stdin */
  stdin?: string | Uint8Array;
  /**
   * The process's own time limit, in seconds: past it the process group gets SIGTERM, then
   * SIGKILL after `killGraceMs`, and the result says `timedOut`. 0 means none (the sandbox TTL still applies).
   * Without `timeoutMs`, the call itself gives up (TimeoutError) when no exit arrives within
   * this limit plus `killGraceMs` plus 30 s, so an engine that never answers cannot hang the caller.
   * @default 60
   */
  timeoutSeconds?: number;
  /** Time between SIGTERM and SIGKILL when the process times out, in milliseconds. @default the engine's */
  killGraceMs?: number;
  /** Output kept per stream, in bytes; the rest is dropped and the result says `…Truncated`. @default 16777216 (16 MiB) */
  maxOutputBytes?: number;
  /**
   * Called with each piece of stdout, decoded as UTF-8. What it throws (or rejects with) ends the
   * command and the call. A returned promise holds the stream: the next piece, and the workload's
   * further output, wait until it settles.
   */
  onStdout?: (chunk: string) => unknown;
  /** Called with each piece of stderr, like `onStdout`. */
  onStderr?: (chunk: string) => unknown;
  /**
   * Throw CommandExitError (which carries the result) when the command exits non-zero, is killed
   * by a signal, or times out. With `false` the result is returned whatever happened.
   * @default true
   */
  check?: boolean;
  /**
   * Refuse (PolicyDeniedError, before the process starts) arguments and environment variables
   * that look like plain-text secrets instead of warning. The engine's own MVM_STRICT_SECRETS
   * also applies: either one turns it on.
   * @default true when MVM_STRICT_SECRETS is "1" or "true" in this process, else false
   */
  strictSecrets?: boolean;
}

/** Options of {@link Commands.start}. */
export interface StartOptions extends RunOptions {
  /** Keep stdin open for {@link CommandHandle.sendStdin}. @default false */
  openStdin?: boolean;
  /** Let the process outlive this client's connection to a daemon. @default false */
  background?: boolean;
  /**
   * Run the command on a new pseudo-terminal of this size, in character cells (1 to 4096 each;
   * docs/TERMINALS.md). Stdin stays open for raw terminal input ({@link CommandHandle.sendStdin}:
   * "\x03" is Ctrl-C), everything the terminal shows arrives as stdout (stderr stays empty),
   * and {@link CommandHandle.resize} changes the size. Terminal output includes the echo of
   * the input and CR LF line ends.
   * @default none: pipes
   * @example
   * const sh = await sb.commands.start(["bash"], { pty: { cols: 80, rows: 24 }, onStdout: (s) => process.stdout.write(s) });
   * await sh.sendStdin("ls\r");
   */
  pty?: PtySize;
  /**
   * Latest output the engine keeps for clients that attach later ({@link Commands.connect}), in
   * bytes, stdout and stderr together (0 to 16 MiB; 0 keeps none).
   * @default 262144 (256 KiB)
   */
  backlogBytes?: number;
}

/** Options of {@link Commands.connect}. */
export interface ConnectOptions extends CallOptions {
  /** Called with each piece of stdout (the backlog first), decoded as UTF-8; a returned promise holds this client's stream. */
  onStdout?: (chunk: string) => unknown;
  /** Called with each piece of stderr, like `onStdout`. */
  onStderr?: (chunk: string) => unknown;
  /** Output kept per stream by this handle, in bytes. @default 16777216 (16 MiB) */
  maxOutputBytes?: number;
  /** Make {@link CommandHandle.wait} throw CommandExitError on a non-zero exit. @default true */
  check?: boolean;
}

/** Commands of one sandbox. */
export class Commands {
  readonly #engine: EngineApi;
  readonly #sandboxId: string;

  /** @internal Built by Sandbox. */
  constructor(engine: EngineApi, sandboxId: string) {
    this.#engine = engine;
    this.#sandboxId = sandboxId;
  }

  /**
   * Runs a command to completion. An array is argv (no shell); a string runs under `/bin/sh -c`.
   * @throws CommandExitError on a non-zero exit, a signal or a timeout, unless `check: false`
   * @throws TimeoutError / AbortedError when the call's `timeoutMs` / `signal` ends it (the process is killed)
   * @example
   * const r = await sb.commands.run(["python3", "-c", "print(2+2)"], { timeoutSeconds: 30 });
   * r.stdout; // "4\n"
   * const s = await sb.commands.run("ls /work | wc -l", { check: false });
   */
  async run(command: string | readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const handle = await this.start(command, options);
    return handle.wait();
  }

  /**
   * Starts a command and returns once it runs. Unless `background`, the process ends when the
   * call's `signal` aborts or its `timeoutMs` passes.
   * @example
   * const p = await sb.commands.start(["sleep", "100"]);
   * await p.kill();
   */
  async start(command: string | readonly string[], options: StartOptions = {}): Promise<CommandHandle> {
    const argv = typeof command === "string" ? ["/bin/sh", "-c", command] : [...command];
    const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    const timeoutSeconds = options.timeoutSeconds ?? DEFAULT_COMMAND_TIMEOUT_SECONDS;
    if (!(Number.isFinite(timeoutSeconds) && timeoutSeconds >= 0)) {
      throw new InvalidArgumentError(`Invalid timeoutSeconds "${timeoutSeconds}"`);
    }
    const stdin = options.stdin === undefined ? undefined : toBytes(options.stdin);
    const streamStdin = stdin !== undefined && stdin.byteLength > INLINE_STDIN_BYTES;

    const request: ExecApiRequest = { argv, timeoutMs: Math.round(timeoutSeconds * 1000), maxOutputBytes };
    if (options.env !== undefined) request.env = options.env;
    if (options.cwd !== undefined) request.cwd = options.cwd;
    if (options.killGraceMs !== undefined) request.killGraceMs = options.killGraceMs;
    if (options.background !== undefined) request.background = options.background;
    if (options.openStdin === true || streamStdin || options.pty !== undefined) request.openStdin = true;
    if (options.pty !== undefined) request.pty = { cols: options.pty.cols, rows: options.pty.rows };
    if (options.backlogBytes !== undefined) request.backlogBytes = options.backlogBytes;
    if (stdin !== undefined && !streamStdin) request.stdinBase64 = Buffer.from(stdin).toString("base64");
    if (options.strictSecrets === true || envFlagOn(process.env[STRICT_SECRETS_ENV])) request.strictSecrets = true;

    // The scope covers the process's whole run: when it ends early (the caller's signal, the
    // call's deadline, a callback that throws) the engine kills the process, and the caller
    // sees the scope's reason (or what the callback threw), whatever the engine reports.
    const scope = new CallScope(`Command "${describeArgv(argv)}"`, callOptions(options), backstopMs(timeoutSeconds, options.killGraceMs));
    let callbackError: { error: unknown } | undefined;
    const fail = (error: unknown): void => {
      if (callbackError !== undefined) return;
      callbackError = { error };
      scope.abort(new AbortedError(`${scope.describe} was ended by its output callback`, { cause: error }));
    };
    const guard = (fn: ((chunk: string) => unknown) | undefined) =>
      fn &&
      ((text: string): unknown => {
        if (callbackError !== undefined) return;
        try {
          const r = fn(text);
          if (isPromiseLike(r)) return Promise.resolve(r).then(undefined, fail);
        } catch (error) {
          fail(error);
        }
      });
    const stdout = new OutputBuffer(maxOutputBytes, guard(options.onStdout));
    const stderr = new OutputBuffer(maxOutputBytes, guard(options.onStderr));
    const failure = (err: unknown): unknown => {
      if (callbackError !== undefined) return callbackError.error;
      return scope.signal.aborted ? scope.signal.reason : err;
    };
    const call: CallOptions = { signal: scope.signal };

    let started;
    try {
      started = await this.#engine.exec(
        this.#sandboxId,
        request,
        { onStdout: (c) => stdout.push(c), onStderr: (c) => stderr.push(c) },
        call,
      );
    } catch (err) {
      scope.dispose();
      throw failure(err);
    }
    const result = started.exit.then(
      (exit) => {
        stdout.end();
        stderr.end();
        scope.dispose();
        if (callbackError !== undefined || scope.signal.aborted) throw failure(undefined);
        return toResult(exit, stdout, stderr);
      },
      (err: unknown) => {
        stdout.end();
        stderr.end();
        scope.dispose();
        throw failure(err);
      },
    );
    const handle = new CommandHandle({
      engine: this.#engine,
      sandboxId: this.#sandboxId,
      argv,
      proc: started.proc,
      pid: started.pid,
      stdout,
      stderr,
      result,
      check: options.check ?? true,
      stdinOpen: request.openStdin === true,
    });
    if (streamStdin) await this.#feed(handle, stdin, options.openStdin === true, call);
    return handle;
  }

  /**
   * Lists the sandbox's running processes.
   * @example
   * for (const p of await sb.commands.list()) console.log(p.pid, p.argv.join(" "));
   */
  list(options?: CallOptions): Promise<ProcessInfo[]> {
    return this.#engine.listProcesses(this.#sandboxId, options);
  }

  /**
   * Attaches to a running process by pid, whoever started it (another client, another
   * program): the handle gets what the process printed before, within the backlog its exec kept
   * (256 KiB by default, `backlogBytes`), then its live output, and `wait()` its exit. Aborting
   * `signal` detaches this client only; `kill()` on the handle still ends the process.
   * @throws NotFoundError when no running process of the sandbox has this pid
   * @example
   * const [p] = await sb.commands.list();
   * const h = await sb.commands.connect(p.pid, { onStdout: (s) => process.stdout.write(s) });
   * await h.wait();
   */
  async connect(pid: number, options: ConnectOptions = {}): Promise<CommandHandle> {
    return this.attach(await this.#byPid(pid, options), options);
  }

  /** @internal {@link connect} to a process the caller found in {@link list} already (one round trip less). */
  async attach(found: ProcessInfo, options: ConnectOptions = {}): Promise<CommandHandle> {
    const stdout = new OutputBuffer(options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES, options.onStdout);
    const stderr = new OutputBuffer(options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES, options.onStderr);
    const call: CallOptions = options.signal !== undefined ? { signal: options.signal } : {};
    const started = await this.#engine.connectProcess(this.#sandboxId, found.proc, { onStdout: (c) => stdout.push(c), onStderr: (c) => stderr.push(c) }, call);
    const end = (): void => {
      stdout.end();
      stderr.end();
    };
    const result = started.exit.then(
      (exit) => {
        end();
        return toResult(exit, stdout, stderr);
      },
      (err: unknown) => {
        end();
        throw err;
      },
    );
    return new CommandHandle({
      engine: this.#engine,
      sandboxId: this.#sandboxId,
      argv: found.argv,
      proc: started.proc,
      pid: started.pid,
      stdout,
      stderr,
      result,
      check: options.check ?? true,
      stdinOpen: true,
    });
  }

  /**
   * Sends `killSignal` to the running process with this pid (its whole process group), whoever
   * started it. Resolves false when no running process has this pid.
   * @param killSignal @default "SIGKILL"
   * @example
   * await sb.commands.kill(pid);
   */
  async kill(pid: number, killSignal: KillSignal = "SIGKILL", options?: CallOptions): Promise<boolean> {
    const found = (await this.list(options)).find((p) => p.pid === pid);
    if (found === undefined) return false;
    try {
      await this.#engine.signalProcess(this.#sandboxId, found.proc, killSignal, options);
      return true;
    } catch (err) {
      if (err instanceof NotFoundError) return false;
      throw err;
    }
  }

  async #byPid(pid: number, options: CallOptions): Promise<ProcessInfo> {
    if (!Number.isSafeInteger(pid) || pid < 1) throw new InvalidArgumentError(`Invalid pid "${pid}": expected a positive integer`);
    const found = (await this.list(options)).find((p) => p.pid === pid);
    if (found === undefined) throw new NotFoundError(`No running process with pid ${pid} in sandbox "${this.#sandboxId}"`);
    return found;
  }

  /** Streams large stdin after the start; a process that ends early simply stops reading. */
  async #feed(handle: CommandHandle, data: Uint8Array, keepOpen: boolean, call: CallOptions): Promise<void> {
    try {
      await handle.sendStdin(data, call);
      if (!keepOpen) await handle.closeStdin(call);
    } catch (err) {
      if (handle.exited) return;
      await handle.kill("SIGKILL").catch(() => false);
      throw err;
    }
  }
}

/** Slack the call deadline leaves the engine past the process's own limit and kill grace, in ms. */
const BACKSTOP_SLACK_MS = 30_000;
/** Kill grace assumed for the backstop when the caller sets none, in ms (the protocol's maximum is 60 s). */
const ASSUMED_KILL_GRACE_MS = 60_000;

/** The call deadline implied by a process time limit, or undefined when the process has none. */
function backstopMs(timeoutSeconds: number, killGraceMs: number | undefined): number | undefined {
  if (timeoutSeconds === 0) return undefined;
  return Math.round(timeoutSeconds * 1000) + (killGraceMs ?? ASSUMED_KILL_GRACE_MS) + BACKSTOP_SLACK_MS;
}
