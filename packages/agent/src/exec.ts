/**
 * exec, signal and listProcesses: the agent's table of running commands. Each command leads its
 * own process group; timeouts, signals and cleanup act on the whole group.
 *
 * When a restored copy of the sandbox gets a new host, the commands of the old session keep
 * running, detached: they get handles from DETACHED_PROC_BASE up (so they never collide with the
 * new host's request ids), stay listable and signalable, and finish without an exit event.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { stat } from "node:fs/promises";
import { Readable } from "node:stream";
import type { ReadStream as TtyReadStream } from "node:tty";
import {
  DETACHED_PROC_BASE,
  InternalError,
  InvalidArgumentError,
  MAX_CONTROL_PAYLOAD,
  NotFoundError,
  type ExitEvent,
  type KillSignal,
  type ProcessInfo,
  type RequestOf,
  type ResultOf,
} from "@mvm/protocol";
import { boundMessage, describeErrno, errnoOf, fsError, logError, quote, toErrorBody } from "./errors.js";
import { buildEnv, makeTmpDir, removeTmpDir, removeTmpDirSync } from "./exec-env.js";
import { OutputPump, StdinSink } from "./exec-streams.js";
import { openPty, ptyCommand, ptyInput, ptyOutput, resizePty, type Pty } from "./pty.js";
import type { InboundStream, Link } from "./link.js";

/** Extra time, past killGraceMs, that output pipes may stay open after the leader exited. */
export const LINGER_EXTRA_MS = 1000;

interface Proc {
  /** The handle: the exec request's id, or a detached handle (DETACHED_PROC_BASE and up). */
  id: number;
  /** Its session's host is gone: output is discarded and no exit event is sent. */
  detached: boolean;
  readonly pid: number;
  readonly argv: readonly string[];
  readonly startedAtMs: number;
  readonly startedAt: number;
  readonly killGraceMs: number;
  readonly tmpDir: string;
  readonly stdin: StdinSink;
  readonly stdinStream: InboundStream | undefined;
  readonly out: OutputPump;
  readonly err: OutputPump;
  /** The pseudo-terminal's master side, for a command started with `pty`. */
  readonly pty: { readonly fd: number; readonly stream: TtyReadStream } | undefined;
  exit: { code: number | null; signal: string | null; durationMs: number } | undefined;
  timedOut: boolean;
  killTimer: NodeJS.Timeout | undefined;
  timeoutTimer: NodeJS.Timeout | undefined;
  lingerTimer: NodeJS.Timeout | undefined;
  finalized: boolean;
}

function emptyReadable(): Readable {
  return Readable.from([]);
}

/** Sends `signal` to every process of the group led by `pid`; a group that is gone is not an error. */
export function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if (errnoOf(err) !== "ESRCH") logError(`cannot send ${signal} to process group ${pid}`, err);
  }
}

export class ProcessTable {
  readonly #procs = new Map<number, Proc>();
  /** TMPDIRs of commands not yet cleaned up, for the exit path. */
  readonly #tmpDirs = new Set<string>();
  /** Request ids of exec calls between request and spawn. */
  readonly #starting = new Set<number>();
  /** Set by killAll: the session is ending and no new command may start. */
  #closed = false;
  /** Called when #starting becomes empty. */
  #onSettled: Array<() => void> = [];
  /** Next detached handle. */
  #nextDetached = DETACHED_PROC_BASE;

  constructor(private link: Link) {}

  /** Resolves once no exec is between its request and its spawn. */
  settled(): Promise<void> {
    if (this.#starting.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#onSettled.push(resolve));
  }

  /**
   * Detaches every command from the session whose host is gone, before its link is detached:
   * each gets a detached handle, and sends nothing more (the link's detach then aborts its
   * streams, so its output is read and discarded and its stdin closed). `link` serves the new
   * session. Call only when settled.
   */
  detachAll(link: Link): void {
    if (this.#starting.size > 0) throw new Error("Cannot detach commands while one is starting");
    for (const p of [...this.#procs.values()]) {
      if (p.detached) continue;
      this.#procs.delete(p.id);
      p.detached = true;
      if (this.#nextDetached > 0xffff_ffff) {
        // No handle left to name it by: it cannot be listed or signalled, so it may not run on.
        killGroup(p.pid, "SIGKILL");
        continue;
      }
      p.id = this.#nextDetached++;
      this.#procs.set(p.id, p);
    }
    this.link = link;
  }

  /**
   * Starts a command. Streams are registered before the first await so host frames that follow
   * the request on the wire find them. Resolves with the pid once the process exists.
   */
  async start(req: RequestOf<"exec">): Promise<ResultOf<"exec">> {
    if (this.#procs.has(req.id) || this.#starting.has(req.id)) {
      throw new InvalidArgumentError(`Request id ${req.id} is the handle of a running process`);
    }
    this.#starting.add(req.id);
    try {
      return await this.#start(req);
    } finally {
      this.#starting.delete(req.id);
      if (this.#starting.size === 0) for (const resolve of this.#onSettled.splice(0)) resolve();
    }
  }

  async #start(req: RequestOf<"exec">): Promise<ResultOf<"exec">> {
    const ids = req.stdin === null ? [req.stdout, req.stderr] : [req.stdin, req.stdout, req.stderr];
    this.link.checkFree(ids);
    let proc: Proc | undefined;
    const stdin = new StdinSink();
    const out = new OutputPump(req.maxOutputBytes, () => this.#maybeFinish(proc));
    const err = new OutputPump(req.maxOutputBytes, () => this.#maybeFinish(proc));
    const stdinStream = req.stdin === null ? undefined : this.link.openInbound(req.stdin, stdin);
    stdin.stream = stdinStream;
    const outStream = this.link.openOutbound(req.stdout, out);
    const errStream = this.link.openOutbound(req.stderr, err);
    out.stream = outStream;
    err.stream = errStream;
    const release = (): void => {
      stdinStream?.close();
      outStream.close();
      errStream.close();
    };

    let tmpDir: string;
    try {
      tmpDir = await makeTmpDir();
    } catch (e) {
      release();
      throw new InternalError(`Cannot create a TMPDIR for ${quote(req.argv[0]!)}: ${describeErrno(errnoOf(e))}`, { cause: e });
    }
    this.#tmpDirs.add(tmpDir);
    if (this.#closed) {
      release();
      await this.#dropTmpDir(tmpDir);
      throw new InternalError("The agent is shutting down");
    }

    let pty: Pty | undefined;
    let child: ChildProcess;
    try {
      if (req.pty !== undefined) pty = await openPty(req.argv[0]!);
      const [file, args] = pty !== undefined && req.pty !== undefined ? ptyCommand(req.argv, req.pty) : [req.argv[0]!, req.argv.slice(1)];
      child = spawn(file, args, {
        cwd: req.cwd,
        env: buildEnv(req.env, tmpDir),
        // The helper replaces fds 0-2 with the terminal; fd 3 is the master it unlocks and closes.
        stdio: pty !== undefined ? ["ignore", "ignore", "ignore", pty.fd] : [req.stdin === null ? "ignore" : "pipe", "pipe", "pipe"],
        detached: true,
      });
    } catch (e) {
      pty?.close();
      release();
      await this.#dropTmpDir(tmpDir);
      throw e;
    }
    if (child.pid === undefined) {
      const spawnError = await new Promise<unknown>((resolve) => child.once("error", resolve));
      pty?.close();
      release();
      await this.#dropTmpDir(tmpDir);
      throw await this.#spawnFailure(req, spawnError);
    }

    const startedAt = performance.now();
    proc = {
      id: req.id,
      detached: false,
      pid: child.pid,
      argv: req.argv,
      startedAtMs: Date.now(),
      startedAt,
      killGraceMs: req.killGraceMs,
      tmpDir,
      stdin,
      stdinStream,
      out,
      err,
      pty: pty === undefined ? undefined : { fd: pty.fd, stream: pty.open() },
      exit: undefined,
      timedOut: false,
      killTimer: undefined,
      timeoutTimer: undefined,
      lingerTimer: undefined,
      finalized: false,
    };
    const p = proc;
    this.#procs.set(p.id, p);
    child.on("error", (e) => logError(`process ${p.pid}`, e));
    child.once("exit", (code, signal) => this.#onExit(p, code, signal));
    if (p.pty !== undefined) {
      stdin.attach(ptyInput(p.pty.stream));
      out.attach(ptyOutput(p.pty.stream, p.pty.fd));
      err.attach(emptyReadable());
    } else {
      if (child.stdin) stdin.attach(child.stdin);
      out.attach(child.stdout!);
      err.attach(child.stderr!);
    }
    if (req.timeoutMs > 0) {
      p.timeoutTimer = setTimeout(() => {
        p.timedOut = true;
        this.#terminate(p);
      }, req.timeoutMs);
    }
    return { pid: p.pid };
  }

  /** Signals the process group of a running command. SIGTERM escalates to SIGKILL after killGraceMs. */
  signal(req: RequestOf<"signal">): ResultOf<"signal"> {
    const p = this.#procs.get(req.proc);
    if (!p || p.finalized) throw new NotFoundError(`Process ${req.proc} not found or already finished`);
    if (req.signal === "SIGTERM") this.#terminate(p);
    else killGroup(p.pid, req.signal satisfies KillSignal);
    return {};
  }

  /** Sets the window size of a running command's pseudo-terminal. */
  async resize(req: RequestOf<"resize">): Promise<ResultOf<"resize">> {
    const p = this.#procs.get(req.proc);
    if (!p || p.finalized) throw new NotFoundError(`Process ${req.proc} not found or already finished`);
    if (p.pty === undefined) throw new InvalidArgumentError(`Process ${req.proc} has no terminal: start it with a pty`);
    if (p.out.eof) throw new NotFoundError(`Process ${req.proc} has closed its terminal`);
    await resizePty(p.pty.fd, req);
    return {};
  }

  /** Running commands, cut so the answer fits in one control frame. */
  list(): ResultOf<"listProcesses"> {
    const processes: ProcessInfo[] = [];
    let budget = MAX_CONTROL_PAYLOAD - 256;
    for (const p of this.#procs.values()) {
      if (p.finalized) continue;
      const info = this.#info(p, Math.min(16 * 1024, budget - 128));
      const size = Buffer.byteLength(JSON.stringify(info)) + 1;
      if (size > budget || processes.length >= 4096) break;
      budget -= size;
      processes.push(info);
    }
    return { processes };
  }

  /** SIGKILLs every command's process group (used on shutdown and when the session ends). */
  killAll(): void {
    this.#closed = true;
    for (const p of this.#procs.values()) killGroup(p.pid, "SIGKILL");
  }

  /** Removes every TMPDIR not yet cleaned up; for the exit path. */
  cleanupSync(): void {
    for (const dir of this.#tmpDirs) removeTmpDirSync(dir);
    this.#tmpDirs.clear();
  }

  #info(p: Proc, argvBudgetBytes: number): ProcessInfo {
    const argv: string[] = [];
    let left = Math.max(0, argvBudgetBytes - 96);
    for (const arg of p.argv.slice(0, 64)) {
      let a = arg.slice(0, 4096);
      let size = Buffer.byteLength(JSON.stringify(a)) + 1;
      while (size > left && a.length > 0) {
        a = a.slice(0, Math.floor(a.length / 2));
        size = Buffer.byteLength(JSON.stringify(a)) + 1;
      }
      if (size > left) break;
      left -= size;
      argv.push(a);
      if (a.length < Math.min(arg.length, 4096)) break;
    }
    return { proc: p.id, pid: p.pid, argv, startedAtMs: p.startedAtMs };
  }

  /** SIGTERM to the group now, SIGKILL after the grace period (once armed, not re-armed). */
  #terminate(p: Proc): void {
    killGroup(p.pid, "SIGTERM");
    if (p.killTimer === undefined) p.killTimer = setTimeout(() => killGroup(p.pid, "SIGKILL"), p.killGraceMs);
  }

  #onExit(p: Proc, code: number | null, signal: NodeJS.Signals | null): void {
    p.exit = { code, signal, durationMs: performance.now() - p.startedAt };
    if (!p.out.eof || !p.err.eof) {
      // Something else (a background process) holds the output pipes open: bounded wait.
      p.lingerTimer = setTimeout(() => {
        killGroup(p.pid, "SIGKILL");
        p.out.forceClose();
        p.err.forceClose();
      }, p.killGraceMs + LINGER_EXTRA_MS);
    }
    this.#maybeFinish(p);
  }

  #maybeFinish(p: Proc | undefined): void {
    if (!p || p.finalized || !p.exit || !p.out.done || !p.err.done) return;
    p.finalized = true;
    clearTimeout(p.timeoutTimer);
    clearTimeout(p.killTimer);
    clearTimeout(p.lingerTimer);
    // The call is over: nothing it started may outlive it.
    killGroup(p.pid, "SIGKILL");
    p.stdin.close();
    p.stdinStream?.close();
    p.pty?.stream.destroy();
    if (this.#procs.get(p.id) === p) this.#procs.delete(p.id);
    const exit = p.exit;
    // The exit belongs to this session's host, even if a new one takes over meanwhile.
    const link = this.link;
    void this.#dropTmpDir(p.tmpDir)
      .then(() => {
        if (p.detached) return;
        const event: ExitEvent = {
          t: "exit",
          proc: p.id,
          exitCode: exit.code,
          signal: exit.signal,
          timedOut: p.timedOut,
          durationMs: Math.max(0, Math.round(exit.durationMs * 1000) / 1000),
          stdoutBytes: p.out.produced,
          stderrBytes: p.err.produced,
          stdoutTruncated: p.out.truncated,
          stderrTruncated: p.err.truncated,
        };
        link.sendControl(event);
      })
      .catch((e: unknown) => logError(`cannot report the exit of process ${p.pid}`, e));
  }

  async #dropTmpDir(dir: string): Promise<void> {
    await removeTmpDir(dir);
    this.#tmpDirs.delete(dir);
  }

  /** The typed error for a failed spawn; ENOENT says whether the command or the cwd is missing. */
  async #spawnFailure(req: RequestOf<"exec">, err: unknown): Promise<Error> {
    const errno = errnoOf(err);
    if (errno === undefined) return new InternalError(boundMessage(toErrorBody(err).message), { cause: err });
    if (errno === "ENOENT" || errno === "ENOTDIR" || errno === "EACCES") {
      try {
        const st = await stat(req.cwd);
        if (!st.isDirectory()) {
          return new InvalidArgumentError(`Working directory ${quote(req.cwd)} is not a directory`, { cause: err });
        }
      } catch (e) {
        return fsError(e, "Cannot use working directory", req.cwd);
      }
    }
    if (errno === "ENOENT") return new NotFoundError(`Command ${quote(req.argv[0]!)} not found`, { cause: err });
    return fsError(err, "Cannot execute", req.argv[0]!);
  }
}
