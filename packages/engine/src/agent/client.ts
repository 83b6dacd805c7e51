/**
 * Host side of a protocol v1 session with one agent. The agent is hostile: every frame is
 * bounded by the decoder, every control message is schema-checked, every stream is held to its
 * credit window and byte limit. The first violation ends the session with a TransportError.
 *
 * For a snapshot the session can be quiesced: `quiesce()` asks the agent to go quiet and from
 * then on holds every frame the host would send; once the agent has answered, any byte from it
 * is a violation. `resumeAfterQuiesce()` lets the same session carry on. A restored copy of the
 * guest is not resumed: its new host writes AGENT_START_LINE and connects a new client.
 */
import type { Duplex } from "node:stream";
import {
  AGENT_RESUME_LINE,
  AbortedError,
  AgentHello,
  AgentToHost,
  CONTROL_STREAM,
  ExitEvent,
  FrameDecoder,
  FrameError,
  FrameKind,
  InvalidArgumentError,
  MAX_REQUEST_ID,
  PROTOCOL_VERSION,
  Results,
  TimeoutError,
  TransportError,
  decodeCredit,
  encodeControl,
  encodeCredit,
  encodeFrame,
  fromWire,
  parseControl,
  type Frame,
  type MvmError,
  type Op,
  type RequestOf,
  type ResultOf,
} from "@mvm/protocol";
import { InboundStream, OutboundStream, ProtocolViolation, type ChunkHandler, type FrameSink } from "./streams.js";

export type RequestParams<O extends Op> = Omit<RequestOf<O>, "t" | "id" | "op">;

/**
 * Where a process's output goes. A handler that returns a promise holds that stream: its next
 * chunk, and the agent's credit for this one, wait until the promise settles.
 */
export interface ExecOutput {
  onStdout: ChunkHandler;
  onStderr: ChunkHandler;
  /** Called once when a handler throws or rejects; later output of that stream is dropped. */
  onHandlerFailure?(error: unknown): void;
}

export interface AgentProcess {
  proc: number;
  pid: number;
  stdin: OutboundStream | undefined;
  exit: Promise<ExitEvent>;
}

interface Pending {
  op: Op;
  resolve(value: unknown): void;
  reject(err: MvmError): void;
  timer: NodeJS.Timeout | undefined;
}

export interface AgentClientOptions {
  /** Time allowed for the agent's hello, ms. */
  helloTimeoutMs: number;
  /** Default deadline for a control request, ms. */
  requestTimeoutMs?: number;
  signal?: AbortSignal;
  /** Label used in error messages, e.g. the sandbox id. */
  label: string;
}

/** Upper bound on a data stream the agent sends when no tighter limit applies (files). */
const UNBOUNDED_STREAM = Number.MAX_SAFE_INTEGER;

/**
 * A quiesce in progress. "asking": the request is out and the answer not in; "quiet": the agent
 * answered and reads nothing but a raw line. In both phases outgoing frames are held here.
 */
interface Quiesce {
  phase: "asking" | "quiet";
  readonly held: Buffer[];
  /** The caller gave up waiting for the answer: resume as soon as it comes. */
  abandoned: boolean;
}

export class AgentClient implements FrameSink {
  readonly #channel: Duplex;
  readonly #decoder = new FrameDecoder();
  readonly #label: string;
  readonly #requestTimeoutMs: number;
  #nextId = 1;
  #nextStream = 1;
  readonly #pending = new Map<number, Pending>();
  readonly #inbound = new Map<number, InboundStream>();
  readonly #outbound = new Map<number, OutboundStream>();
  readonly #exits = new Map<
    number,
    { resolve(e: ExitEvent): void; reject(err: MvmError): void; streams: InboundStream[]; stdin: OutboundStream | undefined }
  >();
  #closedError: MvmError | undefined;
  #quiesce: Quiesce | undefined;
  #onHello: ((hello: AgentHello) => void) | undefined;
  readonly closed: Promise<MvmError>;
  #resolveClosed!: (err: MvmError) => void;

  private constructor(channel: Duplex, label: string, requestTimeoutMs: number) {
    this.#channel = channel;
    this.#label = label;
    this.#requestTimeoutMs = requestTimeoutMs;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    channel.on("data", (chunk: Buffer) => this.#onBytes(chunk));
    channel.on("end", () => {
      try {
        this.#decoder.end();
        this.#fail(new TransportError(`Agent of "${label}" closed the channel`));
      } catch (err) {
        this.#fail(new TransportError(`Agent of "${label}" closed the channel mid-frame`, { cause: err }));
      }
    });
    channel.on("error", (err) => this.#fail(new TransportError(`Channel to agent of "${label}" failed: ${err.message}`, { cause: err })));
    channel.on("close", () => this.#fail(new TransportError(`Channel to agent of "${label}" closed`)));
  }

  /** Waits for the agent's hello and answers it. */
  static async connect(channel: Duplex, options: AgentClientOptions): Promise<AgentClient> {
    const client = new AgentClient(channel, options.label, options.requestTimeoutMs ?? 30_000);
    let timer: NodeJS.Timeout | undefined;
    const onAbort = () => client.destroy(new TransportError(`Handshake with agent of "${options.label}" aborted`));
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const hello = await Promise.race([
        new Promise<AgentHello>((resolve) => (client.#onHello = resolve)),
        client.closed.then((err) => Promise.reject(err)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new TimeoutError(`Agent of "${options.label}" did not say hello within ${options.helloTimeoutMs} ms`)),
            options.helloTimeoutMs,
          );
        }),
      ]);
      if (!hello.versions.includes(PROTOCOL_VERSION)) {
        throw new TransportError(`Agent of "${options.label}" speaks protocol ${JSON.stringify(hello.versions)}, host speaks ${PROTOCOL_VERSION}`);
      }
      await client.#sendControl({ t: "hello", version: PROTOCOL_VERSION });
      return client;
    } catch (err) {
      client.destroy(err as MvmError);
      throw err;
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  get isClosed(): boolean {
    return this.#closedError !== undefined;
  }

  /** True from quiesce() until resumeAfterQuiesce() (or a failed quiesce). */
  get isQuiesced(): boolean {
    return this.#quiesce !== undefined;
  }

  /**
   * Asks the agent to go quiet for a snapshot and resolves once it has: it has written its last
   * frame (nothing the guest sent is still on its way), reads no frames, and its processes run on
   * with their output waiting in their pipes. From the request on, every frame this client would
   * send is held (calls may be made; they wait), and a byte from the agent once it has answered
   * is a violation that ends the session. Follow with resumeAfterQuiesce(), or drop this client
   * when the guest is not coming back to it.
   *
   * @param timeoutMs how long to wait for the answer; past it the promise rejects with a
   *   TimeoutError and the session resumes by itself whenever the answer arrives.
   * @throws InvalidArgumentError when a quiesce is already in progress
   * @throws TransportError when the session is closed or ends meanwhile
   * @throws the agent's error when it cannot quiesce (the session then carries on)
   * @example
   * await client.quiesce(10_000);
   * try { await saveTheGuest(); } finally { await client.resumeAfterQuiesce(); }
   */
  async quiesce(timeoutMs: number, options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#closedError) throw this.#closedError;
    if (this.#quiesce) throw new InvalidArgumentError(`Agent of "${this.#label}" is already quiesced`);
    options.signal?.throwIfAborted();
    const q: Quiesce = { phase: "asking", held: [], abandoned: false };
    const answer = this.request("quiesce", {}, { timeoutMs: 0 });
    // The request is written; everything after it waits until the agent reads frames again.
    this.#quiesce = q;
    answer.then(
      () => {
        if (this.#quiesce === q && q.abandoned) void this.resumeAfterQuiesce().catch(() => {});
      },
      () => {
        if (this.#quiesce === q) this.#flushHeld();
      },
    );
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      await Promise.race([
        answer,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new TimeoutError(`Agent of "${this.#label}" did not quiesce within ${timeoutMs} ms`)), timeoutMs);
          onAbort = () => reject(new AbortedError(`Quiesce of the agent of "${this.#label}" aborted`, { cause: options.signal?.reason }));
          options.signal?.addEventListener("abort", onAbort, { once: true });
        }),
      ]);
    } catch (err) {
      if (this.#quiesce === q) {
        q.abandoned = true;
        if (q.phase === "quiet") void this.resumeAfterQuiesce().catch(() => {});
      }
      throw err;
    } finally {
      clearTimeout(timer);
      if (onAbort) options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Lets a quiesced agent carry on with this session: writes AGENT_RESUME_LINE, then every frame
   * held since quiesce(), in order. In-flight calls, streams and credit continue where they were.
   *
   * @throws InvalidArgumentError when the agent is not quiesced (or has not answered yet)
   * @throws TransportError when the session is closed
   */
  async resumeAfterQuiesce(): Promise<void> {
    if (this.#closedError) throw this.#closedError;
    const q = this.#quiesce;
    if (!q || q.phase !== "quiet") throw new InvalidArgumentError(`Agent of "${this.#label}" is not quiesced`);
    const line = this.#writeNow(Buffer.from(AGENT_RESUME_LINE));
    this.#flushHeld();
    await line;
  }

  allocStream(): number {
    const id = this.#nextStream++;
    if (id > 0xffff_ffff) throw new TransportError(`Stream ids exhausted for "${this.#label}"`);
    return id;
  }

  /** Sends a request and validates the agent's answer against the op's result schema. */
  request<O extends Op>(op: O, params: RequestParams<O>, options: { timeoutMs?: number } = {}): Promise<ResultOf<O>> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    if (this.#nextId > MAX_REQUEST_ID) return Promise.reject(new TransportError(`Request ids exhausted for "${this.#label}"`));
    const id = this.#nextId++;
    return new Promise<ResultOf<O>>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.#requestTimeoutMs;
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.#pending.delete(id);
              reject(new TimeoutError(`Agent of "${this.#label}" did not answer ${op} within ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
      this.#pending.set(id, { op, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#sendControl({ t: "req", id, op, ...params }).catch((err: MvmError) => {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(err);
      });
    });
  }

  /**
   * Starts a process. Output goes to `output` as it arrives; `exit` settles once both streams
   * ended and their output was handed over (and rejects with what a handler threw, if one did).
   */
  async exec(
    params: Omit<RequestParams<"exec">, "stdin" | "stdout" | "stderr">,
    options: { openStdin: boolean; output: ExecOutput },
  ): Promise<AgentProcess> {
    const stdoutId = this.allocStream();
    const stderrId = this.allocStream();
    const stdinId = options.openStdin ? this.allocStream() : null;
    const limit = params.maxOutputBytes;
    const onHandlerFailure = (error: unknown): void => options.output.onHandlerFailure?.(error);
    const out = new InboundStream(stdoutId, this, { limit, onChunk: (c) => options.output.onStdout(c), onHandlerFailure });
    const err = new InboundStream(stderrId, this, { limit, onChunk: (c) => options.output.onStderr(c), onHandlerFailure });
    this.#inbound.set(stdoutId, out);
    this.#inbound.set(stderrId, err);
    const stdin = stdinId === null ? undefined : new OutboundStream(stdinId, this);
    if (stdin) this.#outbound.set(stdin.id, stdin);
    const id = this.#nextId;
    let exitResolve!: (e: ExitEvent) => void;
    let exitReject!: (e: MvmError) => void;
    const exit = new Promise<ExitEvent>((resolve, reject) => {
      exitResolve = resolve;
      exitReject = reject;
    });
    exit.catch(() => {});
    this.#exits.set(id, { resolve: exitResolve, reject: exitReject, streams: [out, err], stdin });
    try {
      const { pid } = await this.request("exec", { ...params, stdin: stdinId, stdout: stdoutId, stderr: stderrId });
      return { proc: id, pid, stdin, exit };
    } catch (e) {
      this.#exits.delete(id);
      this.#inbound.delete(stdoutId);
      this.#inbound.delete(stderrId);
      if (stdin) this.#outbound.delete(stdin.id);
      throw e;
    }
  }

  /** Opens a file in the sandbox for reading; the body pulls with back-pressure. */
  async readFile(path: string): Promise<{ size: number; body: AsyncIterable<Uint8Array> }> {
    const stream = this.allocStream();
    const inbound = new InboundStream(stream, this, { limit: UNBOUNDED_STREAM });
    this.#inbound.set(stream, inbound);
    try {
      const { size } = await this.request("readFile", { path, stream });
      const self = this;
      async function* body(): AsyncGenerator<Uint8Array> {
        let seen = 0;
        try {
          for await (const chunk of inbound.chunks()) {
            seen += chunk.byteLength;
            if (seen > size) throw new TransportError(`Agent sent more than the ${size} bytes it announced for "${path}"`);
            yield chunk;
          }
          if (seen !== size) throw new TransportError(`Agent sent ${seen} of ${size} bytes announced for "${path}"`);
        } finally {
          self.#inbound.delete(stream);
          if (!inbound.ended) {
            inbound.fail(new TransportError("Read abandoned"));
            self.#sendControl({ t: "abort", stream, error: { code: "ABORTED", message: "reader went away" } }).catch(() => {});
          }
        }
      }
      return { size, body: body() };
    } catch (e) {
      this.#inbound.delete(stream);
      throw e;
    }
  }

  /** Streams bytes into a file in the sandbox; resolves with the byte count the agent confirms. */
  async writeFile(
    path: string,
    data: AsyncIterable<Uint8Array>,
    options: { mode: number; createParents: boolean; signal?: AbortSignal },
  ): Promise<number> {
    const stream = this.allocStream();
    const out = new OutboundStream(stream, this);
    this.#outbound.set(stream, out);
    const answer = this.request("writeFile", { path, stream, mode: options.mode, createParents: options.createParents }, { timeoutMs: 0 });
    answer.catch(() => {});
    let sent = 0;
    try {
      const pump = (async () => {
        for await (const chunk of data) {
          options.signal?.throwIfAborted();
          if (out.closed) return; // the agent answered early (an error); stop sending
          await out.write(chunk);
          sent += chunk.byteLength;
        }
        await out.end();
      })();
      // The agent may answer with an error before the body is done: that wins.
      await Promise.race([pump, answer.then(() => undefined)]);
      const { bytes } = await answer;
      if (bytes !== sent) throw new TransportError(`Agent stored ${bytes} bytes of "${path}", host sent ${sent}`);
      return bytes;
    } catch (e) {
      if (!out.closed) {
        out.fail(new TransportError("Write abandoned"));
        await this.#sendControl({ t: "abort", stream, error: { code: "ABORTED", message: "write abandoned" } }).catch(() => {});
      }
      throw e;
    } finally {
      this.#outbound.delete(stream);
    }
  }

  /** Ends the session: pending calls fail with `err`, the channel is destroyed. Idempotent. */
  destroy(err: MvmError = new TransportError(`Session with agent of "${this.#label}" closed`)): void {
    this.#fail(err);
  }

  // ---- FrameSink ----

  async sendData(stream: number, payload: Uint8Array): Promise<void> {
    await this.#write(encodeFrame(FrameKind.Data, stream, payload));
  }
  async sendEnd(stream: number): Promise<void> {
    await this.#write(encodeFrame(FrameKind.End, stream));
  }
  sendCredit(stream: number, bytes: number): void {
    this.#write(encodeCredit(stream, bytes)).catch(() => {});
  }

  // ---- internals ----

  #sendControl(message: object): Promise<void> {
    return this.#write(encodeFrame(FrameKind.Control, CONTROL_STREAM, encodeControl(message)));
  }

  #write(frame: Buffer): Promise<void> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    if (this.#quiesce) {
      // Bounded by what is in flight: credit per stream consumed, data within the agent's credit.
      this.#quiesce.held.push(frame);
      return Promise.resolve();
    }
    return this.#writeNow(frame);
  }

  /** Ends a quiesce: writes the held frames in order and lets later ones through. */
  #flushHeld(): void {
    const q = this.#quiesce;
    this.#quiesce = undefined;
    if (!q) return;
    for (const frame of q.held) this.#writeNow(frame).catch(() => {});
  }

  #writeNow(frame: Buffer): Promise<void> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    return new Promise<void>((resolve, reject) => {
      const ok = this.#channel.write(frame, (err) => {
        if (err) reject(new TransportError(`Write to agent of "${this.#label}" failed: ${err.message}`, { cause: err }));
      });
      if (ok) resolve();
      else {
        this.#channel.once("drain", resolve);
        void this.closed.then(() => resolve());
      }
    });
  }

  #isQuiet(): boolean {
    return this.#quiesce?.phase === "quiet";
  }

  #onBytes(chunk: Buffer): void {
    if (this.#closedError) return;
    if (this.#isQuiet()) {
      this.#fail(new TransportError(`Agent of "${this.#label}" sent ${chunk.length} bytes while quiesced`));
      return;
    }
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.#fail(new TransportError(`Agent of "${this.#label}" sent a bad frame: ${(err as FrameError).message}`, { cause: err }));
      return;
    }
    for (let i = 0; i < frames.length; i++) {
      try {
        this.#onFrame(frames[i]!);
        if (this.#isQuiet()) {
          // The answer to quiesce is the agent's last frame: nothing may follow, not even part of one.
          if (i + 1 < frames.length) throw new ProtocolViolation("A frame after its answer to quiesce");
          this.#decoder.end();
        }
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        this.#fail(new TransportError(`Agent of "${this.#label}" broke the protocol: ${reason}`, { cause: err }));
        return;
      }
    }
  }

  #onFrame(frame: Frame): void {
    switch (frame.kind) {
      case FrameKind.Control:
        return this.#onControl(frame.payload);
      case FrameKind.Data:
        if (this.#onHello) throw new ProtocolViolation("Data before hello");
        this.#inbound.get(frame.stream)?.onData(frame.payload);
        return;
      case FrameKind.End: {
        const s = this.#inbound.get(frame.stream);
        if (s) {
          s.onEnd();
          // Queued (iterator) streams stay registered until their reader finishes.
          if (s.ended && this.#isCallbackStream(s)) this.#inbound.delete(frame.stream);
        }
        return;
      }
      case FrameKind.Credit:
        this.#outbound.get(frame.stream)?.onCredit(decodeCredit(frame));
        return;
    }
  }

  #isCallbackStream(s: InboundStream): boolean {
    for (const e of this.#exits.values()) if (e.streams.includes(s)) return true;
    return false;
  }

  #onControl(payload: Uint8Array): void {
    if (this.#onHello) {
      const hello = parseControl(AgentHello, payload);
      const cb = this.#onHello;
      this.#onHello = undefined;
      cb(hello);
      return;
    }
    const msg = parseControl(AgentToHost, payload);
    switch (msg.t) {
      case "res": {
        const p = this.#pending.get(msg.id);
        if (!p) throw new ProtocolViolation(`Response to unknown request ${msg.id}`);
        this.#pending.delete(msg.id);
        clearTimeout(p.timer);
        // Quiet from this frame on: #onBytes checks it before the next byte is looked at.
        if (p.op === "quiesce" && msg.ok && this.#quiesce) this.#quiesce.phase = "quiet";
        if (msg.ok) {
          const r = Results[p.op].safeParse(msg.result);
          if (!r.success) {
            const e = new TransportError(`Agent answered ${p.op} with an invalid result`);
            p.reject(e);
            throw new ProtocolViolation(e.message);
          }
          p.resolve(r.data);
        } else {
          p.reject(fromWire({ code: msg.error.code, message: msg.error.message }));
        }
        return;
      }
      case "exit": {
        const e = this.#exits.get(msg.proc);
        if (!e) throw new ProtocolViolation(`Exit of unknown process ${msg.proc}`);
        this.#exits.delete(msg.proc);
        for (const s of e.streams) {
          if (!s.ended) s.onEnd();
          this.#inbound.delete(s.id);
        }
        const [out, err] = e.streams as [InboundStream, InboundStream];
        if (msg.stdoutTruncated === false && msg.stdoutBytes !== out.bytes) {
          throw new ProtocolViolation(`Exit of process ${msg.proc} reports ${msg.stdoutBytes} stdout bytes, ${out.bytes} arrived`);
        }
        if (msg.stderrTruncated === false && msg.stderrBytes !== err.bytes) {
          throw new ProtocolViolation(`Exit of process ${msg.proc} reports ${msg.stderrBytes} stderr bytes, ${err.bytes} arrived`);
        }
        if (e.stdin) {
          e.stdin.fail(new TransportError(`Process ${msg.proc} has exited`));
          this.#outbound.delete(e.stdin.id);
        }
        // The exit is reported once the consumer has taken all the output (or the session ends first).
        Promise.race([Promise.all([out.delivered, err.delivered]), this.closed.then((closed) => Promise.reject(closed))]).then(
          () => e.resolve(msg),
          (failure: unknown) => e.reject(failure as MvmError),
        );
        return;
      }
      case "abort": {
        const err = fromWire({ code: msg.error.code, message: msg.error.message });
        this.#inbound.get(msg.stream)?.fail(err);
        this.#inbound.delete(msg.stream);
        this.#outbound.get(msg.stream)?.fail(err);
        return;
      }
    }
  }

  #fail(err: MvmError): void {
    if (this.#closedError) return;
    this.#closedError = err;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#pending.clear();
    for (const s of this.#inbound.values()) s.fail(err);
    for (const s of this.#outbound.values()) s.fail(err);
    for (const e of this.#exits.values()) e.reject(err);
    this.#inbound.clear();
    this.#outbound.clear();
    this.#exits.clear();
    this.#channel.destroy();
    this.#resolveClosed(err);
  }
}
