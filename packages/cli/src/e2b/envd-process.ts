/**
 * envd's process service (`process.Process`) on mvm's engine: Start (streamed output, PTY),
 * Connect (reattach by pid or tag), List, SendInput, CloseStdin, SendSignal and Update (PTY
 * resize). StreamInput is client streaming, which the browser-style Connect transport the E2B SDK
 * uses cannot send: it answers `unimplemented`.
 *
 * Processes run as the sandbox's unprivileged user; a call asking for another user is refused.
 * They start `background`, so a process outlives the HTTP stream that started it (E2B's
 * `disconnect()`); the client's Connect deadline becomes the process's own time limit.
 */
import { z } from "zod";
import { MAX_TTL_SECONDS, NotFoundError, type EngineApi, type ExecApiRequest, type ExitInfo, type KillSignal } from "@mvm/protocol";
import { ConnectError, type ServerStream } from "./connect.js";

/** Output kept per stream of one process for the engine's bookkeeping, in bytes. */
const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;
/** Most processes this server remembers per server (pid → how it was started); older ones are forgotten. */
const MAX_REMEMBERED = 4096;

const B64 = z.string().max(8 * 1024 * 1024).regex(/^[A-Za-z0-9+/_-]*={0,2}$/);
const Selector = z.union([z.strictObject({ pid: z.number().int().min(1).max(2 ** 31) }), z.strictObject({ tag: z.string().min(1).max(256) })]);
const PtySize = z.strictObject({ cols: z.number().int().min(0).max(4096).optional(), rows: z.number().int().min(0).max(4096).optional() });
const Pty = z.strictObject({ size: PtySize.optional() });

export const StartRequest = z.strictObject({
  process: z.strictObject({
    cmd: z.string().min(1).max(4096),
    args: z.array(z.string().max(128 * 1024)).max(63).optional(),
    envs: z.record(z.string().max(256), z.string().max(128 * 1024)).optional(),
    cwd: z.string().max(4096).optional(),
  }),
  pty: Pty.optional(),
  tag: z.string().max(256).optional(),
  stdin: z.boolean().optional(),
});
export const ConnectRequest = z.strictObject({ process: Selector });
export const ListRequest = z.strictObject({});
export const SendInputRequest = z.strictObject({
  process: Selector,
  input: z.union([z.strictObject({ stdin: B64 }), z.strictObject({ pty: B64 }), z.strictObject({})]).optional(),
});
export const SendSignalRequest = z.strictObject({
  process: Selector,
  signal: z.union([z.enum(["SIGNAL_UNSPECIFIED", "SIGNAL_SIGTERM", "SIGNAL_SIGKILL"]), z.literal(0), z.literal(9), z.literal(15)]).optional(),
});
export const CloseStdinRequest = z.strictObject({ process: Selector });
export const UpdateRequest = z.strictObject({ process: Selector, pty: Pty.optional() });

/** What a call handler gets: the engine, the sandbox, and the request's headers and lifetime. */
export interface EnvdCall {
  engine: EngineApi;
  sandboxId: string;
  /** Aborts when the client's request ends (or the server stops). */
  signal: AbortSignal;
  /** The client's Connect deadline, in milliseconds, when it sent one. */
  timeoutMs: number | undefined;
  /** Seconds between keepalive messages the client asked for, if any. */
  keepaliveSeconds: number | undefined;
}

interface Remembered {
  proc: number;
  pty: boolean;
  tag: string | undefined;
}

/** The processes this server started, by sandbox and pid: whether each has a PTY, and its tag. */
export class ProcessTable {
  readonly #byKey = new Map<string, Remembered>();

  remember(sandboxId: string, pid: number, entry: Remembered): void {
    if (this.#byKey.size >= MAX_REMEMBERED) {
      const oldest = this.#byKey.keys().next().value;
      if (oldest !== undefined) this.#byKey.delete(oldest);
    }
    this.#byKey.set(`${sandboxId}:${pid}`, entry);
  }

  get(sandboxId: string, pid: number): Remembered | undefined {
    return this.#byKey.get(`${sandboxId}:${pid}`);
  }

  tagOf(sandboxId: string, pid: number): string | undefined {
    return this.get(sandboxId, pid)?.tag;
  }

  pidOfTag(sandboxId: string, tag: string): number | undefined {
    for (const [key, value] of this.#byKey) {
      if (value.tag === tag && key.startsWith(`${sandboxId}:`)) return Number(key.slice(sandboxId.length + 1));
    }
    return undefined;
  }

  forget(sandboxId: string, pid: number): void {
    this.#byKey.delete(`${sandboxId}:${pid}`);
  }
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/** The end event of a process, in envd's terms. */
export function endEvent(exit: ExitInfo): Record<string, unknown> {
  const end: Record<string, unknown> = {
    exitCode: exit.exitCode ?? -1,
    exited: exit.exitCode !== null,
    status: exit.exitCode !== null ? `exit status ${exit.exitCode}` : `signal: ${exit.signal ?? "unknown"}`,
  };
  if (exit.timedOut) end["error"] = "the process reached its time limit";
  else if (exit.oomKilled) end["error"] = "the process was killed: out of memory";
  return { event: { end } };
}

/** Sends keepalive messages on `stream` every `seconds` until the returned function is called. */
function keepalive(stream: ServerStream, seconds: number | undefined, message: unknown): () => void {
  if (seconds === undefined) return () => {};
  const timer = setInterval(() => void stream.send(message), Math.min(Math.max(seconds, 1), 300) * 1000);
  timer.unref();
  return () => clearInterval(timer);
}

/** The process service of one server. */
export class ProcessService {
  readonly table = new ProcessTable();

  async #resolve(call: EnvdCall, selector: z.infer<typeof Selector>, verify = false): Promise<{ proc: number; pid: number; pty: boolean }> {
    const pid = "pid" in selector ? selector.pid : this.table.pidOfTag(call.sandboxId, selector.tag);
    if (pid === undefined) throw new ConnectError("not_found", `No process with tag "${"tag" in selector ? selector.tag.slice(0, 64) : ""}"`);
    const known = this.table.get(call.sandboxId, pid);
    // A process this server started is addressed directly; the engine answers NotFound once it is gone.
    if (known !== undefined && !verify) return { proc: known.proc, pid, pty: known.pty };
    const running = (await call.engine.listProcesses(call.sandboxId, { signal: call.signal })).find((p) => p.pid === pid);
    if (running === undefined) {
      this.table.forget(call.sandboxId, pid);
      throw new ConnectError("not_found", `No running process with pid ${pid}`);
    }
    if (known !== undefined && known.proc === running.proc) return { proc: running.proc, pid, pty: known.pty };
    if (known !== undefined) this.table.forget(call.sandboxId, pid);
    return { proc: running.proc, pid, pty: false };
  }

  /**
   * Runs `fn` on the selected process. A remembered process is addressed directly; when the engine
   * no longer knows it (it ended unwatched, and its pid may have been reused) it is forgotten and
   * looked up again by pid.
   */
  async #onProcess<T>(call: EnvdCall, selector: z.infer<typeof Selector>, fn: (found: { proc: number; pid: number; pty: boolean }) => Promise<T>): Promise<T> {
    const found = await this.#resolve(call, selector);
    try {
      return await fn(found);
    } catch (err) {
      if (!(err instanceof NotFoundError) || this.table.get(call.sandboxId, found.pid) === undefined) throw err;
      this.table.forget(call.sandboxId, found.pid);
      return fn(await this.#resolve(call, "pid" in selector ? selector : { pid: found.pid }));
    }
  }

  /** `Start`: runs the process and streams its start, output and end. */
  async start(call: EnvdCall, raw: unknown, stream: ServerStream): Promise<void> {
    const msg = StartRequest.parse(raw);
    const argv = [msg.process.cmd, ...(msg.process.args ?? [])];
    const pty = msg.pty !== undefined;
    const request: ExecApiRequest = { argv, background: true, maxOutputBytes: MAX_OUTPUT_BYTES, timeoutMs: Math.min(call.timeoutMs ?? 0, MAX_TTL_SECONDS * 1000) };
    if (msg.process.envs !== undefined && Object.keys(msg.process.envs).length > 0) request.env = msg.process.envs;
    if (msg.process.cwd !== undefined && msg.process.cwd !== "") request.cwd = msg.process.cwd;
    if (pty) {
      const cols = msg.pty?.size?.cols ?? 0;
      const rows = msg.pty?.size?.rows ?? 0;
      if (cols < 1 || rows < 1) throw new ConnectError("invalid_argument", `Invalid PTY size ${cols}x${rows}: both must be 1 to 4096`);
      request.pty = { cols, rows };
      request.openStdin = true;
    } else if (msg.stdin === true) {
      request.openStdin = true;
    }
    await this.#stream(call, stream, pty, msg.tag, (handlers, signal) => call.engine.exec(call.sandboxId, request, handlers, { signal }));
  }

  /** `Connect`: attaches to a running process; its backlog first, then live output and its end. */
  async connect(call: EnvdCall, raw: unknown, stream: ServerStream): Promise<void> {
    const msg = ConnectRequest.parse(raw);
    const found = await this.#resolve(call, msg.process, true);
    const tag = this.table.tagOf(call.sandboxId, found.pid);
    await this.#stream(call, stream, found.pty, tag, (handlers, signal) => call.engine.connectProcess(call.sandboxId, found.proc, handlers, { signal }));
  }

  async #stream(
    call: EnvdCall,
    stream: ServerStream,
    pty: boolean,
    tag: string | undefined,
    begin: (handlers: { onStdout(c: Uint8Array): unknown; onStderr(c: Uint8Array): unknown }, signal: AbortSignal) => ReturnType<EngineApi["exec"]>,
  ): Promise<void> {
    // Detaching (the client went away) aborts this signal; the process runs on.
    const detach = new AbortController();
    const onAbort = (): void => detach.abort();
    call.signal.addEventListener("abort", onAbort, { once: true });
    const out = (kind: "stdout" | "stderr") => (chunk: Uint8Array) => {
      if (stream.closed) return detach.abort();
      return stream.send({ event: { data: { [pty ? "pty" : kind]: b64(chunk) } } });
    };
    const stop = keepalive(stream, call.keepaliveSeconds, { event: { keepalive: {} } });
    try {
      const started = await begin({ onStdout: out("stdout"), onStderr: out("stderr") }, detach.signal);
      this.table.remember(call.sandboxId, started.pid, { proc: started.proc, pty, tag });
      await stream.send({ event: { start: { pid: started.pid } } });
      const exit = await started.exit;
      this.table.forget(call.sandboxId, started.pid);
      stream.end(undefined, endEvent(exit));
    } catch (err) {
      stream.end(detach.signal.aborted && !call.signal.aborted ? new ConnectError("canceled", "Detached") : err);
    } finally {
      stop();
      call.signal.removeEventListener("abort", onAbort);
    }
  }

  /** `List`: the sandbox's running processes. */
  async list(call: EnvdCall, raw: unknown): Promise<unknown> {
    ListRequest.parse(raw);
    const processes = await call.engine.listProcesses(call.sandboxId, { signal: call.signal });
    return {
      processes: processes.map((p) => {
        const tag = this.table.tagOf(call.sandboxId, p.pid);
        return { config: { cmd: p.argv[0] ?? "", args: p.argv.slice(1) }, pid: p.pid, ...(tag === undefined ? {} : { tag }) };
      }),
    };
  }

  /** `SendInput`: bytes to the process's stdin (or its terminal). */
  async sendInput(call: EnvdCall, raw: unknown): Promise<unknown> {
    const msg = SendInputRequest.parse(raw);
    const input = msg.input ?? {};
    const data = "stdin" in input ? input.stdin : "pty" in input ? input.pty : "";
    if (data.length > 0) {
      const bytes = Buffer.from(data, "base64");
      await this.#onProcess(call, msg.process, (found) => call.engine.writeStdin(call.sandboxId, found.proc, bytes, { signal: call.signal }));
    }
    return {};
  }

  /** `CloseStdin`: ends the process's stdin. */
  async closeStdin(call: EnvdCall, raw: unknown): Promise<unknown> {
    const msg = CloseStdinRequest.parse(raw);
    await this.#onProcess(call, msg.process, (found) => call.engine.writeStdin(call.sandboxId, found.proc, null, { signal: call.signal }));
    return {};
  }

  /** `SendSignal`: SIGTERM or SIGKILL to the process's group. */
  async sendSignal(call: EnvdCall, raw: unknown): Promise<unknown> {
    const msg = SendSignalRequest.parse(raw);
    const signal: KillSignal | undefined =
      msg.signal === "SIGNAL_SIGKILL" || msg.signal === 9 ? "SIGKILL" : msg.signal === "SIGNAL_SIGTERM" || msg.signal === 15 ? "SIGTERM" : undefined;
    if (signal === undefined) throw new ConnectError("invalid_argument", "A signal is required: SIGTERM or SIGKILL");
    await this.#onProcess(call, msg.process, (found) => call.engine.signalProcess(call.sandboxId, found.proc, signal, { signal: call.signal }));
    return {};
  }

  /** `Update`: resizes the process's terminal. */
  async update(call: EnvdCall, raw: unknown): Promise<unknown> {
    const msg = UpdateRequest.parse(raw);
    if (msg.pty?.size !== undefined) {
      const cols = msg.pty.size.cols ?? 0;
      const rows = msg.pty.size.rows ?? 0;
      if (cols < 1 || rows < 1) throw new ConnectError("invalid_argument", `Invalid PTY size ${cols}x${rows}: both must be 1 to 4096`);
      await this.#onProcess(call, msg.process, (found) => call.engine.resizePty(call.sandboxId, found.proc, { cols, rows }, { signal: call.signal }));
    } else {
      await this.#resolve(call, msg.process);
    }
    return {};
  }
}
