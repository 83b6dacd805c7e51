/**
 * intercept over real sockets and real TLS: a workload client trusting the sandbox CA talks
 * through a loopback socket to `intercept`, which forwards to a real HTTPS upstream whose
 * certificate comes from a separate test CA.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import { after, before, describe, it } from "node:test";
import { readFirstChunk } from "./gateway-io.js";
import { type InterceptResult, type InterceptSecret, intercept } from "./mitm.js";
import { SandboxCa } from "./sandbox-ca.js";

const HOST = "api.test";
const SECRET: InterceptSecret = { name: "OPENAI_API_KEY", placeholder: "mvm-placeholder-OPENAI-7f3a", value: "sk-live-THE-REAL-KEY-0123456789" };

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** An HTTPS upstream on 127.0.0.1 with a certificate for `certHost` from `issuer`. */
async function startUpstream(issuer: SandboxCa, certHost: string, handler: Handler): Promise<{ server: https.Server; port: number }> {
  const leaf = await issuer.leaf(certHost);
  const server = https.createServer({ key: leaf.keyPem, cert: leaf.certPem }, handler);
  server.on("tlsClientError", () => undefined);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { server, port: (server.address() as net.AddressInfo).port };
}

interface Interceptor {
  port: number;
  results: Promise<InterceptResult>[];
  controller: AbortController;
  close(): void;
}

/** A loopback listener that reads each connection's ClientHello and hands it to `intercept`. */
async function startInterceptor(ca: SandboxCa, upstreamPort: number, upstreamCa: string[], secrets: InterceptSecret[] = [SECRET]): Promise<Interceptor> {
  const controller = new AbortController();
  const results: Promise<InterceptResult>[] = [];
  const server = net.createServer((socket) => {
    socket.on("error", () => undefined);
    results.push(
      readFirstChunk(socket, 5_000, controller.signal).then((clientHello) =>
        intercept({ client: socket, clientHello, host: HOST, ip: "127.0.0.1", port: upstreamPort, ca, secrets, upstreamCa, connectTimeoutMs: 5_000, signal: controller.signal }),
      ),
    );
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as net.AddressInfo).port,
    results,
    controller,
    close: () => {
      controller.abort();
      server.close();
    },
  };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function get(port: number, options: { ca?: string[]; agent?: https.Agent; headers?: Record<string, string>; method?: string; body?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        servername: HOST,
        method: options.method ?? "GET",
        path: "/v1/echo",
        headers: { host: HOST, ...options.headers },
        ...(options.ca === undefined ? {} : { ca: options.ca }),
        agent: options.agent ?? false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

/** Echoes the Authorization header in a header and, split across two chunks, in the body. */
const echo: Handler = (req, res) => {
  const auth = req.headers.authorization ?? "";
  res.writeHead(200, { "x-echo": auth, "x-encoding-asked": req.headers["accept-encoding"] ?? "", "content-length": Buffer.byteLength(`you sent ${auth}`) });
  const half = Math.floor(auth.length / 2);
  res.write(`you sent ${auth.slice(0, half)}`);
  setImmediate(() => res.end(auth.slice(half)));
};

describe("intercept", () => {
  let sandboxCa: SandboxCa;
  let testCa: SandboxCa;
  let strangerCa: SandboxCa;
  before(async () => {
    [sandboxCa, testCa, strangerCa] = await Promise.all([
      SandboxCa.create({ sandboxId: "sbx_mitm" }),
      SandboxCa.create({ sandboxId: "upstream-test-ca" }),
      SandboxCa.create({ sandboxId: "stranger" }),
    ]);
  });
  const cleanups: (() => void)[] = [];
  after(() => {
    for (const c of cleanups) c();
  });

  it("puts the real value upstream, hands back only placeholders, over one keep-alive connection", async () => {
    const seen: http.IncomingHttpHeaders[] = [];
    const upstream = await startUpstream(testCa, HOST, (req, res) => {
      seen.push(req.headers);
      echo(req, res);
    });
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const headers = { authorization: `Bearer ${SECRET.placeholder}`, "accept-encoding": "gzip", "proxy-authorization": "Basic x" };
    const replies = [];
    for (let i = 0; i < 3; i++) replies.push(await get(mitm.port, { ca: [sandboxCa.certPem], agent, headers }));
    const post = await get(mitm.port, { ca: [sandboxCa.certPem], agent, headers, method: "POST", body: "payload with the placeholder " + SECRET.placeholder });
    agent.destroy();
    const [result] = await Promise.all(mitm.results);

    for (const reply of [...replies, post]) {
      assert.equal(reply.status, 200);
      assert.equal(reply.headers["x-echo"], `Bearer ${SECRET.placeholder}`);
      assert.equal(reply.body, `you sent Bearer ${SECRET.placeholder}`);
      assert.equal(reply.headers["x-encoding-asked"], "identity");
    }
    assert.equal(seen.length, 4);
    for (const h of seen) {
      assert.equal(h.authorization, `Bearer ${SECRET.value}`);
      assert.equal(h["proxy-authorization"], undefined);
      assert.equal(h.host, HOST);
    }
    assert.equal(mitm.results.length, 1, "all requests used one tunnel");
    assert.ok(result !== undefined);
    assert.equal(result.requests, 4);
    assert.deepEqual(result.secretsUsed, [SECRET.name]);
    assert.ok(result.bytesOut > 0 && result.bytesIn > 0);
    assert.equal(JSON.stringify(result).includes(SECRET.value), false);
  });

  it("forwards requests without placeholders untouched and reports no secret used", async () => {
    let seenEncoding: string | undefined;
    const upstream = await startUpstream(testCa, HOST, (req, res) => {
      seenEncoding = req.headers["accept-encoding"];
      res.end("plain");
    });
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem], headers: { "accept-encoding": "gzip" } });
    const [result] = await Promise.all(mitm.results);
    assert.equal(reply.body, "plain");
    assert.equal(seenEncoding, "gzip");
    assert.deepEqual(result?.secretsUsed, []);
    assert.equal(result?.reason, undefined);
  });

  it("answers 502 when the upstream certificate comes from an untrusted CA", async () => {
    const upstream = await startUpstream(strangerCa, HOST, echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem], headers: { authorization: SECRET.placeholder } });
    const [result] = await Promise.all(mitm.results);
    assert.equal(reply.status, 502);
    assert.match(reply.body, /^mvm egress: upstream api\.test: .+\n$/);
    assert.equal(reply.body.split("\n").length, 2);
    assert.match(result?.reason ?? "", /^upstream api\.test: .*(certificate|CERT)/);
  });

  it("answers 502 when the upstream certificate names another host", async () => {
    const upstream = await startUpstream(testCa, "other.test", echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem] });
    const [result] = await Promise.all(mitm.results);
    assert.equal(reply.status, 502);
    assert.match(reply.body, /ERR_TLS_CERT_ALTNAME_INVALID/);
    assert.match(result?.reason ?? "", /ERR_TLS_CERT_ALTNAME_INVALID/);
  });

  it("answers 502 when the upstream refuses the connection", async () => {
    const closed = net.createServer().listen(0, "127.0.0.1");
    await once(closed, "listening");
    const port = (closed.address() as net.AddressInfo).port;
    closed.close();
    const mitm = await startInterceptor(sandboxCa, port, [testCa.certPem]);
    cleanups.push(mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem] });
    const [result] = await Promise.all(mitm.results);
    assert.equal(reply.status, 502);
    assert.match(result?.reason ?? "", /ECONNREFUSED/);
  });

  it("a client that does not trust the sandbox CA fails its handshake and intercept says why", async () => {
    const upstream = await startUpstream(testCa, HOST, echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    await assert.rejects(get(mitm.port, { ca: [strangerCa.certPem] }), (err: NodeJS.ErrnoException) => err.code === "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
    const [result] = await Promise.all(mitm.results);
    // Node verifies after the handshake and just closes; OpenSSL clients send an alert instead.
    assert.match(result?.reason ?? "", /^client (TLS handshake: |closed the connection before any request)/);
    assert.equal(result?.requests, 0);
  });

  it("refuses a Host header naming another host with 421 before going upstream", async () => {
    let hits = 0;
    const upstream = await startUpstream(testCa, HOST, (_req, res) => {
      hits++;
      res.end();
    });
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem], headers: { host: "evil.test", authorization: SECRET.placeholder } });
    await Promise.all(mitm.results);
    assert.equal(reply.status, 421);
    assert.equal(hits, 0);
  });

  it("answers upgrades with 501", async () => {
    const upstream = await startUpstream(testCa, HOST, echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem], headers: { connection: "upgrade", upgrade: "websocket" } });
    await Promise.all(mitm.results);
    assert.equal(reply.status, 501);
  });

  it("answers CONNECT inside the tunnel with 501", async () => {
    const upstream = await startUpstream(testCa, HOST, echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const socket = tls.connect({ host: "127.0.0.1", port: mitm.port, servername: HOST, ca: [sandboxCa.certPem] });
    socket.on("error", () => undefined);
    await once(socket, "secureConnect");
    socket.write(`CONNECT elsewhere.test:443 HTTP/1.1\r\nhost: elsewhere.test:443\r\n\r\n`);
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    if (!socket.destroyed) await new Promise((resolve) => socket.once("close", resolve));
    const [result] = await Promise.all(mitm.results);
    assert.match(Buffer.concat(chunks).toString(), /^HTTP\/1\.1 501 /);
    assert.equal(result?.reason, "upgrade or CONNECT refused");
  });

  it("refuses an upstream that answers a secret-carrying request with an encoded body", async () => {
    const upstream = await startUpstream(testCa, HOST, (_req, res) => {
      res.writeHead(200, { "content-encoding": "gzip" });
      res.end("not really gzip");
    });
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem], headers: { authorization: SECRET.placeholder } });
    await Promise.all(mitm.results);
    assert.equal(reply.status, 502);
  });

  it("answers 431 to a request head over 16 KiB", async () => {
    const upstream = await startUpstream(testCa, HOST, echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const reply = await get(mitm.port, { ca: [sandboxCa.certPem], headers: { "x-big": "a".repeat(17 * 1024) } }).catch((err: unknown) => err);
    await Promise.all(mitm.results);
    assert.equal((reply as Reply).status, 431);
  });

  it("offers only http/1.1 to the workload", async () => {
    const upstream = await startUpstream(testCa, HOST, echo);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const socket = tls.connect({ host: "127.0.0.1", port: mitm.port, servername: HOST, ca: [sandboxCa.certPem], ALPNProtocols: ["h2", "http/1.1"] });
    socket.on("error", () => undefined);
    await once(socket, "secureConnect");
    assert.equal(socket.alpnProtocol, "http/1.1");
    socket.destroy();
    await Promise.all(mitm.results);
  });

  it("abort destroys the tunnel and resolves with the reason", async () => {
    const upstream = await startUpstream(testCa, HOST, () => undefined);
    const mitm = await startInterceptor(sandboxCa, upstream.port, [testCa.certPem]);
    cleanups.push(() => upstream.server.close(), mitm.close);
    const socket = tls.connect({ host: "127.0.0.1", port: mitm.port, servername: HOST, ca: [sandboxCa.certPem] });
    socket.on("error", () => undefined);
    await once(socket, "secureConnect");
    socket.write(`GET / HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
    while (mitm.results.length === 0) await new Promise((r) => setImmediate(r));
    mitm.controller.abort();
    const [result] = await Promise.all(mitm.results);
    assert.equal(result?.reason, "aborted");
    if (!socket.destroyed) await new Promise((resolve) => socket.once("close", resolve));
    assert.equal(socket.destroyed, true);
  });
});
