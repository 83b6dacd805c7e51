/**
 * Socket plumbing for the egress gateway: a bounded connect, a first-chunk read, counted
 * two-way piping, and the denial responses a workload sees.
 */
import { connect, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { AbortedError, TimeoutError, TransportError } from "@mvm/protocol";
import { SocksReply, type SocksReplyCode } from "./gateway-socks.js";

/**
 * Opens a TCP connection to `ip:port`; the socket is destroyed on every failure.
 * @throws {TimeoutError} after `timeoutMs`
 * @throws {AbortedError} when `signal` fires
 * @throws {TransportError} when the connection fails (its `cause` carries the errno code)
 */
export function connectTo(ip: string, port: number, timeoutMs: number, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new AbortedError(`Connecting to "${ip}" port ${port} was aborted`, { cause: signal.reason }));
      return;
    }
    const socket = connect({ host: ip, port });
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("error", onError);
      signal.removeEventListener("abort", onAbort);
    };
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onConnect = (): void => {
      cleanup();
      resolve(socket);
    };
    const onError = (err: Error): void => fail(new TransportError(`Cannot connect to "${ip}" port ${port}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err }));
    const onAbort = (): void => fail(new AbortedError(`Connecting to "${ip}" port ${port} was aborted`, { cause: signal.reason }));
    const timer = setTimeout(() => fail(new TimeoutError(`Cannot connect to "${ip}" port ${port}: no answer within ${timeoutMs} ms`)), timeoutMs);
    socket.once("connect", onConnect);
    socket.once("error", onError);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** The SOCKS reply and HTTP status that describe a failed connect. */
export function connectFailure(err: unknown): { socksReply: SocksReplyCode; httpStatus: 502 | 504 } {
  if (err instanceof TimeoutError) return { socksReply: SocksReply.hostUnreachable, httpStatus: 504 };
  const code = ((err as { cause?: unknown } | null)?.cause as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ECONNREFUSED") return { socksReply: SocksReply.refused, httpStatus: 502 };
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH") return { socksReply: SocksReply.hostUnreachable, httpStatus: 502 };
  return { socksReply: SocksReply.generalFailure, httpStatus: 502 };
}

/**
 * The first chunk the peer sends, leaving the stream paused with no listeners added by this call.
 * @throws {TimeoutError} | {TransportError} | {AbortedError}
 */
export function readFirstChunk(stream: Duplex, timeoutMs: number, signal: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (outcome: () => void): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      stream.off("readable", onReadable);
      stream.off("end", onEnd);
      stream.off("close", onEnd);
      stream.off("error", onError);
      signal.removeEventListener("abort", onAbort);
      outcome();
    };
    const onReadable = (): void => {
      const chunk: unknown = stream.read();
      if (chunk === null) return;
      const buf = typeof chunk === "string" ? Buffer.from(chunk, "latin1") : Buffer.from(chunk as Uint8Array);
      finish(() => resolve(buf));
    };
    const onEnd = (): void => finish(() => reject(new TransportError("Connection ended before its first byte")));
    const onError = (err: Error): void => finish(() => reject(new TransportError("Connection failed before its first byte", { cause: err })));
    const onAbort = (): void => finish(() => reject(new AbortedError("Reading the first byte was aborted", { cause: signal.reason })));
    const timer = setTimeout(() => finish(() => reject(new TimeoutError(`No byte within ${timeoutMs} ms`))), timeoutMs);
    stream.on("readable", onReadable);
    stream.on("end", onEnd);
    stream.on("close", onEnd);
    stream.on("error", onError);
    signal.addEventListener("abort", onAbort, { once: true });
    onReadable();
  });
}

/** Byte counters of one tunnel: out is workload to destination, in is destination to workload. */
export interface ByteCounts {
  bytesOut: number;
  bytesIn: number;
}

/**
 * Pipes `client` and `upstream` both ways, counting into `counts`, and resolves once both are
 * closed. Any error or close on one side destroys the other; half-close is passed through.
 */
/** How long a tunnel's surviving side may take to flush after the other side closed, ms. */
const FLUSH_AFTER_CLOSE_MS = 5_000;

export async function splice(client: Duplex, upstream: Duplex, counts: ByteCounts): Promise<void> {
  const onClientData = (chunk: Buffer): void => {
    counts.bytesOut += chunk.length;
  };
  const onUpstreamData = (chunk: Buffer): void => {
    counts.bytesIn += chunk.length;
  };
  // A half-closed tunnel stays open; an error or an abrupt close on one side takes the other with
  // it. A side that ended cleanly lets the other finish writing what it already has (a relay
  // stream may still hold the last bytes of a response, waiting for credit).
  const teardown = (): void => {
    client.destroy();
    upstream.destroy();
  };
  // Destroying it instead would throw away bytes still queued (and, on a relay stream, reset it
  // so the guest drops what it has not yet delivered); it closes by itself once both directions
  // have ended, or is torn down after FLUSH_AFTER_CLOSE_MS.
  const onClose = (from: Duplex, to: Duplex) => (): void => {
    if (!from.readableEnded || from.errored) return teardown();
    if (to.destroyed) return;
    const timer = setTimeout(teardown, FLUSH_AFTER_CLOSE_MS);
    timer.unref();
    to.once("close", () => clearTimeout(timer));
    to.end();
  };
  client.on("data", onClientData);
  upstream.on("data", onUpstreamData);
  client.on("error", teardown);
  upstream.on("error", teardown);
  const closed = Promise.all([
    whenClosed(client).then(onClose(client, upstream)).then(() => whenClosed(upstream)),
    whenClosed(upstream).then(onClose(upstream, client)).then(() => whenClosed(client)),
  ]);
  client.pipe(upstream);
  upstream.pipe(client);
  if (client.destroyed || upstream.destroyed) teardown();
  await closed;
  client.off("data", onClientData);
  upstream.off("data", onUpstreamData);
  client.off("error", teardown);
  upstream.off("error", teardown);
}

/** Resolves once `stream` has emitted "close" (at once when it already has). */
export function whenClosed(stream: Duplex): Promise<void> {
  if (stream.closed) return Promise.resolve();
  return new Promise((resolve) => stream.once("close", () => resolve()));
}

/** Writes `data`, ends the stream, and destroys it once the data is flushed. */
export function endThenDestroy(stream: Duplex, data: string | Uint8Array): void {
  stream.once("finish", () => stream.destroy());
  stream.end(data);
}

/** Removes CR, LF and other control characters so a reason stays one line. */
export function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]+/g, " ");
}

/** The body of every HTTP denial. */
export function deniedBody(reason: string): string {
  return `mvm egress: denied: ${oneLine(reason)}\n`;
}

const STATUS_TEXT: Record<number, string> = { 400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 504: "Gateway Timeout" };

/** A complete HTTP/1.1 response written on a raw socket (CONNECT), with `Connection: close`. */
export function rawResponse(status: number, body: string, denied: boolean): string {
  const length = Buffer.byteLength(body);
  const marker = denied ? "x-mvm-egress: denied\r\n" : "";
  return `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\n${marker}content-type: text/plain; charset=utf-8\r\ncontent-length: ${length}\r\nconnection: close\r\n\r\n${body}`;
}
