/**
 * Test-host program: runs inside a test network namespace (`ip netns exec NS node this.js`) and
 * serves what the tests ask for: HTTPS and HTTP servers that record what they receive, a TCP echo
 * server, a byte sink and a DNS server answering from a table. Commands arrive as JSON lines on
 * stdin; each answer is one JSON line `{ id, ok, ... }` on stdout.
 */
import { createSocket } from "node:dgram";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createTcpServer } from "node:net";
import type { TLSSocket } from "node:tls";
import dnsPacket from "dns-packet";

interface Recorded {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  sni?: string;
  body: string;
}

const MAX_LINE = 1024 * 1024;
const MAX_BODY = 64 * 1024;
const recorded = new Map<number, Recorded[]>();
const dnsTable = new Map<string, { A?: string[]; AAAA?: string[] }>();
let nextServer = 1;

function reply(value: object): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function recorder(serverId: number) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      if (size < MAX_BODY) chunks.push(c.subarray(0, MAX_BODY - size));
      size += c.length;
    });
    req.on("end", () => {
      const sni = (req.socket as TLSSocket).servername;
      const entry: Recorded = {
        method: req.method ?? "",
        path: req.url ?? "",
        headers: req.headers as Record<string, string | string[]>,
        body: Buffer.concat(chunks).toString("utf8"),
        ...(typeof sni === "string" ? { sni } : {}),
      };
      recorded.get(serverId)!.push(entry);
      const body = JSON.stringify({ ok: true, path: entry.path });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    });
  };
}

/** IPv6 text with all eight groups written out (dns-packet mis-encodes some compressed forms). */
function fullIpv6(ip: string): string {
  const [head = "", tail = ""] = ip.includes("::") ? ip.split("::") : [ip, undefined as unknown as string];
  const parse = (s: string): string[] => (s === "" ? [] : s.split(":")).flatMap((g) => {
    if (!g.includes(".")) return [g];
    const b = g.split(".").map(Number);
    return [((b[0]! << 8) | b[1]!).toString(16), ((b[2]! << 8) | b[3]!).toString(16)];
  });
  const h = parse(head);
  const t = ip.includes("::") ? parse(tail) : [];
  const fill = ip.includes("::") ? Array(8 - h.length - t.length).fill("0") : [];
  return [...h, ...fill, ...t].join(":");
}

function startDns(host: string, port: number): Promise<void> {
  const sock = createSocket("udp4");
  sock.on("message", (msg, from) => {
    let query;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const q = query.questions?.[0];
    if (!q) return;
    const name = q.name.toLowerCase().replace(/\.$/, "");
    const entry = dnsTable.get(name);
    const answers: dnsPacket.Answer[] = [];
    if (entry && q.type === "A") for (const a of entry.A ?? []) answers.push({ type: "A", name: q.name, ttl: 1, class: "IN", data: a });
    if (entry && q.type === "AAAA") for (const a of entry.AAAA ?? []) answers.push({ type: "AAAA", name: q.name, ttl: 1, class: "IN", data: fullIpv6(a) });
    const out = dnsPacket.encode({
      type: "response",
      id: query.id ?? 0,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | (entry ? 0 : 3), // rcode 3: NXDOMAIN
      questions: [q],
      answers,
    });
    sock.send(out, from.port, from.address);
  });
  return new Promise((resolve, reject) => {
    sock.once("error", reject);
    sock.bind(port, host, () => resolve());
  });
}

async function handle(cmd: Record<string, unknown>): Promise<object> {
  switch (cmd["op"]) {
    case "dns":
      await startDns(String(cmd["host"]), Number(cmd["port"]));
      return {};
    case "set-dns": {
      const name = String(cmd["name"]).toLowerCase();
      if (cmd["records"] === null) dnsTable.delete(name);
      else dnsTable.set(name, cmd["records"] as { A?: string[]; AAAA?: string[] });
      return {};
    }
    case "serve": {
      const id = nextServer++;
      const kind = String(cmd["kind"]);
      const port = Number(cmd["port"] ?? 0);
      recorded.set(id, []);
      let server;
      if (kind === "https") server = createHttpsServer({ key: String(cmd["keyPem"]), cert: String(cmd["certPem"]) }, recorder(id));
      else if (kind === "http") server = createHttpServer(recorder(id));
      else if (kind === "tcp-echo") server = createTcpServer((s) => { s.on("error", () => s.destroy()); s.pipe(s); });
      else if (kind === "sink") {
        server = createTcpServer({ allowHalfOpen: true }, (s) => {
          let n = 0;
          s.on("data", (c: Buffer) => (n += c.length));
          s.on("end", () => s.end(`${n}\n`));
          s.on("error", () => s.destroy());
        });
      } else throw new Error(`unknown server kind ${kind}`);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, String(cmd["host"]), () => resolve());
      });
      const address = server.address();
      return { server: id, port: typeof address === "object" && address ? address.port : 0 };
    }
    case "requests":
      return { requests: recorded.get(Number(cmd["server"])) ?? [] };
    default:
      throw new Error(`unknown op ${String(cmd["op"])}`);
  }
}

let buffered = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk: string) => {
  buffered += chunk;
  if (buffered.length > MAX_LINE) process.exit(2);
  let nl: number;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    let cmd: Record<string, unknown>;
    try {
      cmd = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    handle(cmd).then(
      (r) => reply({ id: cmd["id"], ok: true, ...r }),
      (err: unknown) => reply({ id: cmd["id"], ok: false, error: err instanceof Error ? err.message : String(err) }),
    );
  }
});
process.stdin.on("end", () => process.exit(0));
reply({ id: 0, ok: true, ready: true });
