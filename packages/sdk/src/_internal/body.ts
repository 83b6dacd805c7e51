/**
 * Reading daemon answers: whole bodies with a byte cap, NDJSON lines with a line cap, JSON that
 * must be UTF-8 and match a strict schema, and error bodies rebuilt into typed errors.
 */
import { z } from "zod";
import { ApiErrorBody, TransportError, fromWire, lenientSchema, type MvmError, type WireError } from "@mvm/protocol";
import type { CallScope } from "./call-scope.js";
import { release, type Exchange } from "./http.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** True for a 2xx status. */
export function isSuccess(ex: Exchange): boolean {
  const status = ex.res.statusCode ?? 0;
  return status >= 200 && status < 300;
}

/** Reads the whole body, failing with TransportError past `maxBytes` (checked against Content-Length first). */
export async function readBody(ex: Exchange, scope: CallScope, maxBytes: number): Promise<Buffer> {
  try {
    const declared = ex.res.headers["content-length"];
    if (declared !== undefined && Number(declared) > maxBytes) {
      throw new TransportError(`${scope.describe} answered a body of ${declared} bytes, over the limit of ${maxBytes}`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of ex.res as AsyncIterable<Buffer>) {
      total += chunk.byteLength;
      if (total > maxBytes) throw new TransportError(`${scope.describe} answered a body over the limit of ${maxBytes} bytes`);
      chunks.push(chunk);
    }
    return Buffer.concat(chunks, total);
  } catch (err) {
    throw scope.fail(err);
  } finally {
    release(ex);
  }
}

export function parseJson(bytes: Uint8Array, scope: CallScope): unknown {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch (err) {
    throw new TransportError(`${scope.describe} answered a body that is not UTF-8 JSON`, { cause: err });
  }
}

/**
 * Validates a value from the daemon. Unknown fields are dropped (a newer daemon may add some, see
 * lenientSchema); every known field must match. The parsed value is returned as `T`: JSON never holds
 * `undefined`, so zod's `field?: X | undefined` and the API's `field?: X` describe the same data.
 */
export function validate<T>(schema: z.core.$ZodType, value: unknown, scope: CallScope): T {
  const r = z.safeParse(lenientSchema(schema), value);
  if (r.success) return r.data as T;
  const issue = r.error.issues[0];
  const where = issue && issue.path.length > 0 ? ` at "${issue.path.join(".").slice(0, 128)}"` : "";
  throw new TransportError(`${scope.describe} answered an invalid body${where}: ${issue?.message ?? "invalid"}`.slice(0, 1024), {
    cause: r.error,
  });
}

/** The typed error an error answer carries; a malformed error body is a TransportError. */
export async function errorFrom(ex: Exchange, scope: CallScope, maxBytes: number): Promise<MvmError> {
  const status = ex.res.statusCode ?? 0;
  let body: unknown;
  try {
    body = parseJson(await readBody(ex, scope, maxBytes), scope);
  } catch (err) {
    return new TransportError(`${scope.describe} answered status ${status} without a readable error body`, { cause: err });
  }
  const r = lenientSchema(ApiErrorBody).safeParse(body);
  if (!r.success) return new TransportError(`${scope.describe} answered status ${status} with an invalid error body`, { cause: r.error });
  return fromWire(r.data.error as WireError);
}

/** Reads, parses and validates a JSON answer, or throws the error it carries. */
export async function expectJson<T>(ex: Exchange, scope: CallScope, schema: z.core.$ZodType, maxBytes: number): Promise<T> {
  if (!isSuccess(ex)) throw await errorFrom(ex, scope, maxBytes);
  return validate<T>(schema, parseJson(await readBody(ex, scope, maxBytes), scope), scope);
}

/** Expects an empty success answer (204), or throws the error it carries. */
export async function expectEmpty(ex: Exchange, scope: CallScope, maxBytes: number): Promise<void> {
  if (!isSuccess(ex)) throw await errorFrom(ex, scope, maxBytes);
  const body = await readBody(ex, scope, 1024);
  if (body.byteLength !== 0) throw new TransportError(`${scope.describe} answered an unexpected body`);
}

/**
 * The parsed JSON values of an NDJSON body, one per line. A line longer than `maxLineBytes`,
 * a line that is not JSON, or a body ending mid-line is a TransportError. Leaving the loop early
 * drops the connection.
 */
export async function* ndjsonValues(ex: Exchange, scope: CallScope, maxLineBytes: number): AsyncGenerator<unknown, void, undefined> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const tooLong = (): TransportError =>
    new TransportError(`${scope.describe} answered an NDJSON line longer than ${maxLineBytes} bytes`);
  try {
    for await (const chunk of ex.res as AsyncIterable<Buffer>) {
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl === -1) {
          const rest = chunk.subarray(start);
          pendingBytes += rest.byteLength;
          if (pendingBytes > maxLineBytes) throw tooLong();
          if (rest.byteLength > 0) pending.push(rest);
          break;
        }
        const piece = chunk.subarray(start, nl);
        if (pendingBytes + piece.byteLength > maxLineBytes) throw tooLong();
        const line = pending.length === 0 ? piece : Buffer.concat([...pending, piece]);
        pending = [];
        pendingBytes = 0;
        start = nl + 1;
        if (line.byteLength > 0) yield parseJson(line, scope);
      }
    }
    if (pendingBytes > 0) throw new TransportError(`${scope.describe} answered an NDJSON body that ends mid-line`);
  } catch (err) {
    throw scope.fail(err);
  } finally {
    release(ex);
  }
}
