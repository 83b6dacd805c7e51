/**
 * One running sandbox: its backend launch, its agent session, its TTL, its processes, pause and
 * resume. `stop` is single-flight and releases everything whatever state the sandbox is in.
 * While paused, the heartbeat is suspended and exec, file and process calls fail with
 * SandboxPausedError (they are refused, never queued behind the pause).
 */
import {
  CleanupError,
  InternalError,
  SandboxCrashedError,
  SandboxPausedError,
  UnsupportedCapabilityError,
  NotFoundError,
  toMvmError,
  TransportError,
  type CallOptions,
  type EndReason,
  type ExecApiRequest,
  type ExecHandlers,
  type ExecStarted,
  type ExitInfo,
  type FileReadStream,
  type Op,
  type ResultOf,
  type SandboxInfo,
  type Env,
} from "@mvm/protocol";
import { setTimeout as delay } from "node:timers/promises";
import type { z } from "zod";
import { AgentClient, type AgentProcess, type RequestParams } from "./agent/client.js";
import type { Backend, BackendSnapshot, LaunchedSandbox, LaunchSpec, ReapRecord, SnapshotCapture } from "./backends/types.js";
import { abortError, callSignal } from "./_internal/signals.js";
import type { SandboxNetwork } from "./egress/sandbox-network.js";
import type { Redactor } from "./secrets/redact.js";
import { WorkloadLog } from "./workload-log.js";
import { SandboxLifetime, type PauseTtl } from "./sandbox-lifetime.js";

/** A pause or resume, as the engine records it in the audit log. */
export type PauseChange =
  | { readonly type: "sandbox.paused"; readonly by: "caller" | "ttl"; readonly ttl: PauseTtl }
  | { readonly type: "sandbox.resumed"; readonly pausedMs: number };

/** Default per-stream output cap for exec, bytes. */
/** How long the host's held relay frames get to reach the guest before it is quiesced, ms. */
const RELAY_SETTLE_MS = 50;
/** How long the agent may take to reach a quiet point before a memory snapshot, ms. */
const QUIESCE_TIMEOUT_MS = 30_000;

export const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
const DEFAULT_KILL_GRACE_MS = 2000;

export interface StartOptions {
  info: SandboxInfo;
  backend: Backend;
  spec: LaunchSpec;
  env: z.infer<typeof Env>;
  helloTimeoutMs: number;
  /**
   * The engine pings the agent every `intervalMs`; no answer within `timeoutMs` and the sandbox
   * is declared crashed (a hung guest or agent) and torn down.
   */
  heartbeat?: { intervalMs: number; timeoutMs: number };
  signal?: AbortSignal;
  /** The sandbox's egress policy, relay and published ports; attached to the backend's relay. */
  network: SandboxNetwork;
  /** Replaces secret values in everything returned to callers (output, error messages). */
  redactor: Redactor;
  onRecord(reap: ReapRecord): Promise<void>;
  onEnded(sandbox: LiveSandbox): void;
  /** Records a pause or resume (the audit log); awaited before the change is reported. */
  onPauseChange(sandbox: LiveSandbox, change: PauseChange): Promise<void>;
}

export class LiveSandbox {
  info: SandboxInfo;
  readonly #launched: LaunchedSandbox;
  readonly #client: AgentClient;
  readonly #env: z.infer<typeof Env>;
  readonly #procs = new Map<number, AgentProcess>();
  #lifetime: SandboxLifetime;
  readonly #onEnded: (s: LiveSandbox) => void;
  readonly #onPauseChange: StartOptions["onPauseChange"];
  /** Pauses and resumes run one at a time, in order. */
  #transition: Promise<unknown> = Promise.resolve();
  /** Set while paused: when the pause began (ms since the epoch). */
  #pausedAt: number | undefined;
  #heartbeatConfig: { intervalMs: number; timeoutMs: number } | undefined;
  /** Bumped when the heartbeat is suspended: a ping sent before then decides nothing. */
  #beatEpoch = 0;
  readonly network: SandboxNetwork;
  /** The recent output of the sandbox's commands, redacted (what `logs` shows as the workload's). */
  readonly workloadLog = new WorkloadLog();
  readonly #redactor: Redactor;
  #stopping: Promise<void> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #crashReason: string | undefined;
  #crashError: SandboxCrashedError | undefined;
  /** Why the agent session ended on its own (a protocol violation, the channel closing). */
  #closeError: Error | undefined;

  private constructor(info: SandboxInfo, launched: LaunchedSandbox, client: AgentClient, opts: StartOptions) {
    this.info = { ...info, state: "running" };
    this.#launched = launched;
    this.#client = client;
    this.#env = opts.env;
    this.#onEnded = opts.onEnded;
    this.network = opts.network;
    this.#redactor = opts.redactor;
    this.#onPauseChange = opts.onPauseChange;
    this.#lifetime = this.#lifetimeOf(info);
    launched.exited.then(() => void this.stop("crashed").catch(() => {}));
    client.closed.then((err) => {
      this.#closeError ??= err;
      void this.stop("crashed").catch(() => {});
    });
    this.#heartbeatConfig = opts.heartbeat;
    this.#startHeartbeat();
  }

  #lifetimeOf(info: SandboxInfo): SandboxLifetime {
    return new SandboxLifetime(Date.parse(info.createdAt), Date.parse(info.expiresAt), info.onTtl ?? "kill", {
      expire: () => void this.stop("expired").catch(() => {}),
      // A TTL pause that fails ends the sandbox: it never runs on past its TTL.
      pauseAtTtl: () => void this.pause("ttl", "spent").catch(() => void this.stop("expired").catch(() => {})),
    });
  }

  /** Resolves once the agent answers a request (its session is loaded), so the first real one waits for nothing. */
  async warmUp(): Promise<void> {
    this.#assertLive();
    await this.#client.request("ping", {});
  }

  /**
   * Hands a warm sandbox to the create that claimed it: `info` becomes the claimant's (labels,
   * creation and expiry times, TTL behaviour, receipt), and the TTL runs from the claim.
   */
  claimed(info: SandboxInfo): void {
    this.#assertLive();
    if (this.#pausedAt !== undefined) throw new InternalError(`Warm sandbox "${this.info.id}" is paused and cannot be claimed`);
    this.#lifetime.end();
    this.info = { ...info, state: "running" };
    this.#lifetime = this.#lifetimeOf(this.info);
  }

  #startHeartbeat(): void {
    if (this.#heartbeatConfig === undefined) return;
    const { intervalMs, timeoutMs } = this.#heartbeatConfig;
    const epoch = this.#beatEpoch;
    const beat = async (): Promise<void> => {
      if (this.#stopping || epoch !== this.#beatEpoch) return;
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), timeoutMs)));
      const answer = await Promise.race([this.#client.request("ping", {}).then(() => "ok" as const, () => "failed" as const), late]);
      clearTimeout(timer);
      // Suspended (paused) while the ping was out: a frozen agent's silence is not a hang.
      if (epoch !== this.#beatEpoch) return;
      if (answer === "late") {
        this.#crashReason = `its agent did not answer a ping within ${timeoutMs} ms (hung guest or agent)`;
        void this.stop("crashed").catch(() => {});
        return;
      }
      if (!this.#stopping) {
        this.#heartbeat = setTimeout(() => void beat(), intervalMs);
        this.#heartbeat.unref();
      }
    };
    this.#heartbeat = setTimeout(() => void beat(), intervalMs);
    this.#heartbeat.unref();
  }

  #suspendHeartbeat(): void {
    this.#beatEpoch++;
    clearTimeout(this.#heartbeat);
  }

  /**
   * Freezes the sandbox (see LaunchedSandbox.pause). `ttl`: whether the TTL keeps running, stops
   * until resume, or has run out (a pause by the TTL). No-op when already paused, except that a TTL
   * running out turns a caller's pause into a spent one. Recorded through onPauseChange.
   * @throws UnsupportedCapabilityError when the backend cannot pause on this host
   */
  pause(by: "caller" | "ttl", ttl: PauseTtl): Promise<void> {
    return this.#serialized(async () => {
      this.#assertLive();
      if (this.#pausedAt !== undefined) {
        if (by !== "ttl" || this.#lifetime.pause?.ttl !== "running") return;
      } else {
        this.#suspendHeartbeat();
        try {
          await this.#launched.pause();
        } catch (err) {
          if (!this.#stopping) this.#startHeartbeat();
          throw err;
        }
        this.#assertLive();
        this.#pausedAt = Date.now();
      }
      this.#lifetime.paused(ttl);
      this.#refreshPauseInfo(by);
      await this.#onPauseChange(this, { type: "sandbox.paused", by, ttl });
    });
  }

  /** Thaws a paused sandbox and restarts its heartbeat and TTL; no-op when running. Recorded through onPauseChange. */
  resume(): Promise<void> {
    return this.#serialized(async () => {
      this.#assertLive();
      const since = this.#pausedAt;
      if (since === undefined) return;
      await this.#launched.resume();
      this.#assertLive();
      this.#pausedAt = undefined;
      this.#lifetime.resumed();
      this.#refreshPauseInfo("caller");
      this.#startHeartbeat();
      await this.#onPauseChange(this, { type: "sandbox.resumed", pausedMs: Math.max(0, Date.now() - since) });
    });
  }

  /** Sets the TTL to end `ttlSeconds` from now (see SandboxLifetime.setTtl); runs in order with pauses and resumes. */
  setTtl(ttlSeconds: number): Promise<void> {
    return this.#serialized(async () => {
      this.#assertLive();
      this.#lifetime.setTtl(ttlSeconds * 1000);
      this.#refreshPauseInfo("caller");
    });
  }

  /** Brings `info`'s state, expiresAt and pause fields up to date. */
  #refreshPauseInfo(by: "caller" | "ttl"): void {
    const { pause: previous, ...rest } = this.info;
    const p = this.#lifetime.pause;
    const expiresAt = new Date(this.#lifetime.expiresAt).toISOString();
    if (this.#pausedAt === undefined || p === undefined) {
      this.info = { ...rest, state: "running", expiresAt };
      return;
    }
    const pause = {
      since: new Date(this.#pausedAt).toISOString(),
      by: previous?.by ?? by,
      ttl: p.ttl,
      ...(p.remainingSeconds !== undefined ? { remainingSeconds: p.remainingSeconds } : {}),
      killAt: new Date(p.killAt).toISOString(),
    };
    this.info = { ...rest, state: "paused", expiresAt, pause };
  }

  #serialized<T>(step: () => Promise<T>): Promise<T> {
    const next = this.#transition.then(step, step);
    this.#transition = next.catch(() => undefined);
    return next;
  }

  /**
   * Captures the sandbox's state into `capture.dir` (see LaunchedSandbox.snapshot), one transition
   * at a time with pause and resume. A memory capture first quiesces the agent (it stops mid-session
   * and waits), and a paused sandbox is thawed for that and paused again afterwards; the agent then
   * carries on with the same session. The heartbeat is suspended meanwhile.
   * @throws UnsupportedCapabilityError when the backend cannot capture this
   */
  snapshot(capture: SnapshotCapture): Promise<BackendSnapshot> {
    return this.#serialized(async () => {
      this.#assertLive();
      const take = this.#launched.snapshot?.bind(this.#launched);
      if (take === undefined) throw new UnsupportedCapabilityError(`Backend "${this.info.backend}" cannot snapshot sandboxes`);
      const paused = this.#pausedAt !== undefined;
      // The backend stops the sandbox while it captures: a silent agent then is not a hung one.
      this.#suspendHeartbeat();
      try {
        if (!capture.memory) return await take(capture);
        if (paused) await this.#launched.resume();
        // The host's relay writes stop first and get a moment to reach the guest, which reads them
        // on until it is quiet: a restored copy then starts its new relay with nothing half-read.
        await this.network.holdRelay();
        try {
          await delay(RELAY_SETTLE_MS);
          await this.#client.quiesce(QUIESCE_TIMEOUT_MS);
          try {
            return await take(capture);
          } finally {
            await this.#client.resumeAfterQuiesce();
            if (paused) await this.#launched.pause();
          }
        } finally {
          this.network.releaseRelay();
        }
      } finally {
        this.#assertLive();
        if (!paused) this.#startHeartbeat();
      }
    });
  }

  #assertLive(): void {
    if (this.#stopping) throw new NotFoundError(`Sandbox "${this.info.id}" is not running (it ${this.info.endReason ?? "stopped"})`);
  }

  /** Refuses a call that needs the sandbox's processes to run. */
  #assertRunning(what: string): void {
    if (this.#pausedAt !== undefined && !this.#stopping) {
      throw new SandboxPausedError(`Cannot ${what} in sandbox "${this.info.id}": it is paused`, {
        hint: `resume it first: \`mvmctl resume ${this.info.id}\` or \`await sb.resume()\``,
      });
    }
  }

  static async start(opts: StartOptions): Promise<LiveSandbox> {
    const launched = await opts.backend.launch(opts.spec, opts.signal);
    opts.network.attach(launched.relay);
    try {
      await opts.onRecord(launched.reapRecord);
      const client = await AgentClient.connect(launched.channel, {
        helloTimeoutMs: opts.helloTimeoutMs,
        label: opts.info.id,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      return new LiveSandbox(opts.info, launched, client, opts);
    } catch (err) {
      await launched.destroy().catch(() => {});
      throw err;
    }
  }

  /** Kills the sandbox and releases everything. Safe to call repeatedly and concurrently. */
  stop(reason: EndReason): Promise<void> {
    this.#stopping ??= (async () => {
      this.#lifetime.end();
      this.#suspendHeartbeat();
      this.info = { ...this.info, state: "stopped", endReason: reason };
      if (reason === "crashed") {
        // Give the backend a moment to see the exit and read why (console, QEMU's stderr).
        await Promise.race([this.#launched.exited, new Promise((r) => setTimeout(r, 200))]);
        const why = this.#crashReason ?? this.#launched.failure?.() ?? this.#closeError?.message;
        this.#crashError = new SandboxCrashedError(`Sandbox "${this.info.id}" crashed${why ? `: ${why}` : ""}`);
        this.#client.destroy(this.#crashError);
      } else {
        this.#client.destroy(new TransportError(`Sandbox "${this.info.id}" ${reason}`));
      }
      await this.network.close().catch(() => {});
      try {
        await this.#launched.destroy();
      } catch (err) {
        throw new CleanupError(`Could not release sandbox "${this.info.id}": ${toMvmError(err).message}`, { cause: err });
      } finally {
        this.#onEnded(this);
      }
    })();
    return this.#stopping;
  }

  /**
   * A call that failed because the channel broke is reported as the crash when the sandbox turns
   * out to have crashed (the channel usually closes a moment before the exit is seen).
   */
  async #crashAware<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      if (!(err instanceof TransportError)) throw this.#redacted(err);
      await Promise.race([this.#launched.exited, new Promise((r) => setTimeout(r, 1_000))]);
      if (this.#stopping) await this.#stopping.catch(() => undefined);
      throw this.#crashError ?? err;
    }
  }

  /** The same error with every secret value in its message replaced by a placeholder. */
  /** `text` with the sandbox's secret values replaced. */
  redact(text: string): string {
    return this.#redactor.empty ? text : this.#redactor.redactString(text);
  }

  #redacted(err: unknown): unknown {
    if (this.#redactor.empty || !(err instanceof Error)) return err;
    const message = this.#redactor.redactString(err.message);
    if (message !== err.message) err.message = message;
    return err;
  }

  async call<O extends Op>(op: O, params: RequestParams<O>, options: CallOptions = {}): Promise<ResultOf<O>> {
    this.#assertRunning(op);
    const signal = callSignal(options);
    if (!signal) return this.#crashAware(this.#client.request(op, params));
    signal.throwIfAborted();
    return withSignal(this.#crashAware(this.#client.request(op, params)), signal, `${op} in "${this.info.id}"`);
  }

  async exec(req: ExecApiRequest, handlers: ExecHandlers, options: CallOptions): Promise<ExecStarted> {
    this.#assertRunning("exec");
    const signal = callSignal(options);
    signal?.throwIfAborted();
    const stdinBytes = req.stdinBase64 !== undefined ? Buffer.from(req.stdinBase64, "base64") : undefined;
    // Read concurrently with the start: it only has to precede the process's exit.
    const oomBeforeRead = this.#launched.oomKills();
    oomBeforeRead.catch(() => {});
    const startedAt = new Date();
    let started: AgentProcess | undefined;
    const stdout = redactedOutput(this.#redactor, (c) => {
      this.workloadLog.add(started?.proc ?? 0, "stdout", c);
      return handlers.onStdout?.(c);
    });
    const stderr = redactedOutput(this.#redactor, (c) => {
      this.workloadLog.add(started?.proc ?? 0, "stderr", c);
      return handlers.onStderr?.(c);
    });
    let handlerFailedEarly = false;
    const proc = await this.#crashAware(this.#client.exec(
      {
        argv: req.argv,
        env: { ...this.#env, ...(req.env ?? {}) },
        cwd: req.cwd ?? this.info.image.fromImage?.workingDir ?? "/work",
        timeoutMs: req.timeoutMs ?? 0,
        killGraceMs: req.killGraceMs ?? DEFAULT_KILL_GRACE_MS,
        maxOutputBytes: req.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES,
        ...(req.pty !== undefined ? { pty: req.pty } : {}),
      },
      {
        // A terminal's input stays open for the process's life: keys are written as they come.
        openStdin: stdinBytes !== undefined || req.openStdin === true || req.pty !== undefined,
        output: {
          onStdout: stdout.write,
          onStderr: stderr.write,
          // A consumer that failed takes the process with it, as a dropped daemon stream does.
          onHandlerFailure: () => {
            if (!req.background && started !== undefined) {
              void this.#client.request("signal", { proc: started.proc, signal: "SIGKILL" }).catch(() => {});
            } else handlerFailedEarly = true;
          },
        },
      },
    ));
    started = proc;
    if (handlerFailedEarly && !req.background) void this.#client.request("signal", { proc: proc.proc, signal: "SIGKILL" }).catch(() => {});
    const oomBefore = await oomBeforeRead.catch(() => 0);
    this.#procs.set(proc.proc, proc);
    if (stdinBytes !== undefined && proc.stdin) {
      const stdin = proc.stdin;
      void (async () => {
        await stdin.write(stdinBytes);
        if (!req.openStdin && req.pty === undefined) await stdin.end();
      })().catch(() => {});
    }
    const onAbort = () => {
      if (!req.background) void this.#client.request("signal", { proc: proc.proc, signal: "SIGKILL" }).catch(() => {});
    };
    if (signal && !req.background) signal.addEventListener("abort", onAbort, { once: true });
    const exit = this.#crashAware(proc.exit)
      .then(async (e): Promise<ExitInfo> => {
        await Promise.all([stdout.flush(), stderr.flush()]);
        const oomAfter = await this.#launched.oomKills().catch(() => oomBefore);
        return {
          exitCode: e.exitCode,
          signal: e.signal,
          timedOut: e.timedOut,
          oomKilled: oomAfter > oomBefore,
          durationMs: e.durationMs,
          stdoutBytes: e.stdoutBytes,
          stderrBytes: e.stderrBytes,
          stdoutTruncated: e.stdoutTruncated,
          stderrTruncated: e.stderrTruncated,
          receipt: {
            sandboxId: this.info.id,
            proc: proc.proc,
            imageDigest: this.info.image.digest,
            backend: this.info.backend,
            startedAt: startedAt.toISOString(),
            finishedAt: new Date().toISOString(),
          },
        };
      })
      .finally(() => {
        signal?.removeEventListener("abort", onAbort);
        this.#procs.delete(proc.proc);
      });
    exit.catch(() => {});
    return { proc: proc.proc, pid: proc.pid, exit };
  }

  async writeStdin(procId: number, data: Uint8Array | null): Promise<void> {
    this.#assertRunning("write stdin");
    const proc = this.#procs.get(procId);
    if (!proc) throw new NotFoundError(`Process ${procId} not found in sandbox "${this.info.id}"`);
    if (!proc.stdin) throw new NotFoundError(`Process ${procId} in sandbox "${this.info.id}" has no open stdin`);
    if (data === null) await proc.stdin.end();
    else await proc.stdin.write(data);
  }

  async readFile(path: string): Promise<FileReadStream> {
    this.#assertRunning("read a file");
    return this.#crashAware(this.#client.readFile(path));
  }

  async writeFile(
    path: string,
    data: Uint8Array | AsyncIterable<Uint8Array>,
    options: CallOptions & { mode: number; createParents: boolean },
  ): Promise<{ bytes: number }> {
    this.#assertRunning("write a file");
    const signal = callSignal(options);
    const body: AsyncIterable<Uint8Array> = data instanceof Uint8Array ? once(data) : data;
    const bytes = await this.#crashAware(this.#client.writeFile(path, body, {
      mode: options.mode,
      createParents: options.createParents,
      ...(signal ? { signal } : {}),
    }));
    return { bytes };
  }
}

type Deliver = (chunk: Uint8Array) => unknown;

/**
 * Output handler that replaces secret values, even when one spans two chunks: up to the longest
 * secret's length minus one byte is held back until the next chunk or the flush at exit. What the
 * consumer returns (its back-pressure) is passed back to the caller.
 */
function redactedOutput(redactor: Redactor, deliver: Deliver): { write: Deliver; flush: () => Promise<void> } {
  if (redactor.empty) return { write: deliver, flush: async () => {} };
  const cursor = redactor.cursor();
  return {
    write: (chunk) => {
      const ready = cursor.push(chunk);
      return ready === undefined ? undefined : deliver(ready);
    },
    flush: async () => {
      const rest = cursor.end();
      if (rest !== undefined) await deliver(rest);
    },
  };
}

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data;
}

function withSignal<T>(p: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, what));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
