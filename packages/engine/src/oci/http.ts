/**
 * A small HTTP(S) client for talking to registries and static bundle hosts, with the bounds the
 * rest of the engine expects of anything read from outside: every answer's body is size-capped
 * before it is buffered, every call has a timeout and an AbortSignal, redirects are followed only
 * within the origin asked (at most {@link MAX_REDIRECTS}), and plain `http:` is accepted only for
 * loopback hosts. Built on node:http/https so a test can hand it its own CA.
 */
import { createReadStream } from "node:fs";
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP } from "node:net";
import { AbortedError, InvalidArgumentError, TimeoutError, TransportError } from "@mvm/protocol";

/** Most redirects one request follows (each within the same origin). */
export const MAX_REDIRECTS = 3;
/** Most bytes of an error answer's body read (to quote in a message). */
const MAX_ERROR_BODY_BYTES = 4096;
/** Default timeout of one request, headers and body together, in milliseconds. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;

/** True for hosts that name this machine: 127.0.0.0/8, ::1 and `localhost`. */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1) : hostname;
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  if (isIP(host) === 6) return host === "::1";
  return false;
}

/**
 * Checks `base` is an origin we may talk to: `https:` anywhere, `http:` only on loopback; no
 * userinfo or fragment, and no query unless `allowQuery` (an upload URL a registry handed back
 * carries its state there). Returns the origin (scheme, host, port) as a string.
 * @throws InvalidArgumentError otherwise.
 */
export function checkOrigin(base: string, allowQuery = false): string {
  let url: URL;
  try {
    url = new URL(base);
  } catch (err) {
    throw new InvalidArgumentError(`Invalid URL: ${JSON.stringify(base.slice(0, 200))}`, { cause: err });
  }
  if (url.username !== "" || url.password !== "") throw new InvalidArgumentError(`URL must not carry userinfo: ${JSON.stringify(url.host)}`);
  if ((url.search !== "" && !allowQuery) || url.hash !== "") throw new InvalidArgumentError(`URL must not carry a query or fragment: ${JSON.stringify(base.slice(0, 200))}`);
  if (url.protocol === "http:") {
    if (!isLoopbackHost(url.hostname)) {
      throw new InvalidArgumentError(`Plain http is allowed only to loopback hosts: "${url.hostname}"`, { hint: "use https://" });
    }
  } else if (url.protocol !== "https:") {
    throw new InvalidArgumentError(`Unsupported URL scheme "${url.protocol}"`);
  }
  return url.origin;
}

/** Options shared by every request. */
export interface HttpOptions {
  /** Extra trusted CA certificates (PEM), for https. The system store is used otherwise. */
  readonly ca?: string | readonly string[];
  /** Timeout of the whole request, headers and body, in milliseconds. @default 60000 */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** One request. */
export interface HttpRequest extends HttpOptions {
  readonly method: "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE";
  readonly url: string;
  readonly headers?: Readonly<Record<string, string>>;
  /** A body in memory, or a file region streamed from disk. */
  readonly body?: Uint8Array | { readonly path: string; readonly start: number; readonly length: number };
}

/** An answer whose body has not been read yet. */
export interface HttpResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The URL that answered (after same-origin redirects). */
  readonly url: string;
  /** The body stream; the caller reads it (bounded) or calls `discard`. */
  readonly body: IncomingMessage;
  discard(): void;
}

function header(headers: HttpResponse["headers"], name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** One header of an answer, first value when repeated. */
export function responseHeader(res: HttpResponse, name: string): string | undefined {
  return header(res.headers, name);
}

/**
 * Sends one request and resolves when its answer's headers arrive. Redirects (301, 302, 303,
 * 307, 308) are followed when they stay on the origin asked; a redirect elsewhere is a
 * `TransportError`. Bodies are not re-sent on redirects (a redirected upload fails).
 * @throws TransportError, TimeoutError, AbortedError
 */
export async function send(req: HttpRequest): Promise<HttpResponse> {
  const origin = checkOrigin(req.url, true);
  const timeoutMs = req.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = req.signal === undefined ? timeout : AbortSignal.any([timeout, req.signal]);
  let url = req.url;
  for (let hop = 0; ; hop++) {
    const res = await sendOnce({ ...req, url }, signal, timeout, timeoutMs);
    if ([301, 302, 303, 307, 308].includes(res.status)) {
      res.discard();
      const location = header(res.headers, "location");
      if (location === undefined) throw new TransportError(`${req.method} ${url}: redirect without a location`);
      let next: URL;
      try {
        next = new URL(location, url);
      } catch (err) {
        throw new TransportError(`${req.method} ${url}: invalid redirect location`, { cause: err });
      }
      if (next.origin !== origin) {
        throw new TransportError(`${req.method} ${req.url}: refused a redirect to another origin "${next.origin}"`);
      }
      if (req.body !== undefined) throw new TransportError(`${req.method} ${req.url}: refused to re-send a body after a redirect`);
      if (hop + 1 > MAX_REDIRECTS) throw new TransportError(`${req.method} ${req.url}: more than ${MAX_REDIRECTS} redirects`);
      url = next.toString();
      continue;
    }
    return res;
  }
}

function sendOnce(req: HttpRequest, signal: AbortSignal, timeout: AbortSignal, timeoutMs: number): Promise<HttpResponse> {
  const url = new URL(req.url);
  const headers: OutgoingHttpHeaders = { ...req.headers };
  const body = req.body;
  if (body !== undefined) headers["content-length"] = body instanceof Uint8Array ? body.byteLength : body.length;
  const options = {
    method: req.method,
    headers,
    signal,
    ...(req.ca === undefined ? {} : { ca: typeof req.ca === "string" ? req.ca : [...req.ca] }),
  };
  const failure = (err: unknown): Error => {
    if (timeout.aborted) return new TimeoutError(`${req.method} ${req.url}: no answer within ${timeoutMs} ms`, { cause: err });
    if (signal.aborted) return new AbortedError(`${req.method} ${req.url}: aborted`, { cause: err });
    return new TransportError(`${req.method} ${req.url}: ${(err as Error).message}`, { cause: err });
  };
  return new Promise<HttpResponse>((resolve, reject) => {
    const r = (url.protocol === "https:" ? httpsRequest : httpRequest)(url, options, (res) => {
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        url: req.url,
        body: res,
        discard: () => {
          res.resume();
          res.on("error", () => {});
        },
      });
    });
    r.on("error", (err) => reject(failure(err)));
    if (body === undefined) r.end();
    else if (body instanceof Uint8Array) r.end(body);
    else if (body.length === 0) r.end();
    else {
      const stream = createReadStream(body.path, { start: body.start, end: body.start + body.length - 1 });
      stream.on("error", (err) => r.destroy(err));
      stream.pipe(r);
    }
  });
}

/**
 * Reads a body to memory, refusing more than `maxBytes` (checked against Content-Length first,
 * then while reading).
 * @throws TransportError when it is larger, or the connection fails.
 */
export async function readBody(res: HttpResponse, maxBytes: number, what: string): Promise<Buffer> {
  const declared = header(res.headers, "content-length");
  if (declared !== undefined && (!/^\d{1,15}$/.test(declared) || Number(declared) > maxBytes)) {
    res.body.destroy();
    throw new TransportError(`${what}: answer of ${declared.slice(0, 20)} bytes is over the ${maxBytes}-byte limit`);
  }
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for await (const piece of res.body as AsyncIterable<Buffer>) {
      total += piece.byteLength;
      if (total > maxBytes) {
        res.body.destroy();
        throw new TransportError(`${what}: answer is over the ${maxBytes}-byte limit`);
      }
      parts.push(piece);
    }
  } catch (err) {
    if (err instanceof TransportError) throw err;
    throw new TransportError(`${what}: ${(err as Error).message}`, { cause: err });
  }
  return Buffer.concat(parts, total);
}

/** A failed answer as a TransportError, quoting the start of its body. */
export async function statusError(res: HttpResponse, what: string): Promise<TransportError> {
  let text = "";
  try {
    text = (await readBody(res, MAX_ERROR_BODY_BYTES, what)).toString("utf8").replace(/\s+/g, " ").trim().slice(0, 300);
  } catch {
    res.body.destroy();
  }
  return new TransportError(`${what}: HTTP ${res.status}${text === "" ? "" : `: ${text}`}`);
}
