/**
 * A client for QEMU's machine protocol (QMP) over a connected stream socket.
 *
 * QMP is line-oriented JSON: QEMU sends a greeting, the client answers `qmp_capabilities`, then
 * each command gets exactly one reply (`{"return": …}` or `{"error": {"class", "desc"}}`) carrying
 * the command's `id`, and asynchronous events (`{"event", "data"?, "timestamp"}`) may arrive
 * between replies. QEMU processes guest-influenced state, so every line is size-bounded before it
 * is buffered, decoded as strict JSON (parseJsonStrict: no key twice in one object, no `__proto__`
 * key, at most QMP_MAX_DEPTH deep) and schema-checked before it is used; any breach closes the
 * connection with a TransportError. One command is on the wire at a time; later ones wait in a
 * queue.
 */
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import { AbortedError, InternalError, type MvmError, StrictJsonError, TimeoutError, TransportError, parseJsonStrict } from "@mvm/protocol";
import { z } from "zod";

/** The longest QMP line accepted, bytes (without the line end). */
export const DEFAULT_QMP_MAX_LINE_BYTES = 1024 * 1024;
/** Deepest nesting of objects and arrays accepted in a QMP line. */
export const QMP_MAX_DEPTH = 64;

const greetingSchema = z.strictObject({
  QMP: z.strictObject({
    version: z.strictObject({
      qemu: z.strictObject({ major: z.int().nonnegative(), minor: z.int().nonnegative(), micro: z.int().nonnegative() }),
      package: z.string().max(256),
    }),
    capabilities: z.array(z.string().max(64)).max(64),
  }),
});
/** QEMU's greeting: its version and the optional capabilities it offers. */
export type QmpGreeting = z.infer<typeof greetingSchema>["QMP"];

const idSchema = z.string().max(64);
const returnSchema = z.strictObject({ return: z.unknown(), id: idSchema.optional() });
const errorSchema = z.strictObject({
  error: z.strictObject({ class: z.string().max(128), desc: z.string().max(64 * 1024) }),
  id: idSchema.optional(),
});
const eventSchema = z.strictObject({
  event: z.string().regex(/^[A-Z0-9_]{1,64}$/),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.strictObject({ seconds: z.int(), microseconds: z.int() }),
});
const messageSchema = z.union([returnSchema, errorSchema, eventSchema]);

/** An asynchronous QMP event, e.g. `{ event: "MIGRATION", data: { status: "completed" } }`. */
export type QmpEvent = z.infer<typeof eventSchema>;

/** QEMU answered a command with an error. `errorClass` and `desc` are QEMU's, verbatim. */
export class QmpCommandError extends InternalError {
  /** QEMU's error class, e.g. "CommandNotFound" or "GenericError". */
  readonly errorClass: string;
  /** QEMU's human-readable description. */
  readonly desc: string;
  /** The command that failed. */
  readonly command: string;
  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP command "${command}" failed: ${errorClass}: ${JSON.stringify(desc)}`);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

export interface QmpConnectOptions {
  /** How long to wait for the greeting and the `qmp_capabilities` reply, ms. @default 10000 */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /** The longest line accepted from QEMU, bytes. @default 1 MiB */
  readonly maxLineBytes?: number;
  /** Names this connection in error messages, e.g. the sandbox id. @default "qmp" */
  readonly label?: string;
}

export interface QmpCallOptions {
  /** Deadline for the reply, counted from the call (time spent queued included), ms. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

interface Pending {
  readonly id: string;
  readonly command: string;
  readonly line: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: MvmError) => void;
  /** Set once the caller gave up (timeout, abort): the reply is read and dropped. */
  abandoned: boolean;
  cleanup: () => void;
}

function deadlineError(signal: AbortSignal, what: string): MvmError {
  const reason: unknown = signal.reason;
  if (reason instanceof DOMException && reason.name === "TimeoutError") return new TimeoutError(`${what} timed out`, { cause: reason });
  return new AbortedError(`${what} was aborted`, { cause: reason });
}

function callSignal(timeoutMs: number, signal: AbortSignal | undefined): AbortSignal {
  const deadline = AbortSignal.timeout(timeoutMs);
  return signal === undefined ? deadline : AbortSignal.any([deadline, signal]);
}

/**
 * @example
 * const qmp = await QmpClient.connect(child.stdio[5] as Duplex, { timeoutMs: 10_000, label: "sbx_1" });
 * const status = await qmp.execute("query-status", undefined, { timeoutMs: 5_000 });
 * qmp.close();
 */
export class QmpClient {
  /** The greeting QEMU sent. */
  readonly greeting: QmpGreeting;
  /** Resolves when the connection is closed (by either side or by a protocol error); never rejects. */
  readonly closed: Promise<void>;
  private readonly socket: Duplex;
  private readonly label: string;
  private readonly events = new EventEmitter();
  private readonly queue: Pending[] = [];
  private inFlight: Pending | undefined;
  private nextId = 1;
  private failure: TransportError | undefined;

  private constructor(socket: Duplex, greeting: QmpGreeting, label: string, closed: Promise<void>) {
    this.socket = socket;
    this.greeting = greeting;
    this.label = label;
    this.closed = closed;
  }

  /**
   * Reads QEMU's greeting from `socket`, enters command mode, and returns the client.
   * Throws TransportError when the peer breaks the protocol or hangs up, TimeoutError or
   * AbortedError when the deadline or `signal` fires first; the socket is destroyed on failure.
   */
  static async connect(socket: Duplex, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const label = options.label ?? "qmp";
    const maxLineBytes = options.maxLineBytes ?? DEFAULT_QMP_MAX_LINE_BYTES;
    const signal = callSignal(options.timeoutMs ?? 10_000, options.signal);
    let client: QmpClient | undefined;
    let greeted: (greeting: QmpGreeting) => void = () => undefined;
    let refused: (err: MvmError) => void = () => undefined;
    const greeting = new Promise<QmpGreeting>((resolve, reject) => {
      greeted = resolve;
      refused = reject;
    });
    let resolveClosed: () => void = () => undefined;
    const closed = new Promise<void>((resolve) => (resolveClosed = resolve));

    const fail = (err: TransportError) => {
      if (client !== undefined) client.fail(err);
      else refused(err);
      socket.destroy();
    };
    const onLine = (line: Buffer) => {
      let value: unknown;
      try {
        value = parseJsonStrict(new TextDecoder("utf-8", { fatal: true }).decode(line), { maxDepth: QMP_MAX_DEPTH });
      } catch (err) {
        if (err instanceof StrictJsonError && err.fault !== "syntax") {
          return fail(new TransportError(`QMP peer "${label}" sent a line that is not strict JSON: ${err.detail}`, { cause: err }));
        }
        return fail(new TransportError(`QMP peer "${label}" sent a line that is not JSON: ${JSON.stringify(line.subarray(0, 80).toString("latin1"))}`, { cause: err }));
      }
      if (client !== undefined) return client.handle(value);
      const parsed = greetingSchema.safeParse(value);
      if (!parsed.success) return fail(new TransportError(`QMP peer "${label}" sent no valid greeting`, { cause: parsed.error }));
      greeted(parsed.data.QMP);
    };

    let chunks: Buffer[] = [];
    let buffered = 0;
    socket.on("data", (data: Buffer | string) => {
      let chunk = typeof data === "string" ? Buffer.from(data) : data;
      while (!socket.destroyed) {
        const end = chunk.indexOf(0x0a);
        const take = end < 0 ? chunk.length : end;
        if (buffered + take > maxLineBytes) {
          return fail(new TransportError(`QMP peer "${label}" sent a line over ${maxLineBytes} bytes`));
        }
        if (end < 0) {
          if (chunk.length > 0) chunks.push(chunk);
          buffered += chunk.length;
          return;
        }
        chunks.push(chunk.subarray(0, end));
        let line = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
        chunks = [];
        buffered = 0;
        chunk = chunk.subarray(end + 1);
        if (line.at(-1) === 0x0d) line = line.subarray(0, -1);
        if (line.length > 0) onLine(line);
      }
    });
    const onGone = (err?: Error) => {
      fail(new TransportError(`QMP connection "${label}" closed`, err ? { cause: err } : {}));
      resolveClosed();
    };
    socket.once("error", onGone);
    socket.once("close", () => onGone());
    socket.once("end", () => onGone());

    const onAbort = () => {
      refused(deadlineError(signal, `QMP connect to "${label}"`));
      socket.destroy();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      if (signal.aborted) onAbort();
      client = new QmpClient(socket, await greeting, label, closed);
      await client.execute("qmp_capabilities", undefined, { timeoutMs: options.timeoutMs ?? 10_000, ...(options.signal ? { signal: options.signal } : {}) });
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Runs one QMP command and resolves with its `return` value (unvalidated: check it with a
   * schema). Throws QmpCommandError when QEMU answers with an error, TransportError when the
   * connection breaks or the peer breaks the protocol, TimeoutError / AbortedError when
   * `timeoutMs` / `signal` fires first.
   * @example await qmp.execute("migrate", { uri: "fd:4" }, { timeoutMs: 5_000 });
   */
  execute(command: string, args?: Record<string, unknown>, options: QmpCallOptions = { timeoutMs: 30_000 }): Promise<unknown> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const signal = callSignal(options.timeoutMs, options.signal);
    if (signal.aborted) return Promise.reject(deadlineError(signal, `QMP command "${command}"`));
    const id = `mvm-${this.nextId++}`;
    const line = `${JSON.stringify({ execute: command, ...(args !== undefined ? { arguments: args } : {}), id })}\n`;
    return new Promise<unknown>((resolve, reject) => {
      const pending: Pending = { id, command, line, resolve, reject, abandoned: false, cleanup: () => undefined };
      const onAbort = () => {
        pending.abandoned = true;
        const at = this.queue.indexOf(pending);
        if (at >= 0) this.queue.splice(at, 1);
        reject(deadlineError(signal, `QMP command "${command}" on "${this.label}"`));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      pending.cleanup = () => signal.removeEventListener("abort", onAbort);
      this.queue.push(pending);
      this.pump();
    });
  }

  /** Calls `listener` (which must not throw) for every event QEMU sends. Returns a function that removes it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.events.on("event", listener);
    return () => this.events.off("event", listener);
  }

  /**
   * Resolves with the next event called `name` (and matching `predicate`, when given) that
   * arrives after this call. Throws TimeoutError / AbortedError, or TransportError when the
   * connection closes first.
   */
  waitForEvent(name: string, options: QmpCallOptions & { readonly predicate?: (event: QmpEvent) => boolean }): Promise<QmpEvent> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const signal = callSignal(options.timeoutMs, options.signal);
    return new Promise<QmpEvent>((resolve, reject) => {
      const done = () => {
        off();
        this.events.off("failed", onFailed);
        signal.removeEventListener("abort", onAbort);
      };
      const off = this.onEvent((event) => {
        if (event.event !== name || (options.predicate !== undefined && !options.predicate(event))) return;
        done();
        resolve(event);
      });
      const onFailed = (err: TransportError) => {
        done();
        reject(err);
      };
      const onAbort = () => {
        done();
        reject(deadlineError(signal, `Waiting for QMP event "${name}" on "${this.label}"`));
      };
      this.events.on("failed", onFailed);
      signal.addEventListener("abort", onAbort, { once: true });
      if (signal.aborted) onAbort();
    });
  }

  /** Closes the connection; commands not yet answered fail with TransportError. Idempotent. */
  close(): void {
    this.fail(new TransportError(`QMP connection "${this.label}" closed`));
    this.socket.destroy();
  }

  /** Sends the next queued command when none is on the wire. */
  private pump(): void {
    if (this.inFlight !== undefined || this.failure !== undefined) return;
    const next = this.queue.shift();
    if (next === undefined) return;
    this.inFlight = next;
    this.socket.write(next.line);
  }

  private handle(value: unknown): void {
    const parsed = messageSchema.safeParse(value);
    if (!parsed.success) {
      this.fail(new TransportError(`QMP peer "${this.label}" sent a message of unexpected shape`, { cause: parsed.error }));
      this.socket.destroy();
      return;
    }
    const message = parsed.data;
    if ("event" in message) {
      this.events.emit("event", message);
      return;
    }
    const pending = this.inFlight;
    if (pending === undefined || message.id !== pending.id) {
      this.fail(new TransportError(`QMP peer "${this.label}" sent a reply with unexpected id ${JSON.stringify(message.id ?? null)}`));
      this.socket.destroy();
      return;
    }
    this.inFlight = undefined;
    pending.cleanup();
    if (!pending.abandoned) {
      if ("error" in message) pending.reject(new QmpCommandError(pending.command, message.error.class, message.error.desc));
      else pending.resolve(message.return);
    }
    this.pump();
  }

  private fail(err: TransportError): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    const waiting = [...(this.inFlight ? [this.inFlight] : []), ...this.queue.splice(0)];
    this.inFlight = undefined;
    for (const pending of waiting) {
      pending.cleanup();
      if (!pending.abandoned) pending.reject(err);
    }
    this.events.emit("failed", err);
  }
}
