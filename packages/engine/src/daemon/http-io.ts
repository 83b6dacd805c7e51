/**
 * Request and response plumbing of the daemon API: bounded body reads, strict validation,
 * JSON answers, and typed errors mapped to HTTP statuses.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import {
  DAEMON_BODY_IDLE_TIMEOUT_MS,
  InvalidArgumentError,
  MAX_API_REQUEST_JSON_BYTES,
  TimeoutError,
  toMvmError,
  type ErrorCode,
  type MvmError,
  type WireError,
} from "@mvm/protocol";

/** HTTP status the daemon answers with for each error code. */
export const HTTP_STATUS_BY_CODE: Record<ErrorCode, number> = {
  POLICY_DENIED: 403,
  ADMISSION_FAILED: 422,
  COMMAND_EXIT: 422,
  TIMEOUT: 504,
  TRANSPORT: 502,
  CLEANUP_FAILED: 500,
  SNAPSHOT_MISMATCH: 409,
  SANDBOX_CRASHED: 502,
  SANDBOX_PAUSED: 409,
  UNSUPPORTED_CAPABILITY: 422,
  NOT_FOUND: 404,
  INVALID_ARGUMENT: 400,
  PERMISSION_DENIED: 403,
  ALREADY_EXISTS: 409,
  ABORTED: 499,
  INTERNAL: 500,
  FUNCTION_FAILED: 422,
};

/** Longest error message put on the wire, in UTF-16 code units (the schemas allow more). */
const MAX_WIRE_MESSAGE = 4096;

/** An error the request itself caused, with the status to answer (e.g. 413, 405). */
export class HttpError extends InvalidArgumentError {
  readonly status: number;
  constructor(status: number, message: string, options: { cause?: unknown } = {}) {
    super(message, options);
    this.status = status;
  }
}

/** The wire form of any thrown value, with messages bounded to what every schema accepts. */
export function wireErrorOf(err: unknown): WireError {
  const wire = toMvmError(err).toWire();
  const out: WireError = { code: wire.code, message: wire.message.slice(0, MAX_WIRE_MESSAGE) };
  if (wire.hint !== undefined) out.hint = wire.hint.slice(0, MAX_WIRE_MESSAGE);
  if (wire.details !== undefined) out.details = wire.details;
  return out;
}

/** A request body that stopped arriving: 408, and the connection is closed. */
export class BodyStalledError extends TimeoutError {
  readonly status = 408;
}

export function statusOf(err: MvmError): number {
  return err instanceof HttpError || err instanceof BodyStalledError ? err.status : HTTP_STATUS_BY_CODE[err.code];
}

const bodyIdleTimeouts = new WeakMap<IncomingMessage, number>();

/** Sets how long reads of `req`'s body wait for the next byte (the server's setting). */
export function setBodyIdleTimeout(req: IncomingMessage, ms: number): void {
  bodyIdleTimeouts.set(req, ms);
}

/**
 * The request body's chunks, failing with BodyStalledError when the client sends nothing for the
 * body idle timeout while a chunk is awaited. Time the consumer spends between chunks (e.g.
 * back-pressure from a sandbox) does not count.
 */
export async function* bodyChunksWithDeadline(req: IncomingMessage): AsyncGenerator<Buffer> {
  const idleMs = bodyIdleTimeouts.get(req) ?? DAEMON_BODY_IDLE_TIMEOUT_MS;
  const it = (req as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  for (;;) {
    const next = it.next();
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<"stalled">((resolve) => (timer = setTimeout(() => resolve("stalled"), idleMs)));
    const r = await Promise.race([next, stalled]).finally(() => clearTimeout(timer));
    if (r === "stalled") {
      // The pending read settles when the connection closes; nothing waits for it.
      next.catch(() => {});
      throw new BodyStalledError(`Request body stalled: no byte for ${idleMs} ms`);
    }
    if (r.done === true) return;
    yield r.value;
  }
}

const JSON_HEADERS = { "Content-Type": "application/json", "Cache-Control": "no-store" } as const;

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...JSON_HEADERS, "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

export function sendNoContent(res: ServerResponse): void {
  res.writeHead(204, { "Cache-Control": "no-store" });
  res.end();
}

export function sendError(res: ServerResponse, err: unknown): void {
  const mvm = toMvmError(err);
  sendJson(res, statusOf(mvm), { error: wireErrorOf(mvm) });
}

/**
 * Reads a whole request body, refusing more than `maxBytes` (413) and a body that stalls (408).
 * The Content-Length header, when present, is checked before any byte is read.
 */
export async function readRawBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) > maxBytes) {
    throw new HttpError(413, `Request body of ${declared} bytes exceeds the limit of ${maxBytes} bytes`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of bodyChunksWithDeadline(req)) {
    total += chunk.byteLength;
    if (total > maxBytes) throw new HttpError(413, `Request body exceeds the limit of ${maxBytes} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/** Reads a JSON body (at most `maxBytes`) and validates it against `schema` (400 when invalid). */
export async function readJson<S extends z.ZodType>(
  req: IncomingMessage,
  schema: S,
  maxBytes: number = MAX_API_REQUEST_JSON_BYTES,
): Promise<z.infer<S>> {
  const raw = await readRawBody(req, maxBytes);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch (err) {
    throw new InvalidArgumentError("Request body is not UTF-8 JSON", { cause: err });
  }
  return check(schema, value, "Request body");
}

/** Validates `value`, throwing InvalidArgumentError naming the first offending field. */
export function check<S extends z.core.$ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = z.safeParse(schema, value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const where = issue && issue.path.length > 0 ? ` field "${issue.path.join(".")}"` : "";
  throw new InvalidArgumentError(`${what}${where} is invalid: ${issue?.message ?? "unknown problem"}`.slice(0, 1024), {
    cause: r.error,
  });
}

/** A query parameter that must be present. */
export function requiredParam(query: URLSearchParams, name: string): string {
  const value = query.get(name);
  if (value === null) throw new InvalidArgumentError(`Query parameter "${name}" is missing`);
  return value;
}

/** A boolean query parameter: `1`/`true` or `0`/`false`; absent gives `fallback`. */
export function booleanParam(query: URLSearchParams, name: string, fallback: boolean): boolean {
  const value = query.get(name);
  if (value === null) return fallback;
  if (value === "1" || value === "true") return true;
  if (value === "0" || value === "false") return false;
  throw new InvalidArgumentError(`Query parameter "${name}" must be 1, 0, true or false, not "${value.slice(0, 64)}"`);
}
