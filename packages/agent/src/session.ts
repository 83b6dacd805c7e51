/**
 * One agent session: reads host frames, checks the handshake, routes data frames to open streams,
 * dispatches requests and answers each exactly once. A host that breaks the protocol ends the
 * session with exit code 2; when the host goes away the session ends too. Either way every
 * process group is killed and temporary files are removed first.
 *
 * `quiesce` (for snapshots) moves the session through three modes:
 *
 *   serving --quiesce--> quiescing --answer sent--> quiesced --AGENT_RESUME_LINE--> serving
 *                                                           --AGENT_START_LINE---> serving (new host)
 *
 * Quiescing, the link holds every frame and the agent waits for execs being spawned and for the
 * relay's output to drain, then answers: the answer is the last byte it writes. Quiesced, it reads
 * one raw line instead of frames. Resume releases what was held; start detaches the old session
 * (its processes keep running, detached) and greets the new host with a fresh hello.
 */
import {
  AGENT_RESUME_LINE,
  AGENT_START_LINE,
  ErrorCode,
  FrameDecoder,
  FrameKind,
  HostHello,
  HostToAgent,
  Results,
  decodeCredit,
  encodeControl,
  encodeFrame,
  MAX_AGENT_LINE_BYTES,
  agentLineKind,
  parseControl,
  type Frame,
  type Op,
  type Request,
} from "@mvm/protocol";
import type { Channel } from "./channel.js";
import type { RequestContext } from "./context.js";
import { ProtocolViolation, logError, toErrorBody, type ErrorBody } from "./errors.js";
import { ProcessTable } from "./exec.js";
import { helloFrame } from "./hello.js";
import { Link } from "./link.js";
import { HANDLERS, type Handler } from "./ops.js";

/** Longest wait for the output to flush before a clean exit, in milliseconds. */
const EXIT_FLUSH_TIMEOUT_MS = 2000;

/** What aborts the streams of a session whose host is gone. */
const HOST_GONE: ErrorBody = {
  code: ErrorCode.Aborted,
  message: "The host of this stream is gone: the sandbox was restored from a snapshot",
};

/** What the session asks of the rest of the agent around a quiesce (the egress relay). */
export interface QuiesceHooks {
  /** Resolves once nothing more will be written on the agent's other channels. */
  quiesce(): Promise<void>;
  /** The same host carries on. */
  resume(): void;
  /** A new host took over: drop whatever state the old one shared. */
  restart(): void;
}

type Mode = "serving" | "quiescing" | "quiesced";

export class Session {
  readonly #channel: Channel;
  readonly #hooks: QuiesceHooks | undefined;
  #link: Link;
  readonly #procs: ProcessTable;
  #decoder = new FrameDecoder();
  readonly #exitCleanups = new Set<() => void>();
  #handshaken = false;
  #ending = false;
  #mode: Mode = "serving";
  /** Bytes of the raw line read so far while quiesced. */
  #line = Buffer.alloc(0);

  constructor(channel: Channel, hooks?: QuiesceHooks) {
    this.#channel = channel;
    this.#hooks = hooks;
    this.#link = new Link(channel.output);
    this.#procs = new ProcessTable(this.#link);
  }

  /** Starts reading host frames. The agent's hello has already been written. */
  start(): void {
    const { input, output } = this.#channel;
    input.on("data", (chunk: Buffer) => this.#onChunk(chunk));
    input.on("end", () => this.#onInputEnd());
    input.on("error", (err) => this.end(1, "channel read failed", err));
    output.on("error", (err) => this.end(1, "channel write failed", err));
    output.on("drain", () => {
      if (!this.#ending && this.#mode !== "quiescing") input.resume();
    });
  }

  /**
   * Ends the session: SIGKILLs every process group, runs the exit cleanups, then exits the
   * process with `code` (after flushing the output when the code is 0).
   */
  end(code: number, reason: string, err?: unknown): void {
    if (this.#ending) return;
    this.#ending = true;
    if (code !== 0 || err !== undefined) logError(reason, err);
    this.#channel.input.pause();
    this.#procs.killAll();
    this.#procs.cleanupSync();
    for (const cleanup of this.#exitCleanups) {
      try {
        cleanup();
      } catch {
        // Best effort on the way out.
      }
    }
    if (code !== 0) this.#exit(code);
    setTimeout(() => this.#exit(code), EXIT_FLUSH_TIMEOUT_MS);
    this.#link.finish(() => this.#exit(code));
  }

  #exit(code: number): void {
    if (this.#channel.blocksExit) process.kill(process.pid, "SIGKILL");
    process.exit(code);
  }

  #onChunk(chunk: Buffer): void {
    if (this.#ending) return;
    if (this.#mode === "quiesced") return this.#onLineBytes(chunk);
    try {
      if (this.#mode === "quiescing") throw new ProtocolViolation("Bytes after quiesce, before its answer");
      const frames = this.#decoder.push(chunk);
      for (let i = 0; i < frames.length; i++) {
        this.#onFrame(frames[i]!);
        if (this.#ending) return;
        if (this.#mode !== "serving") {
          // Nothing may follow quiesce until its answer: not a frame, not part of one.
          if (i + 1 < frames.length) throw new ProtocolViolation("A frame after quiesce, before its answer");
          this.#decoder.end();
          return;
        }
      }
    } catch (err) {
      this.end(2, `protocol violation by the host: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    if (this.#link.congested) this.#channel.input.pause();
  }

  /** Reads the raw line that ends a quiesce; the bytes after it belong to the session. */
  #onLineBytes(chunk: Buffer): void {
    const nl = chunk.indexOf(0x0a);
    const part = nl < 0 ? chunk : chunk.subarray(0, nl + 1);
    if (this.#line.length + part.length > MAX_AGENT_LINE_BYTES) {
      return this.end(2, `protocol violation by the host: no line end within ${MAX_AGENT_LINE_BYTES} bytes after quiesce`);
    }
    this.#line = Buffer.concat([this.#line, part]);
    if (nl < 0) return;
    const line = this.#line.toString("latin1");
    this.#line = Buffer.alloc(0);
    const kind = agentLineKind(line);
    if (kind === undefined) {
      const expected = `${JSON.stringify(AGENT_RESUME_LINE)} or ${JSON.stringify(AGENT_START_LINE)}`;
      return this.end(2, `protocol violation by the host: after quiesce expected ${expected}, got ${JSON.stringify(line)}`);
    }
    if (kind === "resume") this.#resume();
    else this.#restart();
    const rest = chunk.subarray(nl + 1);
    if (rest.length > 0) this.#onChunk(rest);
  }

  /** Stops writing, waits until nothing is in flight, then answers `quiesce` as the last frame out. */
  #quiesce(id: number): void {
    this.#mode = "quiescing";
    this.#link.hold();
    const link = this.#link;
    Promise.all([this.#procs.settled(), this.#hooks?.quiesce()])
      .then(
        () => {
          if (this.#ending) return;
          link.sendNow(encodeFrame(FrameKind.Control, 0, encodeControl({ t: "res", id, ok: true, result: {} })));
          this.#mode = "quiesced";
          this.#channel.input.resume();
        },
        (err: unknown) => {
          if (this.#ending) return;
          logError("cannot quiesce", err);
          // The host holds its frames until it has the answer, so the error goes out first.
          link.sendNow(encodeFrame(FrameKind.Control, 0, encodeControl({ t: "res", id, ok: false, error: toErrorBody(err) })));
          this.#mode = "serving";
          link.release();
          this.#hooks?.resume();
          this.#channel.input.resume();
        },
      )
      .catch((err: unknown) => this.end(2, "cannot answer quiesce", err));
  }

  /** The host that quiesced the agent carries on: everything held goes out, in order. */
  #resume(): void {
    this.#mode = "serving";
    this.#link.release();
    this.#hooks?.resume();
  }

  /**
   * A new host (a restored copy): the old session's calls, streams and credit are dropped, its
   * processes run on detached, the relay starts over, and the new host gets a fresh hello.
   */
  #restart(): void {
    const link = new Link(this.#channel.output);
    this.#procs.detachAll(link);
    this.#link.detach(HOST_GONE);
    this.#link = link;
    this.#decoder = new FrameDecoder();
    this.#handshaken = false;
    this.#mode = "serving";
    this.#hooks?.restart();
    link.sendFrame(helloFrame());
  }

  #onInputEnd(): void {
    if (this.#mode === "quiesced" && !this.#ending) {
      this.end(0, "channel closed by the host while quiesced");
      return;
    }
    try {
      this.#decoder.end();
    } catch (err) {
      this.end(2, `protocol violation by the host: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    this.end(0, "channel closed by the host");
  }

  /** Handles one frame; throws on a protocol violation. */
  #onFrame(frame: Frame): void {
    if (!this.#handshaken) {
      if (frame.kind !== FrameKind.Control) throw new ProtocolViolation(`Expected the host hello, got a frame of kind ${frame.kind}`);
      parseControl(HostHello, frame.payload);
      this.#handshaken = true;
      return;
    }
    if (frame.kind === FrameKind.Control) {
      const message = parseControl(HostToAgent, frame.payload);
      if (message.t === "abort") this.#link.get(message.stream)?.receiveAbort(message.error);
      else this.#dispatch(message);
      return;
    }
    const stream = this.#link.get(frame.stream);
    if (frame.kind === FrameKind.Credit) {
      const bytes = decodeCredit(frame);
      if (!stream) return;
      if (stream.direction !== "out") throw new ProtocolViolation(`Credit for stream ${frame.stream}, which the host writes`);
      stream.receiveCredit(bytes);
      return;
    }
    if (!stream) return;
    if (stream.direction !== "in") throw new ProtocolViolation(`Data frame on stream ${frame.stream}, which the agent writes`);
    const payload = Buffer.from(frame.payload.buffer, frame.payload.byteOffset, frame.payload.byteLength);
    if (frame.kind === FrameKind.Data) stream.receive(payload);
    else stream.receiveEnd();
  }

  #dispatch(req: Request): void {
    if (req.op === "shutdown") {
      this.#link.sendControl({ t: "res", id: req.id, ok: true, result: {} });
      this.end(0, "shutdown requested by the host");
      return;
    }
    if (req.op === "quiesce") {
      this.#quiesce(req.id);
      return;
    }
    const after: Array<() => void> = [];
    // The answer goes to the host that asked, even if a new one takes over meanwhile.
    const link = this.#link;
    const ctx: RequestContext = {
      link,
      procs: this.#procs,
      onExit: (cleanup) => {
        this.#exitCleanups.add(cleanup);
        return () => this.#exitCleanups.delete(cleanup);
      },
      afterResponse: (fn) => after.push(fn),
    };
    const handler = HANDLERS[req.op] as Handler<Op>;
    new Promise<unknown>((resolve) => resolve(handler(req, ctx)))
      .then(
        (result) => {
          if (this.#ending) return;
          const checked = Results[req.op].safeParse(result);
          if (!checked.success) {
            logError(`result of ${req.op} failed its schema`, checked.error);
            respondError(link, req.id, new Error(`The agent produced an invalid ${req.op} result`));
            return;
          }
          link.sendControl({ t: "res", id: req.id, ok: true, result: checked.data });
          for (const fn of after) fn();
        },
        (err: unknown) => {
          if (!this.#ending) respondError(link, req.id, err);
        },
      )
      .catch((err: unknown) => this.end(2, `cannot answer request ${req.id}`, err));
  }
}

function respondError(link: Link, id: number, err: unknown): void {
  link.sendControl({ t: "res", id, ok: false, error: toErrorBody(err) });
}
