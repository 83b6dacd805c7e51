/**
 * HTTP/1.1 over the daemon's Unix socket: connections reused from call to call (the client's
 * keep-alive agent), request bodies streamed with back-pressure, and every failure reported
 * through the call's scope as a typed error. A response left unread drops its connection.
 */
import { request as httpRequest, type Agent, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import { InvalidArgumentError, TimeoutError } from "@mvm/protocol";
import type { CallScope } from "./call-scope.js";

export interface HttpTarget {
  readonly socketPath: string;
  readonly agent: Agent;
  /** Time allowed from the end of the request to the response headers, ms. */
  readonly headersTimeoutMs: number;
}

export interface HttpCall {
  readonly method: "GET" | "POST" | "PUT" | "DELETE";
  /** Path with query, e.g. `/v1/sandboxes/sbx_…/files/stat?path=%2Fwork`. */
  readonly path: string;
  readonly headers?: OutgoingHttpHeaders;
  readonly body?: Uint8Array | AsyncIterable<Uint8Array>;
  readonly scope: CallScope;
}

/** A response whose body is still unread, with the request that produced it. */
export interface Exchange {
  readonly req: ClientRequest;
  readonly res: IncomingMessage;
}

/**
 * Sends a request and resolves at the response headers. A streamed body is written only as
 * fast as the socket drains, and writing stops when the daemon answers early (an error).
 * A request with no body or a buffered one goes out on an idle kept-alive connection when there is
 * one; when that connection turns out to be closed by the daemon before any answer (it hung up
 * while idle), the request is sent once more on a new connection. A streamed body cannot be sent
 * twice: it always gets a new connection.
 */
export function send(target: HttpTarget, call: HttpCall): Promise<Exchange> {
  return attempt(target, call, true);
}

function attempt(target: HttpTarget, call: HttpCall, mayRetry: boolean): Promise<Exchange> {
  const { scope } = call;
  const replayable = call.body === undefined || call.body instanceof Uint8Array;
  return new Promise<Exchange>((resolve, reject) => {
    if (scope.signal.aborted) {
      reject(scope.signal.reason);
      return;
    }
    let responded = false;
    let sourceError: unknown;
    let headersTimer: NodeJS.Timeout | undefined;
    const req = httpRequest({
      socketPath: target.socketPath,
      agent: replayable ? target.agent : false,
      method: call.method,
      path: call.path,
      headers: { ...call.headers },
    });
    const onAbort = (): void => {
      clearTimeout(headersTimer);
      req.destroy(scope.signal.reason as Error);
    };
    scope.signal.addEventListener("abort", onAbort, { once: true });
    req.on("close", () => {
      clearTimeout(headersTimer);
      scope.signal.removeEventListener("abort", onAbort);
    });
    req.on("error", (err) => {
      clearTimeout(headersTimer);
      if (responded) return;
      if (mayRetry && replayable && req.reusedSocket && !scope.signal.aborted && (err as NodeJS.ErrnoException).code === "ECONNRESET") {
        resolve(attempt(target, call, false));
        return;
      }
      reject(sourceError ?? scope.fail(err));
    });
    req.on("finish", () => {
      if (responded) return;
      headersTimer = setTimeout(() => {
        scope.abort(new TimeoutError(`${scope.describe} got no answer within ${target.headersTimeoutMs} ms`));
      }, target.headersTimeoutMs);
    });
    req.on("response", (res) => {
      responded = true;
      clearTimeout(headersTimer);
      resolve({ req, res });
    });

    const body = call.body;
    if (body === undefined) {
      req.end();
    } else if (body instanceof Uint8Array) {
      req.end(body);
    } else {
      pump(req, body, () => responded).catch((err: unknown) => {
        sourceError = err;
        req.destroy(err instanceof Error ? err : new Error(String(err)));
      });
    }
  });
}

/** Writes `body` into `req`, waiting for `drain` whenever the socket buffer is full. */
async function pump(req: ClientRequest, body: AsyncIterable<Uint8Array>, responded: () => boolean): Promise<void> {
  for await (const chunk of body) {
    if (responded() || req.destroyed) return;
    if (!(chunk instanceof Uint8Array)) {
      throw new InvalidArgumentError(`File data must be Uint8Array chunks, not "${typeof chunk}"`);
    }
    if (chunk.byteLength === 0) continue;
    if (!req.write(chunk)) await drainOrGone(req, responded);
  }
  if (!responded() && !req.destroyed) req.end();
}

function drainOrGone(req: ClientRequest, responded: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    if (responded() || req.destroyed) {
      resolve();
      return;
    }
    const done = (): void => {
      req.off("drain", done);
      req.off("close", done);
      req.off("response", done);
      resolve();
    };
    req.on("drain", done);
    req.on("close", done);
    req.on("response", done);
  });
}

/** Drops the connection when the request body was not fully sent (it cannot carry another message). */
export function release(ex: Exchange): void {
  if (!ex.req.writableFinished || !ex.res.complete) ex.req.destroy();
}
