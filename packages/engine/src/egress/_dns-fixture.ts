/**
 * A real DNS server for tests (dns-packet over UDP): answers A and AAAA from a table, NXDOMAIN for
 * unknown names, SERVFAIL for names in `failing`, and nothing at all for names in `silent`. Used
 * in-process by the resolver and gateway tests and inside a test host by _test-host-server.ts.
 */
import dgram from "node:dgram";
import { EventEmitter, once } from "node:events";
import dnsPacket from "dns-packet";
import { ipAddressBytes } from "@mvm/protocol";

export interface DnsRecords {
  A?: readonly string[];
  AAAA?: readonly string[];
}

/** Emits "query" (name, type) for every question it reads. */
export class TestDnsServer extends EventEmitter {
  readonly records = new Map<string, DnsRecords>();
  /** Names whose queries are dropped without an answer. */
  readonly silent = new Set<string>(["silent.test"]);
  /** Names answered with SERVFAIL. */
  readonly failing = new Set<string>(["servfail.test"]);
  readonly socket = dgram.createSocket("udp4");

  /** Listens on `host:port` (port 0: any free port); resolves with "host:port". */
  async start(host = "127.0.0.1", port = 0): Promise<string> {
    this.socket.on("message", (msg, rinfo) => this.#answer(msg, rinfo));
    this.socket.bind(port, host);
    await once(this.socket, "listening");
    return `${host}:${this.socket.address().port}`;
  }

  #answer(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    let query: dnsPacket.DecodedPacket;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const question = query.questions?.[0];
    if (question === undefined) return;
    const name = question.name.toLowerCase().replace(/\.$/, "");
    this.emit("query", name, question.type);
    if (this.silent.has(name)) return;
    const records = this.records.get(name);
    const rcode = this.failing.has(name) ? 2 : records === undefined ? 3 : 0;
    const data = question.type === "A" ? records?.A ?? [] : question.type === "AAAA" ? records?.AAAA ?? [] : [];
    const answers = rcode === 0 ? data.map((ip) => ({ type: question.type as "A", name: question.name, ttl: 1, data: fullForm(ip) })) : [];
    const reply = dnsPacket.encode({
      type: "response",
      id: query.id ?? 0,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
      questions: [question],
      answers,
    });
    this.socket.send(reply, rinfo.port, rinfo.address);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

/** IPv6 as eight hex groups: dns-packet's encoder mis-reads some compressed and dotted forms. */
function fullForm(ip: string): string {
  const parsed = ipAddressBytes(ip);
  if (parsed?.family !== 6) return ip;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((parsed.bytes[i] ?? 0) << 8) | (parsed.bytes[i + 1] ?? 0)).toString(16));
  return groups.join(":");
}
