/**
 * TLS interception for mediated secrets. The workload's TLS is terminated with a leaf from the
 * sandbox's CA, each HTTP/1.1 request has its secret placeholders replaced by the real values in
 * its headers, and it goes on over verified TLS to the checked upstream address. Responses come
 * back with every secret value replaced by its placeholder, in headers and body.
 */
import http from "node:http";
import https from "node:https";
import { Duplex, pipeline } from "node:stream";
import tls from "node:tls";
import { MIN_REDACTED_SECRET_BYTES, Redactor } from "../secrets/redact.js";
import { hostHeaderMatches, type InterceptSecret, isEncoded, rewriteRequestHeaders, rewriteResponseHeaders } from "./mitm-headers.js";
import type { SandboxCa } from "./sandbox-ca.js";

export type { InterceptSecret } from "./mitm-headers.js";

/** Largest request head (request line + headers) accepted from the workload, in bytes. */
export const MAX_REQUEST_HEAD_BYTES = 16 * 1024;
/** How long the workload's stream may take to flush after the TLS side closed, ms. */
const FLUSH_AFTER_CLOSE_MS = 5_000;
/** A workload connection with no traffic for this long is closed. */
const CLIENT_IDLE_TIMEOUT_MS = 120_000;
/** An upstream exchange with no traffic for this long is abandoned. */
const UPSTREAM_IDLE_TIMEOUT_MS = 120_000;
const MAX_REASON_CHARS = 300;

/** What {@link intercept} needs: the workload's tunnel and where its requests may go. */
export interface InterceptOptions {
  /** The workload's tunnel, right after its ClientHello was read from it. */
  readonly client: Duplex;
  /** The exact bytes already read from `client`; they are replayed first. */
  readonly clientHello: Buffer;
  /** Normalized server name, already checked equal to the SNI. */
  readonly host: string;
  /** The checked upstream address; it is never resolved again. */
  readonly ip: string;
  readonly port: number;
  readonly ca: SandboxCa;
  /** Only the secrets bound to `host`. */
  readonly secrets: readonly InterceptSecret[];
  /** Extra upstream roots (PEM), trusted besides node's bundled roots. */
  readonly upstreamCa?: readonly string[];
  /** Bound on the workload's TLS handshake and on each new upstream connection + handshake. */
  readonly connectTimeoutMs: number;
  /** Aborting destroys the tunnel and every upstream connection. */
  readonly signal: AbortSignal;
}

/** How an interception went. Never holds a secret value. */
export interface InterceptResult {
  /** Bytes received from the workload's tunnel, ClientHello included. */
  bytesOut: number;
  /** Bytes sent to the workload's tunnel. */
  bytesIn: number;
  /** Names of the secrets substituted into at least one request. */
  secretsUsed: string[];
  /** Requests the workload sent. */
  requests: number;
  /** The first failure, when there was one. */
  reason?: string;
}

/** The workload's tunnel with the ClientHello put back in front, counting bytes both ways. */
class CountedTunnel extends Duplex {
  bytesOut: number;
  bytesIn = 0;
  readonly #inner: Duplex;
  readonly #onData = (chunk: Buffer): void => {
    this.bytesOut += chunk.length;
    if (!this.push(chunk)) this.#inner.pause();
  };
  readonly #onEnd = (): void => {
    this.push(null);
  };
  readonly #onError = (err: Error): void => {
    this.destroy(err);
  };
  readonly #onClose = (): void => {
    this.destroy();
  };

  constructor(inner: Duplex, first: Buffer) {
    super({ allowHalfOpen: false });
    this.#inner = inner;
    this.bytesOut = first.length;
    if (first.length > 0) this.push(first);
    inner.on("data", this.#onData);
    inner.on("end", this.#onEnd);
    inner.on("error", this.#onError);
    inner.on("close", this.#onClose);
    if (inner.destroyed) queueMicrotask(() => this.destroy());
    else inner.resume();
  }

  override _read(): void {
    this.#inner.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.bytesIn += chunk.length;
    this.#inner.write(chunk, (err) => callback(err ?? null));
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#inner.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#inner.off("data", this.#onData);
    this.#inner.off("end", this.#onEnd);
    this.#inner.off("error", this.#onError);
    this.#inner.off("close", this.#onClose);
    if (err === null && this.writableFinished && !this.#inner.destroyed) {
      // Ended cleanly (node:tls destroys its transport once done): the workload's stream keeps
      // flushing what was written to it and closes by itself; what it still sends is dropped.
      this.#inner.on("error", () => {});
      this.#inner.resume();
    } else {
      this.#inner.destroy();
    }
    callback(err);
  }
}

/** A one-line description of a socket or TLS failure. */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return "failed";
  const code = (err as NodeJS.ErrnoException).code;
  return code !== undefined && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
}

/**
 * Terminates the workload's TLS for `host` and relays its HTTP/1.1 requests to `ip:port`,
 * substituting secrets in request headers and redacting them from responses. Upgrades and CONNECT
 * get 501; a failed upstream connection or handshake gets 502 with a one-line body.
 *
 * Resolves when the workload's side is closed; never rejects for client or upstream failures
 * (`reason` says what failed first).
 *
 * @example
 * const result = await intercept({ client, clientHello, host, ip, port: 443, ca, secrets, connectTimeoutMs: 10_000, signal });
 */
export async function intercept(options: InterceptOptions): Promise<InterceptResult> {
  const { host, ip, port, signal } = options;
  const tunnel = new CountedTunnel(options.client, options.clientHello);
  tunnel.on("error", () => undefined);
  // A secret too short to be redacted from responses is never substituted either.
  const secrets = options.secrets.filter((s) => Buffer.byteLength(s.value, "utf8") >= MIN_REDACTED_SECRET_BYTES && s.placeholder.length > 0);
  const redactor = new Redactor(options.secrets.map((s) => ({ secret: s.value, replacement: s.placeholder })));
  const used = new Set<string>();
  let requests = 0;
  let reason: string | undefined;
  const note = (text: string): void => {
    if (reason !== undefined) return;
    const line = redactor.redactString(text).replace(/[\r\n]+/g, " ");
    reason = line.length > MAX_REASON_CHARS ? `${line.slice(0, MAX_REASON_CHARS - 3)}...` : line;
  };
  const result = (): InterceptResult => ({
    bytesOut: tunnel.bytesOut,
    bytesIn: tunnel.bytesIn,
    secretsUsed: [...used],
    requests,
    ...(reason === undefined ? {} : { reason }),
  });

  if (signal.aborted) {
    note("aborted");
    tunnel.destroy();
    return result();
  }
  let leaf: { keyPem: string; certPem: string };
  try {
    leaf = await options.ca.leaf(host);
  } catch (err) {
    note(`cannot issue a certificate: ${describe(err)}`);
    tunnel.destroy();
    return result();
  }
  if (signal.aborted || tunnel.destroyed) {
    note(signal.aborted ? "aborted" : "client closed before the TLS handshake");
    tunnel.destroy();
    return result();
  }

  const agent = new https.Agent({ keepAlive: true, maxSockets: 4, maxFreeSockets: 2, timeout: UPSTREAM_IDLE_TIMEOUT_MS });
  const ca = options.upstreamCa === undefined ? undefined : [...tls.rootCertificates, ...options.upstreamCa];
  const secure = new tls.TLSSocket(tunnel, { isServer: true, key: leaf.keyPem, cert: leaf.certPem, ALPNProtocols: ["http/1.1"] });

  const server = http.createServer({ maxHeaderSize: MAX_REQUEST_HEAD_BYTES, keepAliveTimeout: CLIENT_IDLE_TIMEOUT_MS }, (req, res) => {
    requests++;
    relay({ req, res, host, ip, port, secrets, redactor, agent, ca, connectTimeoutMs: options.connectTimeoutMs, used, note });
  });
  server.timeout = CLIENT_IDLE_TIMEOUT_MS;
  const refuseRaw = (_req: http.IncomingMessage, socket: Duplex): void => {
    requests++;
    note("upgrade or CONNECT refused");
    const body = "mvm egress: upgrade and CONNECT are not supported through secret interception\n";
    socket.end(`HTTP/1.1 501 Not Implemented\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  };
  // Answers a malformed or oversized request itself: node's default destroys the TLS socket before the answer is flushed.
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    note(`client request: ${describe(err)}`);
    if (!socket.writable || err.code === "ECONNRESET") {
      socket.destroy();
      return;
    }
    const status = err.code === "HPE_HEADER_OVERFLOW" ? "431 Request Header Fields Too Large" : "400 Bad Request";
    socket.end(`HTTP/1.1 ${status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
  });
  server.on("upgrade", refuseRaw);
  server.on("connect", refuseRaw);

  return await new Promise<InterceptResult>((resolve) => {
    const handshakeTimer = setTimeout(() => {
      note(`client TLS handshake: no answer within ${options.connectTimeoutMs} ms`);
      secure.destroy();
    }, options.connectTimeoutMs);
    const onAbort = (): void => {
      note("aborted");
      secure.destroy();
      tunnel.destroy();
      agent.destroy();
    };
    const onSecure = (): void => {
      clearTimeout(handshakeTimer);
      server.emit("connection", secure);
    };
    const onError = (err: Error): void => {
      note(`client ${secure.listenerCount("secure") > 0 ? "TLS handshake" : "connection"}: ${describe(err)}`);
      secure.destroy();
    };
    const onTunnelClose = (): void => {
      secure.destroy();
    };
    const onClose = (): void => {
      clearTimeout(handshakeTimer);
      signal.removeEventListener("abort", onAbort);
      secure.off("secure", onSecure);
      secure.off("error", onError);
      tunnel.off("close", onTunnelClose);
      if (requests === 0) note("client closed the connection before any request");
      agent.destroy();
      const done = (): void => {
        tunnel.destroy();
        resolve(result());
      };
      // The TLS side ended cleanly: the workload's stream may still be flushing the last response
      // bytes (a relay stream waits for credit), so it is left to close by itself: its unread
      // input is drained, and it is torn down after FLUSH_AFTER_CLOSE_MS at the latest.
      const client = options.client;
      if (client.destroyed || client.closed || signal.aborted) return done();
      const timer = setTimeout(done, FLUSH_AFTER_CLOSE_MS);
      timer.unref();
      client.once("close", () => {
        clearTimeout(timer);
        done();
      });
      tunnel.end();
      tunnel.resume();
    };
    secure.once("secure", onSecure);
    secure.on("error", onError);
    secure.once("close", onClose);
    tunnel.once("close", onTunnelClose);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

interface RelayOptions {
  readonly req: http.IncomingMessage;
  readonly res: http.ServerResponse;
  readonly host: string;
  readonly ip: string;
  readonly port: number;
  readonly secrets: readonly InterceptSecret[];
  readonly redactor: Redactor;
  readonly agent: https.Agent;
  readonly ca: string[] | undefined;
  readonly connectTimeoutMs: number;
  readonly used: Set<string>;
  readonly note: (text: string) => void;
}

/** Forwards one request upstream and streams the redacted response back. */
function relay(o: RelayOptions): void {
  const { req, res, host, redactor } = o;
  const answer = (status: number, text: string): void => {
    o.note(text);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = `mvm egress: ${redactor.redactString(text).replace(/[\r\n]+/g, " ")}\n`;
    res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body) });
    res.end(body);
  };
  const path = req.url ?? "";
  if (!path.startsWith("/") && !(path === "*" && req.method === "OPTIONS")) {
    answer(400, `request target "${path.slice(0, 100)}" is not a path`);
    return;
  }
  if (!hostHeaderMatches(req.rawHeaders, host, o.port)) {
    answer(421, `the Host header must name "${host}"`);
    return;
  }
  const rewritten = rewriteRequestHeaders(req.rawHeaders, o.secrets);
  for (const name of rewritten.used) o.used.add(name);
  const headers = rewritten.headers;
  if (req.headers["transfer-encoding"] !== undefined) headers.push("transfer-encoding", "chunked");

  let upstream: http.ClientRequest;
  try {
    upstream = https.request({
      host: o.ip,
      port: o.port,
      servername: host,
      method: req.method ?? "GET",
      path,
      headers,
      agent: o.agent,
      ...(o.ca === undefined ? {} : { ca: o.ca }),
    });
  } catch (err) {
    answer(502, `upstream ${host}: ${describe(err)}`);
    return;
  }
  const connectTimer = setTimeout(() => {
    upstream.destroy(new Error(`no TLS connection within ${o.connectTimeoutMs} ms`));
  }, o.connectTimeoutMs);
  upstream.once("socket", (socket) => {
    const upstreamTls = socket as tls.TLSSocket;
    if (!upstreamTls.connecting && upstreamTls.authorized) clearTimeout(connectTimer);
    else upstreamTls.once("secureConnect", () => clearTimeout(connectTimer));
  });
  upstream.setTimeout(UPSTREAM_IDLE_TIMEOUT_MS, () => upstream.destroy(new Error(`no traffic for ${UPSTREAM_IDLE_TIMEOUT_MS} ms`)));
  upstream.on("error", (err) => {
    clearTimeout(connectTimer);
    answer(502, `upstream ${host}: ${describe(err)}`);
  });
  upstream.once("close", () => clearTimeout(connectTimer));
  res.once("close", () => {
    if (!res.writableFinished) upstream.destroy();
  });
  upstream.once("response", (answerIn) => {
    clearTimeout(connectTimer);
    if (rewritten.used.length > 0 && isEncoded(answerIn.rawHeaders)) {
      answerIn.destroy();
      answer(502, `upstream ${host}: sent an encoded body in answer to a request carrying a secret`);
      return;
    }
    try {
      const redact = (value: string): string => redactor.redactString(value);
      const outHeaders = rewriteResponseHeaders(answerIn.rawHeaders, redact, !redactor.empty);
      res.writeHead(answerIn.statusCode ?? 502, redact(answerIn.statusMessage ?? ""), outHeaders);
    } catch (err) {
      answerIn.destroy();
      answer(502, `upstream ${host}: unusable response head: ${describe(err)}`);
      return;
    }
    pipeline(answerIn, redactor.transform(), res, (err) => {
      if (err !== undefined && err !== null) {
        o.note(`upstream ${host}: response: ${describe(err)}`);
        upstream.destroy();
      }
    });
  });
  // pipe, not pipeline: an upstream failure must not destroy the request (and with it the 502).
  req.on("error", () => upstream.destroy());
  req.pipe(upstream);
}
