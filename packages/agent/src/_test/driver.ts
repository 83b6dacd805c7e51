/**
 * Host-side test driver: spawns the compiled agent with stdio channels, speaks protocol v1 to it,
 * collects data streams (granting credit as it consumes, unless told not to) and checks every
 * message the agent sends against the protocol schemas.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  AGENT_RESUME_LINE,
  AGENT_START_LINE,
  AgentHello,
  AgentToHost,
  CONTROL_STREAM,
  FrameDecoder,
  FrameKind,
  INITIAL_STREAM_WINDOW,
  Results,
  decodeCredit,
  encodeControl,
  encodeFrame,
  parseControl,
  type ExitEvent,
  type Frame,
  type Op,
  type RequestOf,
  type Response,
  type ResultOf,
} from "@mvm/protocol";
import { Collector } from "./collector.js";

export { Collector };

export const AGENT_ENTRY = fileURLToPath(new URL("../main.js", import.meta.url));
const STDERR_CAP = 256 * 1024;

export interface StartOptions {
  /** Script to run (default: the compiled dist/main.js). */
  entry?: string;
  /** Environment of the agent process (default: a copy of this process's environment). */
  env?: NodeJS.ProcessEnv;
  /**
   * A descriptor number (> 20) the agent inherits without close-on-exec, as a socket. Node marks
   * the low inherited descriptors close-on-exec itself, up to the first gap after 15.
   */
  inheritedFd?: number;
  /** Complete the handshake (default true). */
  handshake?: boolean;
  /** Command prefix to run the agent under, e.g. ["setpriv", "--reuid", "65534", ...]. */
  wrap?: string[];
}

type Params<O extends Op> = Omit<RequestOf<O>, "t" | "id" | "op">;

export class AgentError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

export interface Execution {
  proc: number;
  pid: number;
  stdout: Collector;
  stderr: Collector;
  stdin: number | null;
  exit: Promise<ExitEvent>;
}

export interface ExecOptions {
  env?: Record<string, string>;
  cwd?: string;
  stdin?: boolean;
  timeoutMs?: number;
  killGraceMs?: number;
  maxOutputBytes?: number;
  autoCredit?: boolean;
  keep?: boolean;
}

export class AgentDriver {
  static readonly #live = new Set<AgentDriver>();
  readonly child: ChildProcess;
  /** The agent's hello (after restartSession(), the hello of the new session). */
  hello: Promise<AgentHello>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Protocol rules the agent broke, as seen by the driver. Tests assert it stays empty. */
  readonly violations: string[] = [];
  stderr = "";
  #decoder = new FrameDecoder();
  #nextId = 1;
  #nextStream = 1;
  #resolveHello!: (h: AgentHello) => void;
  readonly #pending = new Map<number, { op: Op; resolve: (r: Response) => void }>();
  readonly #exits = new Map<number, ExitEvent>();
  readonly #exitWaiters = new Map<number, (e: ExitEvent) => void>();
  readonly #collectors = new Map<number, Collector>();
  readonly #writers = new Map<number, { credit: number; wake: (() => void) | undefined }>();
  #gotHello = false;
  /** The agent answered quiesce: any frame from it is a violation until the next line. */
  #quiet = false;
  /** Set by restartSession(): an exit nobody waits for is a leftover of the old session. */
  #restarted = false;

  private constructor(opts: StartOptions) {
    const extra = opts.inheritedFd === undefined ? [] : [...Array.from({ length: opts.inheritedFd - 3 }, () => "ignore" as const), "pipe" as const];
    const argv = [...(opts.wrap ?? []), process.execPath, opts.entry ?? AGENT_ENTRY, "--channel", "stdio"];
    this.child = spawn(argv[0]!, argv.slice(1), {
      stdio: ["pipe", "pipe", "pipe", ...extra],
      env: opts.env ?? { ...process.env },
    });
    this.hello = new Promise((resolve) => (this.#resolveHello = resolve));
    AgentDriver.#live.add(this);
    this.exited = new Promise((resolve) =>
      this.child.once("exit", (code, signal) => {
        AgentDriver.#live.delete(this);
        resolve({ code, signal });
      }),
    );
    this.child.stdin!.on("error", () => undefined);
    this.child.stdout!.on("data", (chunk: Buffer) => this.#onChunk(chunk));
    this.child.stderr!.on("data", (chunk: Buffer) => {
      if (this.stderr.length < STDERR_CAP) this.stderr += chunk.toString("utf8");
    });
  }

  /** Spawns the agent and (by default) completes the handshake. */
  static async start(opts: StartOptions = {}): Promise<AgentDriver> {
    const d = new AgentDriver(opts);
    if (opts.handshake !== false) {
      await d.hello;
      d.sendControl({ t: "hello", version: 1 });
    }
    return d;
  }

  /** SIGKILLs every agent still running (for `after` hooks: a failed test must not hang the file). */
  static async killAll(): Promise<void> {
    const live = [...AgentDriver.#live];
    for (const d of live) d.child.kill("SIGKILL");
    await Promise.all(live.map((d) => d.exited));
  }

  get pid(): number {
    return this.child.pid!;
  }

  send(buf: Uint8Array): void {
    if (!this.child.stdin!.destroyed) this.child.stdin!.write(buf);
  }

  sendControl(message: object): void {
    this.send(encodeFrame(FrameKind.Control, CONTROL_STREAM, encodeControl(message)));
  }

  sendData(stream: number, payload: Uint8Array): void {
    this.send(encodeFrame(FrameKind.Data, stream, payload));
  }

  sendEnd(stream: number): void {
    this.send(encodeFrame(FrameKind.End, stream));
  }

  newStreamId(): number {
    return this.#nextStream++;
  }

  newRequestId(): number {
    return this.#nextId++;
  }

  /** Starts collecting an agent → host stream (call before the request that opens it). */
  collect(id: number, opts: { autoCredit?: boolean; keep?: boolean } = {}): Collector {
    const c = new Collector(id, this, opts.autoCredit ?? true, opts.keep ?? true);
    this.#collectors.set(id, c);
    return c;
  }

  /** Sends a request and resolves with the agent's response. */
  request<O extends Op>(op: O, params: Params<O>, id = this.newRequestId()): Promise<Response> {
    return new Promise((resolve) => {
      this.#pending.set(id, { op, resolve });
      this.sendControl({ t: "req", id, op, ...params });
    });
  }

  /** Sends a request; resolves with its result or rejects with an AgentError. */
  async call<O extends Op>(op: O, params: Params<O>): Promise<ResultOf<O>> {
    const r = await this.request(op, params);
    if (!r.ok) throw new AgentError(r.error.code, r.error.message);
    return r.result as ResultOf<O>;
  }

  waitExit(proc: number): Promise<ExitEvent> {
    const known = this.#exits.get(proc);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => this.#exitWaiters.set(proc, resolve));
  }

  /** Starts a command; output is collected (auto-credited unless told otherwise). */
  async exec(argv: string[], opts: ExecOptions = {}): Promise<Execution> {
    const stdout = this.collect(this.newStreamId(), { autoCredit: opts.autoCredit ?? true, keep: opts.keep ?? true });
    const stderr = this.collect(this.newStreamId(), { autoCredit: opts.autoCredit ?? true, keep: opts.keep ?? true });
    const stdin = opts.stdin ? this.newStreamId() : null;
    const proc = this.newRequestId();
    const exit = this.waitExit(proc);
    const r = await this.request(
      "exec",
      {
        argv,
        env: opts.env ?? {},
        cwd: opts.cwd ?? "/",
        stdin,
        stdout: stdout.id,
        stderr: stderr.id,
        timeoutMs: opts.timeoutMs ?? 0,
        killGraceMs: opts.killGraceMs ?? 1000,
        maxOutputBytes: opts.maxOutputBytes ?? 64 * 1024 * 1024,
      },
      proc,
    );
    if (!r.ok) throw new AgentError(r.error.code, r.error.message);
    return { proc, pid: (r.result as { pid: number }).pid, stdout, stderr, stdin, exit };
  }

  /** Runs a command to completion and returns its exit event and text output. */
  async run(argv: string[], opts: ExecOptions & { input?: Buffer | string } = {}): Promise<{ exit: ExitEvent; stdout: string; stderr: string }> {
    const e = await this.exec(argv, { ...opts, stdin: opts.input !== undefined || opts.stdin === true });
    if (opts.input !== undefined && e.stdin !== null) await this.writeStream(e.stdin, Buffer.from(opts.input));
    const exit = await e.exit;
    await Promise.all([e.stdout.finished, e.stderr.finished]);
    return { exit, stdout: e.stdout.text(), stderr: e.stderr.text() };
  }

  /** Writes data on a host → agent stream honoring the window, then END (unless end is false). */
  async writeStream(stream: number, data: Buffer | Iterable<Buffer> | AsyncIterable<Buffer>, end = true): Promise<void> {
    const w = this.#writers.get(stream) ?? { credit: INITIAL_STREAM_WINDOW, wake: undefined };
    this.#writers.set(stream, w);
    const chunks = Buffer.isBuffer(data) ? [data] : data;
    for await (const chunk of chunks) {
      for (let at = 0; at < chunk.length; ) {
        while (w.credit <= 0) await new Promise<void>((resolve) => (w.wake = resolve));
        const n = Math.min(w.credit, chunk.length - at, 256 * 1024);
        this.sendData(stream, chunk.subarray(at, at + n));
        w.credit -= n;
        at += n;
      }
    }
    if (end) this.sendEnd(stream);
  }

  /** True between the agent's answer to quiesce and the next line. */
  get quiet(): boolean {
    return this.#quiet;
  }

  /** Sends quiesce; once the agent has answered, every frame from it is recorded as a violation. */
  async quiesce(): Promise<void> {
    const r = await this.request("quiesce", {});
    if (!r.ok) throw new AgentError(r.error.code, r.error.message);
  }

  /** Lets a quiesced agent carry on with this session. */
  resume(): void {
    this.#quiet = false;
    this.send(Buffer.from(AGENT_RESUME_LINE));
  }

  /**
   * Plays a new host after a quiesce (a restored copy): forgets every call, stream and id of the
   * old session, writes the start line and (by default) completes the new handshake.
   */
  async restartSession(opts: { handshake?: boolean } = {}): Promise<AgentHello> {
    this.#quiet = false;
    this.#restarted = true;
    this.#decoder = new FrameDecoder();
    this.#gotHello = false;
    this.hello = new Promise((resolve) => (this.#resolveHello = resolve));
    this.#pending.clear();
    this.#exits.clear();
    this.#exitWaiters.clear();
    this.#collectors.clear();
    this.#writers.clear();
    this.#nextId = 1;
    this.#nextStream = 1;
    this.send(Buffer.from(AGENT_START_LINE));
    const hello = await this.hello;
    if (opts.handshake !== false) this.sendControl({ t: "hello", version: 1 });
    return hello;
  }

  /** Resolves with the agent's exit status after closing its channel. */
  async close(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.child.stdin!.end();
    return this.exited;
  }

  /** Reads a field (e.g. "VmRSS", "VmHWM") of the agent's /proc status, in KiB. */
  async memoryKiB(field: "VmRSS" | "VmHWM"): Promise<number> {
    const { readFile } = await import("node:fs/promises");
    const status = await readFile(`/proc/${this.pid}/status`, "utf8");
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
    if (!m) throw new Error(`No ${field} in /proc/${this.pid}/status`);
    return Number(m[1]);
  }

  #onChunk(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.violations.push(`bad frame from agent: ${String(err)}`);
      return;
    }
    for (const f of frames) this.#onFrame(f);
  }

  #onFrame(f: Frame): void {
    const payload = Buffer.from(f.payload.buffer, f.payload.byteOffset, f.payload.byteLength);
    if (this.#quiet) {
      this.violations.push(`frame of kind ${f.kind} on stream ${f.stream} while quiesced`);
      return;
    }
    if (f.kind === FrameKind.Control) {
      if (!this.#gotHello) {
        this.#gotHello = true;
        try {
          this.#resolveHello(parseControl(AgentHello, payload));
        } catch (err) {
          this.violations.push(`bad hello: ${String(err)}`);
        }
        return;
      }
      let m: AgentToHost;
      try {
        m = parseControl(AgentToHost, payload);
      } catch (err) {
        this.violations.push(`bad control message: ${String(err)}: ${payload.toString("utf8").slice(0, 200)}`);
        return;
      }
      this.#onControl(m);
      return;
    }
    if (f.kind === FrameKind.Credit) {
      const w = this.#writers.get(f.stream) ?? { credit: INITIAL_STREAM_WINDOW, wake: undefined };
      this.#writers.set(f.stream, w);
      w.credit += decodeCredit(f);
      w.wake?.();
      return;
    }
    const c = this.#collectors.get(f.stream);
    if (!c) {
      this.violations.push(`frame of kind ${f.kind} on unknown stream ${f.stream}`);
      return;
    }
    if (f.kind === FrameKind.Data) c.onData(payload);
    else c.finish();
  }

  #onControl(m: AgentToHost): void {
    if (m.t === "res") {
      const p = this.#pending.get(m.id);
      if (!p) {
        this.violations.push(`response to unknown request ${m.id}`);
        return;
      }
      this.#pending.delete(m.id);
      if (m.ok && !Results[p.op].safeParse(m.result).success) this.violations.push(`bad ${p.op} result: ${JSON.stringify(m.result)}`);
      if (p.op === "quiesce" && m.ok) this.#quiet = true;
      p.resolve(m);
    } else if (m.t === "exit") {
      if (this.#exits.has(m.proc)) this.violations.push(`second exit for ${m.proc}`);
      if (this.#restarted && !this.#exitWaiters.has(m.proc)) this.violations.push(`exit of process ${m.proc}, unknown to this session`);
      this.#exits.set(m.proc, m);
      this.#exitWaiters.get(m.proc)?.(m);
    } else {
      const c = this.#collectors.get(m.stream);
      if (c) c.finish(m.error);
      else this.violations.push(`abort of unknown stream ${m.stream}`);
    }
  }
}
