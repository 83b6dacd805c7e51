/**
 * The host-side egress gateway: every workload connection (a relay stream of one sandbox) is an
 * HTTP/1.1 proxy or SOCKS5 conversation; each target is decided by the sandbox's live policy,
 * resolved on the host, floor-checked, and dialled by address. Everything else is denied.
 */
import type { Duplex } from "node:stream";
import { InternalError, type ConnectionEvent, type EgressVia, type NetworkPolicyJson } from "@mvm/protocol";
import { AddressFloor, normalizeIp, type TestAllowance } from "./address-floor.js";
import { readClientHello } from "./client-hello.js";
import { decide, type Decision } from "./gateway-decide.js";
import { emitDenied, Flow } from "./gateway-flow.js";
import { HttpFront, forwardRequest } from "./gateway-http.js";
import { connectFailure, connectTo, deniedBody, endThenDestroy, oneLine, rawResponse, readFirstChunk, splice, whenClosed } from "./gateway-io.js";
import { methodSelection, Socks5Parser, SocksReply, socksReplyBytes, SOCKS_VERSION, type SocksReplyCode } from "./gateway-socks.js";
import { intercept } from "./mitm.js";
import { hostMatches, matchPolicy } from "./policy-match.js";
import type { EgressResolver } from "./resolver.js";
import type { SandboxCa } from "./sandbox-ca.js";

/** A secret the gateway substitutes for its placeholder on TLS requests to matching hosts. */
export interface MediatedSecret {
  readonly name: string;
  readonly placeholder: string;
  readonly value: string;
  /** Host patterns, exact or `*.suffix`. */
  readonly hosts: readonly string[];
}

/** One sandbox as the gateway sees it. */
export interface EgressSandbox {
  readonly id: string;
  /** Read at every decision, so policy changes apply to the next connection. */
  policy(): NetworkPolicyJson;
  readonly secrets: readonly MediatedSecret[];
  /** Present when `secrets` is non-empty. */
  readonly ca?: SandboxCa;
  event(e: ConnectionEvent): void;
}

export interface GatewayOptions {
  readonly resolver: Pick<EgressResolver, "resolve">;
  /**
   * Test-only: blocks inside 198.18.0.0/15 or 2001:2::/48 the address floor lets through, so
   * egress tests reach their test hosts (see {@link TestAllowance}). No policy can name it.
   */
  readonly testAllowance?: TestAllowance;
  /**
   * Single addresses the operator vouches for, let through the floor (the host's own addresses
   * excepted). Image builds only: the address of a configured Debian mirror or apt cache.
   */
  readonly vouchedAddresses?: readonly string[];
  /** Deadline for dialling a destination, and for each handshake phase, in milliseconds. @default 10000 */
  readonly connectTimeoutMs?: number;
  /** Extra roots trusted for intercepted upstream TLS (PEM). */
  readonly upstreamCa?: readonly string[];
  /** Open client connections per sandbox; more are denied. @default 256 */
  readonly maxConnectionsPerSandbox?: number;
  /** Only for unit tests of gateway logic: replaces the address floor. Production never sets it. */
  readonly addressCheckForTests?: (ip: string) => string | undefined;
}

type Allowed = Extract<Decision, { allowed: true }>;

/** How a tunnel answers its client: CONNECT with HTTP status lines, SOCKS with reply codes. */
interface TunnelReply {
  ok(): void;
  fail(status: number, socksReply: SocksReplyCode, body: string, denied: boolean): void;
}

const noop = (): void => undefined;

/**
 * @example
 * const gateway = new EgressGateway({ resolver });
 * mux.on("stream", (stream) => gateway.handle(stream, sandbox));
 */
export class EgressGateway {
  readonly #resolver: Pick<EgressResolver, "resolve">;
  readonly #connectTimeoutMs: number;
  readonly #maxConnections: number;
  readonly #upstreamCa: readonly string[] | undefined;
  readonly #addressCheck: (ip: string) => string | undefined;
  readonly #streams = new Map<string, Set<Duplex>>();
  readonly #flows = new Map<string, Set<Flow>>();
  readonly #http: HttpFront;
  #closed = false;

  /** @throws InvalidArgumentError when `testAllowance` names a block outside the benchmarking ranges */
  constructor(options: GatewayOptions) {
    this.#resolver = options.resolver;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.#maxConnections = options.maxConnectionsPerSandbox ?? 256;
    this.#upstreamCa = options.upstreamCa;
    if (options.addressCheckForTests !== undefined) this.#addressCheck = options.addressCheckForTests;
    else {
      const floor = new AddressFloor({
        ...(options.testAllowance === undefined ? {} : { testAllowance: options.testAllowance }),
        ...(options.vouchedAddresses === undefined ? {} : { vouchedAddresses: options.vouchedAddresses }),
      });
      this.#addressCheck = (ip) => floor.reason(ip);
    }
    this.#http = new HttpFront(
      {
        connect: (stream, sandbox, host, port, head) => {
          if (head.length > 0) stream.unshift(head);
          void this.#tunnel(stream, sandbox, "connect", host, port, connectReply(stream));
        },
        request: (req, res, sandbox) => {
          void forwardRequest(req, res, sandbox, {
            connectTimeoutMs: this.#connectTimeoutMs,
            decide: (sb, host, port, signal) => this.#decide(sb, host, port, "http", signal),
            open: (sb, decision) => this.#open(sb, "http-proxy", decision),
          }).catch(() => res.destroy());
        },
      },
      this.#connectTimeoutMs,
    );
  }

  /** Takes one workload connection of `sandbox`. Never throws; every outcome becomes an event. */
  handle(stream: Duplex, sandbox: EgressSandbox): void {
    try {
      stream.on("error", noop);
      if (this.#closed) {
        stream.destroy();
        return;
      }
      const open = this.#setOf(this.#streams, sandbox.id);
      if (open.size >= this.#maxConnections) {
        emitDenied(sandbox, "http-proxy", { allowed: false, protocol: "tcp", port: 0, reason: `Denied connection: sandbox "${sandbox.id}" already has ${open.size} open connections, the limit is ${this.#maxConnections}` });
        stream.destroy();
        return;
      }
      open.add(stream);
      void whenClosed(stream).then(() => this.#forget(this.#streams, sandbox.id, stream));
      void this.#sniff(stream, sandbox).catch(() => stream.destroy());
    } catch {
      stream.destroy();
    }
  }

  /** Re-checks the sandbox's open connections against its current policy; closes and counts those now denied. */
  enforce(sandboxId: string): number {
    const flows = this.#flows.get(sandboxId);
    if (flows === undefined) return 0;
    let closed = 0;
    for (const flow of [...flows]) {
      let allowed: boolean;
      try {
        allowed = matchPolicy(flow.sandbox.policy(), flow.check).allowed;
      } catch {
        allowed = false;
      }
      if (!allowed) {
        flow.abort("closed: policy changed");
        closed++;
      }
    }
    return closed;
  }

  /** Closes every connection of the sandbox. */
  closeSandbox(sandboxId: string): void {
    for (const flow of [...(this.#flows.get(sandboxId) ?? [])]) flow.abort("closed: sandbox closed");
    for (const stream of [...(this.#streams.get(sandboxId) ?? [])]) stream.destroy();
  }

  /** Open client connections of one sandbox, or of all. */
  openConnections(sandboxId?: string): number {
    if (sandboxId !== undefined) return this.#streams.get(sandboxId)?.size ?? 0;
    let total = 0;
    for (const set of this.#streams.values()) total += set.size;
    return total;
  }

  /** Refuses new connections, closes all open ones and waits until they are closed. */
  async close(): Promise<void> {
    this.#closed = true;
    const streams = [...this.#streams.values()].flatMap((set) => [...set]);
    for (const id of [...this.#flows.keys()]) this.closeSandbox(id);
    for (const stream of streams) stream.destroy();
    await Promise.all(streams.map(whenClosed));
    this.#http.close();
  }

  #setOf<T>(map: Map<string, Set<T>>, id: string): Set<T> {
    let set = map.get(id);
    if (set === undefined) map.set(id, (set = new Set()));
    return set;
  }

  #forget<T>(map: Map<string, Set<T>>, id: string, item: T): void {
    const set = map.get(id);
    set?.delete(item);
    if (set?.size === 0) map.delete(id);
  }

  #decide(sandbox: EgressSandbox, target: string, port: number, mode: "tunnel" | "http", signal: AbortSignal): Promise<Decision> {
    return decide({ policy: sandbox.policy(), target, port, mode, resolver: this.#resolver, addressCheck: this.#addressCheck, normalizeIp, signal, cacheScope: sandbox.id });
  }

  #open(sandbox: EgressSandbox, via: EgressVia, decision: Allowed): Flow | undefined {
    if (this.#closed) return undefined;
    const flow = new Flow(sandbox, via, decision, (done) => this.#forget(this.#flows, sandbox.id, done));
    this.#setOf(this.#flows, sandbox.id).add(flow);
    return flow;
  }

  /** First byte 0x05: SOCKS5; anything else: HTTP/1.1 proxy. */
  async #sniff(stream: Duplex, sandbox: EgressSandbox): Promise<void> {
    const gone = closedSignal(stream);
    let first: Buffer;
    try {
      first = await readFirstChunk(stream, this.#connectTimeoutMs, gone.signal);
    } catch {
      stream.destroy();
      return;
    } finally {
      gone.dispose();
    }
    if (first[0] === SOCKS_VERSION) return this.#socks(stream, sandbox, first);
    stream.unshift(first);
    this.#http.accept(stream, sandbox);
  }

  async #socks(stream: Duplex, sandbox: EgressSandbox, first: Buffer): Promise<void> {
    const parser = new Socks5Parser();
    parser.feed(first);
    const gone = closedSignal(stream);
    try {
      for (;;) {
        const step = parser.step();
        if (step.kind === "need-more") {
          parser.feed(await readFirstChunk(stream, this.#connectTimeoutMs, gone.signal));
        } else if (step.kind === "greeting") {
          if (!step.accepted) {
            endThenDestroy(stream, methodSelection(false));
            return;
          }
          stream.write(methodSelection(true));
        } else if (step.kind === "error") {
          if (step.reply === undefined) stream.destroy();
          else endThenDestroy(stream, socksReplyBytes(step.reply));
          return;
        } else {
          if (step.rest.length > 0) stream.unshift(step.rest);
          gone.dispose();
          const reply: TunnelReply = {
            ok: () => stream.write(socksReplyBytes(SocksReply.succeeded)),
            fail: (_status, code) => endThenDestroy(stream, socksReplyBytes(code)),
          };
          return this.#tunnel(stream, sandbox, "socks5", step.target.host, step.target.port, reply);
        }
      }
    } catch {
      stream.destroy();
    } finally {
      gone.dispose();
    }
  }

  /** CONNECT and SOCKS: decide, dial, check TLS when judged as https, then splice or intercept. */
  async #tunnel(stream: Duplex, sandbox: EgressSandbox, via: EgressVia, target: string, port: number, reply: TunnelReply): Promise<void> {
    const gone = closedSignal(stream);
    let flow: Flow | undefined;
    try {
      const decision = await this.#decide(sandbox, target, port, "tunnel", gone.signal);
      if (!decision.allowed) {
        emitDenied(sandbox, via, decision);
        reply.fail(decision.httpStatus, decision.socksReply, deniedBody(decision.reason), true);
        return;
      }
      flow = this.#open(sandbox, via, decision);
      if (flow === undefined) {
        stream.destroy();
        return;
      }
      const current = flow;
      current.own(() => stream.destroy());
      const signal = AbortSignal.any([gone.signal, current.signal]);
      const host = decision.host;
      const secrets = decision.protocol === "https" && host !== undefined ? sandbox.secrets.filter((s) => s.hosts.some((p) => hostMatches(p, host))) : [];
      const upstream = secrets.length > 0 ? undefined : await this.#dial(current, reply, signal);
      if (secrets.length === 0 && upstream === undefined) return;
      reply.ok();
      let buffered: Buffer | undefined;
      if (decision.protocol === "https" && host !== undefined) {
        buffered = await this.#checkSni(stream, current, host, signal);
        if (buffered === undefined) return;
      }
      if (upstream === undefined) {
        const ca = sandbox.ca;
        if (ca === undefined || buffered === undefined) throw new InternalError(`Cannot intercept TLS to "${host}": the sandbox has no CA`);
        current.intercepted = true;
        const result = await intercept({
          client: stream,
          clientHello: buffered,
          host: host ?? "",
          ip: decision.ip,
          port,
          ca,
          secrets: secrets.map(({ name, placeholder, value }) => ({ name, placeholder, value })),
          ...(this.#upstreamCa === undefined ? {} : { upstreamCa: this.#upstreamCa }),
          connectTimeoutMs: this.#connectTimeoutMs,
          signal,
        });
        current.counts.bytesOut = result.bytesOut;
        current.counts.bytesIn = result.bytesIn;
        current.secrets = result.secretsUsed;
        // The workload closing its end is how an intercepted tunnel normally ends, not a failure.
        const clientLeft = result.reason === "aborted" && signal.aborted;
        if (result.reason !== undefined && !clientLeft) current.note(result.reason);
        return;
      }
      if (buffered !== undefined) {
        upstream.write(buffered);
        current.counts.bytesOut += buffered.length;
      }
      await splice(stream, upstream, current.counts);
    } catch (err) {
      flow?.note(oneLine(err instanceof Error ? err.message : "tunnel failed"));
      stream.destroy();
    } finally {
      gone.dispose();
      flow?.finish();
    }
  }

  /** Dials the checked address; on failure answers the client and records why. */
  async #dial(flow: Flow, reply: TunnelReply, signal: AbortSignal): Promise<Duplex | undefined> {
    try {
      const socket = await connectTo(flow.decision.ip, flow.decision.port, this.#connectTimeoutMs, signal);
      socket.on("error", noop);
      flow.own(() => socket.destroy());
      return socket;
    } catch (err) {
      const message = oneLine(err instanceof Error ? err.message : "connect failed");
      flow.note(message);
      const failure = connectFailure(err);
      reply.fail(failure.httpStatus, failure.socksReply, `mvm egress: ${message}\n`, false);
      return undefined;
    }
  }

  /** Reads the ClientHello; its SNI must be present, unencrypted, and the requested host. */
  async #checkSni(stream: Duplex, flow: Flow, host: string, signal: AbortSignal): Promise<Buffer | undefined> {
    let why: string;
    try {
      const { hello, buffered } = await readClientHello(stream, { timeoutMs: this.#connectTimeoutMs, signal });
      if (hello.ech) why = `TLS ClientHello carries encrypted client hello: its SNI cannot be checked against "${host}"`;
      else if (hello.serverName === undefined) why = `TLS SNI is missing: it must be "${host}"`;
      else if (hello.serverName !== host) why = `TLS SNI "${hello.serverName}" does not match "${host}"`;
      else return buffered;
    } catch (err) {
      why = `TLS ClientHello to "${host}" refused: ${err instanceof Error ? err.message : "unreadable"}`;
    }
    flow.deny(why);
    stream.destroy();
    return undefined;
  }
}

function connectReply(stream: Duplex): TunnelReply {
  return {
    ok: () => stream.write("HTTP/1.1 200 Connection Established\r\n\r\n"),
    fail: (status, _code, body, denied) => endThenDestroy(stream, rawResponse(status, body, denied)),
  };
}

/** An AbortSignal that fires when `stream` closes; `dispose` removes the listener. */
function closedSignal(stream: Duplex): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const onClose = (): void => controller.abort(new Error("client connection closed"));
  if (stream.closed || stream.destroyed) onClose();
  else stream.once("close", onClose);
  return { signal: controller.signal, dispose: () => stream.off("close", onClose) };
}
