/**
 * A small, strict server side of the Connect protocol with its JSON codec, the part E2B's envd
 * clients use: unary calls (`application/json` body in, JSON out) and server-streaming calls
 * (`application/connect+json`: one enveloped request; enveloped responses, then an end-stream
 * envelope that carries the error, if any).
 *
 * Envelope:
 * ```
 * +-------+------------------+----------------------+
 * | flags | length (u32, BE) | JSON message (length) |
 * +-------+------------------+----------------------+
 *   1 B          4 B               flags 0x02: end of stream
 * ```
 * Every request body is size-capped before it is buffered and parsed with parseJsonStrict.
 */
import { once } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { ZodError } from "zod";
import {
  AlreadyExistsError,
  InvalidArgumentError,
  MvmError,
  NotFoundError,
  PermissionDeniedError,
  PolicyDeniedError,
  SandboxPausedError,
  TimeoutError,
  UnsupportedCapabilityError,
  parseJsonStrict,
} from "@mvm/protocol";

/** Connect error codes, with the HTTP status a unary error answers with. */
export const CONNECT_STATUS = {
  canceled: 499,
  unknown: 500,
  invalid_argument: 400,
  deadline_exceeded: 504,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  resource_exhausted: 429,
  failed_precondition: 400,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  data_loss: 500,
  unauthenticated: 401,
} as const;
export type ConnectCode = keyof typeof CONNECT_STATUS;

/** An error answered as a Connect error with this code. */
export class ConnectError extends Error {
  constructor(
    readonly code: ConnectCode,
    message: string,
  ) {
    super(message);
  }
}

/** The Connect code of an error the engine (or this server) raised. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof ZodError) return new ConnectError("invalid_argument", `Invalid request: ${err.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ").slice(0, 1000)}`);
  if (err instanceof NotFoundError) return new ConnectError("not_found", message);
  if (err instanceof InvalidArgumentError) return new ConnectError("invalid_argument", message);
  if (err instanceof AlreadyExistsError) return new ConnectError("already_exists", message);
  if (err instanceof PermissionDeniedError || err instanceof PolicyDeniedError) return new ConnectError("permission_denied", message);
  if (err instanceof UnsupportedCapabilityError) return new ConnectError("unimplemented", message);
  if (err instanceof TimeoutError) return new ConnectError("deadline_exceeded", message);
  if (err instanceof SandboxPausedError) return new ConnectError("failed_precondition", message);
  if (err instanceof MvmError) return new ConnectError("internal", message);
  return new ConnectError("internal", "Internal error");
}

/** Reads a request body of at most `maxBytes`; a larger one is refused before it is buffered further. */
export async function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > maxBytes) throw new ConnectError("resource_exhausted", `Request body over ${maxBytes} bytes`);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.byteLength;
    if (size > maxBytes) {
      req.destroy();
      throw new ConnectError("resource_exhausted", `Request body over ${maxBytes} bytes`);
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

/** Parses a JSON message (strict: no duplicate keys, bounded depth). */
export function parseMessage(bytes: Buffer): unknown {
  try {
    return parseJsonStrict(bytes.toString("utf8"), { maxDepth: 16 });
  } catch (err) {
    throw new ConnectError("invalid_argument", `Malformed JSON message: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** The single message of a server-streaming request body (exactly one envelope, not end-stream). */
export function unwrapEnvelope(body: Buffer): unknown {
  if (body.byteLength < 5) throw new ConnectError("invalid_argument", "Streaming request without an envelope");
  const flags = body.readUInt8(0);
  const length = body.readUInt32BE(1);
  if (flags !== 0 || length !== body.byteLength - 5) throw new ConnectError("invalid_argument", "Streaming request must be exactly one uncompressed envelope");
  return parseMessage(body.subarray(5));
}

function envelope(flags: number, message: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(message), "utf8");
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(json.byteLength, 1);
  return Buffer.concat([head, json]);
}

/** Answers a unary call: the message, or the error in Connect's JSON shape with its HTTP status. */
export function answerUnary(res: ServerResponse, result: { ok: unknown } | { error: unknown }): void {
  if (res.headersSent) return void res.end();
  if ("ok" in result) {
    const body = JSON.stringify(result.ok);
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  const e = toConnectError(result.error);
  const body = JSON.stringify({ code: e.code, message: e.message });
  res.writeHead(CONNECT_STATUS[e.code], { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/**
 * The response side of a server-streaming call. `send` waits while the socket's buffer is full
 * (back-pressure to the engine, and so to the workload); after the client went away it resolves
 * at once and `closed` is true.
 */
export class ServerStream {
  readonly #res: ServerResponse;
  #ended = false;

  constructor(res: ServerResponse) {
    this.#res = res;
    // The headers leave with the first message (one write, not two).
    res.writeHead(200, { "content-type": "application/connect+json" });
  }

  get closed(): boolean {
    return this.#ended || this.#res.destroyed || this.#res.writableEnded;
  }

  async send(message: unknown): Promise<void> {
    if (this.closed) return;
    if (!this.#res.write(envelope(0, message))) {
      await Promise.race([once(this.#res, "drain"), once(this.#res, "close")]);
    }
  }

  /** Ends the stream, with `error` in the end-stream message when given, after `last` when given (one write). */
  end(error?: unknown, last?: unknown): void {
    if (this.closed) return;
    this.#ended = true;
    const e = error === undefined ? undefined : toConnectError(error);
    const tail = envelope(2, e === undefined ? {} : { error: { code: e.code, message: e.message } });
    this.#res.end(last === undefined ? tail : Buffer.concat([envelope(0, last), tail]));
  }
}
