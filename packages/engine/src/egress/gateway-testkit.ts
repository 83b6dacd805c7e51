/**
 * Test fixtures for the egress gateway: a real DNS server (dns-packet over UDP) for the gateway's
 * resolver, a recording sandbox, echo upstreams and raw proxy clients. Used by gateway.test.ts only.
 */
import { once } from "node:events";
import net from "node:net";
import { TestDnsServer } from "./_dns-fixture.js";
import { ConnectionEventSchema, type ConnectionEvent, type NetworkPolicy, type NetworkPolicyJson } from "@mvm/protocol";
import type { EgressSandbox, MediatedSecret } from "./gateway.js";
import type { SandboxCa } from "./sandbox-ca.js";

/** A DNS server on 127.0.0.1 answering A queries from `records`; NXDOMAIN otherwise. */
export async function startDns(records: ReadonlyMap<string, readonly string[]>): Promise<{ port: number; queries: string[]; close(): void }> {
  const server = new TestDnsServer();
  for (const [name, a] of records) server.records.set(name, { A: a });
  const queries: string[] = [];
  server.on("query", (name: string) => queries.push(name));
  await server.start();
  return { port: server.socket.address().port, queries, close: () => void server.close() };
}

/** A sandbox whose policy the test replaces and whose events are validated and queued. */
export class RecordingSandbox implements EgressSandbox {
  readonly events: ConnectionEvent[] = [];
  #waiters: ((e: ConnectionEvent) => void)[] = [];
  #read = 0;

  readonly ca?: SandboxCa;

  constructor(
    readonly id: string,
    public current: NetworkPolicy,
    readonly secrets: readonly MediatedSecret[] = [],
    ca?: SandboxCa,
  ) {
    if (ca !== undefined) this.ca = ca;
  }

  policy(): NetworkPolicyJson {
    return this.current.toJSON();
  }

  event(e: ConnectionEvent): void {
    ConnectionEventSchema.parse(e);
    this.events.push(e);
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) {
      this.#read++;
      waiter(e);
    }
  }

  /** The next event not yet returned. */
  next(): Promise<ConnectionEvent> {
    const ready = this.events[this.#read];
    if (ready !== undefined) {
      this.#read++;
      return Promise.resolve(ready);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}

/** Reads from `socket` until `done(buffer)` holds or the socket ends; returns what was read. */
export function readUntil(socket: net.Socket, done: (buf: Buffer) => boolean): Promise<Buffer> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const finish = (): void => {
      socket.off("data", onData);
      socket.off("close", finish);
      socket.pause();
      resolve(buf);
    };
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      if (done(buf)) finish();
    };
    socket.on("data", onData);
    socket.once("close", finish);
    socket.resume();
  });
}

/** Sends CONNECT; returns the socket, the status and the response head (and body when not 200). */
export async function connectVia(proxyPort: number, target: string): Promise<{ socket: net.Socket; status: number; response: string }> {
  const socket = net.connect(proxyPort, "127.0.0.1");
  socket.on("error", () => undefined);
  await once(socket, "connect");
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  const head = await readUntil(socket, (b) => b.includes("\r\n\r\n"));
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head.toString("latin1"))?.[1] ?? 0);
  if (status === 200) return { socket, status, response: head.toString("latin1") };
  const rest = await readUntil(socket, () => false);
  return { socket, status, response: Buffer.concat([head, rest]).toString("utf8") };
}

/** Sends a SOCKS5 handshake; returns the socket and the reply code. */
export async function socksVia(proxyPort: number, handshake: Buffer): Promise<{ socket: net.Socket; reply: number | undefined }> {
  const socket = net.connect(proxyPort, "127.0.0.1");
  socket.on("error", () => undefined);
  await once(socket, "connect");
  socket.write(handshake);
  const answer = await readUntil(socket, (b) => b.length >= 12);
  return { socket, reply: answer.length >= 12 ? answer[3] : undefined };
}

/** A TCP echo server on `host`. */
export async function startEcho(host = "127.0.0.1", port = 0): Promise<net.Server> {
  const server = net.createServer((s) => {
    s.on("error", () => undefined);
    s.pipe(s);
  });
  server.listen(port, host);
  await once(server, "listening");
  return server;
}

export function portOf(server: net.Server): number {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("server is not listening on TCP");
  return address.port;
}
