/**
 * Test-host program: runs inside a test network namespace (`ip netns exec NS node this.js`) and
 * serves what the tests ask for: HTTPS and HTTP servers that record what they receive, a TCP echo
 * server, a byte sink and a DNS server answering from a table. Commands arrive as JSON lines on
 * stdin; each answer is one JSON line `{ id, ok, ... }` on stdout.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createTcpServer } from "node:net";
import type { TLSSocket } from "node:tls";
import { TestDnsServer } from "./_dns-fixture.js";

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
const dns = new TestDnsServer();
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

async function handle(cmd: Record<string, unknown>): Promise<object> {
  switch (cmd["op"]) {
    case "dns":
      dns.silent.clear();
      dns.failing.clear();
      await dns.start(String(cmd["host"]), Number(cmd["port"]));
      return {};
    case "set-dns": {
      const name = String(cmd["name"]).toLowerCase();
      if (cmd["records"] === null) dns.records.delete(name);
      else dns.records.set(name, cmd["records"] as { A?: string[]; AAAA?: string[] });
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
