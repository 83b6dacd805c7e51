/**
 * One agent session: reads host frames, checks the handshake, routes data frames to open streams,
 * dispatches requests and answers each exactly once. A host that breaks the protocol ends the
 * session with exit code 2; when the host goes away the session ends too. Either way every
 * process group is killed and temporary files are removed first.
 */
import {
  FrameDecoder,
  FrameKind,
  HostHello,
  HostToAgent,
  Results,
  decodeCredit,
  parseControl,
  type Frame,
  type Op,
  type Request,
} from "@mvm/protocol";
import type { Channel } from "./channel.js";
import type { RequestContext } from "./context.js";
import { ProtocolViolation, logError, toErrorBody } from "./errors.js";
import { ProcessTable } from "./exec.js";
import { Link } from "./link.js";
import { HANDLERS, type Handler } from "./ops.js";

/** Longest wait for the output to flush before a clean exit, in milliseconds. */
const EXIT_FLUSH_TIMEOUT_MS = 2000;

export class Session {
  readonly #channel: Channel;
  readonly #link: Link;
  readonly #procs: ProcessTable;
  readonly #decoder = new FrameDecoder();
  readonly #exitCleanups = new Set<() => void>();
  #handshaken = false;
  #ending = false;

  constructor(channel: Channel) {
    this.#channel = channel;
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
      if (!this.#ending) input.resume();
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
    try {
      for (const frame of this.#decoder.push(chunk)) {
        this.#onFrame(frame);
        if (this.#ending) return;
      }
    } catch (err) {
      this.end(2, `protocol violation by the host: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    if (this.#link.congested) this.#channel.input.pause();
  }

  #onInputEnd(): void {
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
    const after: Array<() => void> = [];
    const ctx: RequestContext = {
      link: this.#link,
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
            this.#respondError(req.id, new Error(`The agent produced an invalid ${req.op} result`));
            return;
          }
          this.#link.sendControl({ t: "res", id: req.id, ok: true, result: checked.data });
          for (const fn of after) fn();
        },
        (err: unknown) => {
          if (!this.#ending) this.#respondError(req.id, err);
        },
      )
      .catch((err: unknown) => this.end(2, `cannot answer request ${req.id}`, err));
  }

  #respondError(id: number, err: unknown): void {
    this.#link.sendControl({ t: "res", id, ok: false, error: toErrorBody(err) });
  }
}
