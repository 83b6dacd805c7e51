/**
 * The egress gateway end to end over real sockets: a real DNS server, real TCP/HTTP/TLS
 * upstreams on loopback, and clients that speak CONNECT, absolute-form HTTP and SOCKS5 to a
 * net.Server whose sockets are handed to the gateway exactly as relay streams would be.
 * Loopback is allowed through `addressCheckForTests`; 127.0.0.9 plays a blocked address.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { after, before, describe, it } from "node:test";
import { NetworkPolicy } from "@mvm/protocol";
import { EgressGateway, type GatewayOptions } from "./gateway.js";
import { encodeSocksConnect, SocksReply } from "./gateway-socks.js";
import { connectVia, portOf, readUntil, RecordingSandbox, socksVia, startDns, startEcho } from "./gateway-testkit.js";
import { EgressResolver } from "./resolver.js";
import { SandboxCa } from "./sandbox-ca.js";

const BLOCKED = "127.0.0.9";
/** A loopback address of its own, so the https upstream can own port 443. */
const TLS_IP = "127.0.44.1";
/** The HTTPS upstream that receives substituted secrets. */
const SECRET_IP = "127.0.44.2";
const SECRET_VALUE = "real-secret-value-0123456789";
const PLACEHOLDER = "MVM_PLACEHOLDER_TOKEN_abcdef";

describe("EgressGateway", () => {
  let dns: Awaited<ReturnType<typeof startDns>>;
  let echo: net.Server;
  let echoPort: number;
  let web: http.Server;
  let webPort: number;
  const seenByWeb: { host: string | undefined; url: string | undefined; proxyAuth: string | undefined }[] = [];
  let tlsServer: tls.Server | undefined;
  let httpsServer: https.Server | undefined;
  const seenBySecret: (string | undefined)[] = [];
  /** The CA (PEM) that signed both TLS upstreams' certificates. */
  let caPem = "";
  const cleanups: (() => void)[] = [];

  before(async () => {
    echo = await startEcho();
    echoPort = portOf(echo);
    web = http.createServer((req, res) => {
      seenByWeb.push({ host: req.headers.host, url: req.url, proxyAuth: req.headers["proxy-authorization"] });
      const body: Buffer[] = [];
      req.on("data", (c: Buffer) => body.push(c));
      req.on("end", () => res.end(`ok:${Buffer.concat(body).toString()}`));
    });
    web.listen(0, "127.0.0.1");
    await once(web, "listening");
    webPort = portOf(web as unknown as net.Server);
    dns = await startDns(
      new Map([
        ["echo.test", ["127.0.0.1"]],
        ["web.test", ["127.0.0.1"]],
        ["api.test", [TLS_IP]],
        ["internal.test", [BLOCKED]],
        ["mixed.test", [BLOCKED, "127.0.0.1"]],
        ["secret.test", [SECRET_IP]],
      ]),
    );
    // Port 443 (what an https rule covers) can only be bound as root; CI runs as root.
    if (process.getuid?.() === 0) {
      const testCa = await SandboxCa.create({ sandboxId: "gateway-test-upstreams" });
      caPem = testCa.certPem;
      const api = await testCa.leaf("api.test");
      const server = tls.createServer({ key: api.keyPem, cert: api.certPem }, (s) => {
        s.on("error", () => undefined);
        s.pipe(s);
      });
      server.listen(443, TLS_IP);
      await once(server, "listening");
      tlsServer = server;
      const secretLeaf = await testCa.leaf("secret.test");
      const secure = https.createServer({ key: secretLeaf.keyPem, cert: secretLeaf.certPem }, (req, res) => {
        seenBySecret.push(req.headers.authorization);
        res.end("secured");
      });
      secure.listen(443, SECRET_IP);
      await once(secure, "listening");
      httpsServer = secure;
    }
  });

  after(() => {
    echo.close();
    web.close();
    dns.close();
    tlsServer?.close();
    httpsServer?.close();
    for (const c of cleanups) c();
  });

  /** A gateway plus a front server handing each accepted socket to it for `sandbox`. */
  async function harness(policy: NetworkPolicy, options: Partial<GatewayOptions> = {}, sandbox = new RecordingSandbox("sbx_test", policy)): Promise<{ gateway: EgressGateway; sandbox: RecordingSandbox; port: number }> {
    const gateway = new EgressGateway({
      resolver: new EgressResolver({ servers: [`127.0.0.1:${dns.port}`], timeoutMs: 2_000 }),
      connectTimeoutMs: 5_000,
      addressCheckForTests: (ip) => (ip === BLOCKED ? `"${ip}" is a private address (test floor)` : undefined),
      ...options,
    });
    const front = net.createServer((socket) => gateway.handle(socket, sandbox));
    front.listen(0, "127.0.0.1");
    await once(front, "listening");
    cleanups.push(() => {
      front.close();
      void gateway.close();
    });
    return { gateway, sandbox, port: portOf(front) };
  }

  async function roundTrip(socket: net.Socket, text: string): Promise<string> {
    socket.write(text);
    return (await readUntil(socket, (b) => b.length >= text.length)).toString();
  }

  it("CONNECT allowed by a tcp rule: bytes flow both ways and the event counts them", async () => {
    const { sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowHttps("other.test").allowTcp("echo.test", echoPort));
    const { socket, status } = await connectVia(port, `echo.test:${echoPort}`);
    assert.equal(status, 200);
    assert.equal(await roundTrip(socket, "ping"), "ping");
    socket.end();
    const e = await sandbox.next();
    assert.equal(e.decision, "allowed");
    assert.deepEqual(
      { protocol: e.protocol, via: e.via, host: e.host, ip: e.ip, port: e.port, rule: e.rule, out: e.bytesOut, in: e.bytesIn },
      { protocol: "tcp", via: "connect", host: "echo.test", ip: "127.0.0.1", port: echoPort, rule: 1, out: 4, in: 4 },
    );
  });

  it("CONNECT denied: 403 with a one-line reason, the marker header, and a denied event", async () => {
    const { sandbox, port } = await harness(NetworkPolicy.denyByDefault());
    const queriesBefore = dns.queries.length;
    const { status, response } = await connectVia(port, `echo.test:${echoPort}`);
    assert.equal(status, 403);
    assert.match(response, /\r\nx-mvm-egress: denied\r\n/i);
    assert.match(response, /\r\n\r\nmvm egress: denied: Denied tcp to "echo\.test" port \d+: no rule allows it\n$/);
    const e = await sandbox.next();
    assert.equal(e.decision, "denied");
    assert.equal(e.via, "connect");
    assert.deepEqual(dns.queries.slice(queriesBefore), [], "a name no rule allows is not resolved");
  });

  it("HTTP forward allowed: Host preserved, proxy headers dropped, body both ways counted", async () => {
    const { sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowTcp("web.test", webPort));
    const body = await new Promise<string>((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, method: "POST", path: `http://web.test:${webPort}/hello?x=1`, headers: { host: `web.test:${webPort}`, "proxy-authorization": "Basic c2VjcmV0" } }, (res) => {
        const parts: Buffer[] = [];
        res.on("data", (c: Buffer) => parts.push(c));
        res.on("end", () => resolve(Buffer.concat(parts).toString()));
      });
      req.on("error", reject);
      req.end("abc");
    });
    assert.equal(body, "ok:abc");
    assert.deepEqual(seenByWeb.at(-1), { host: `web.test:${webPort}`, url: "/hello?x=1", proxyAuth: undefined });
    const e = await sandbox.next();
    assert.deepEqual(
      { d: e.decision, protocol: e.protocol, via: e.via, host: e.host, rule: e.rule, out: e.bytesOut, in: e.bytesIn },
      { d: "allowed", protocol: "http", via: "http-proxy", host: "web.test", rule: 0, out: 3, in: 6 },
    );
  });

  it("HTTP forward denied: 403 with body and marker; a relative URL gets 400", async () => {
    const { sandbox, port } = await harness(NetworkPolicy.denyByDefault());
    const res = await fetchVia(port, `http://web.test:${webPort}/`);
    assert.equal(res.status, 403);
    assert.equal(res.headers["x-mvm-egress"], "denied");
    assert.match(res.body, /^mvm egress: denied: Denied http to "web\.test" port \d+: no rule allows it\n$/);
    assert.equal((await sandbox.next()).via, "http-proxy");
    assert.equal((await fetchVia(port, "/relative")).status, 400);
  });

  it("SOCKS5: domain and IPv4 targets allowed (tcp and cidr rules), others refused with 0x02", async () => {
    const policy = NetworkPolicy.denyByDefault().allowTcp("echo.test", echoPort).allowCidr("127.0.0.1/32", [echoPort]);
    const { sandbox, port } = await harness(policy);
    const byName = await socksVia(port, encodeSocksConnect({ addressType: "domain", host: "echo.test", port: echoPort }));
    assert.equal(byName.reply, SocksReply.succeeded);
    assert.equal(await roundTrip(byName.socket, "hi"), "hi");
    byName.socket.end();
    const e1 = await sandbox.next();
    assert.deepEqual({ d: e1.decision, via: e1.via, rule: e1.rule, host: e1.host, out: e1.bytesOut }, { d: "allowed", via: "socks5", rule: 0, host: "echo.test", out: 2 });

    const byIp = await socksVia(port, encodeSocksConnect({ addressType: "ipv4", host: "127.0.0.1", port: echoPort }));
    assert.equal(byIp.reply, SocksReply.succeeded);
    assert.equal(await roundTrip(byIp.socket, "yo"), "yo");
    byIp.socket.end();
    const e2 = await sandbox.next();
    assert.deepEqual({ d: e2.decision, rule: e2.rule, host: e2.host, ip: e2.ip }, { d: "allowed", rule: 1, host: undefined, ip: "127.0.0.1" });

    const denied = await socksVia(port, encodeSocksConnect({ addressType: "domain", host: "web.test", port: webPort }));
    assert.equal(denied.reply, SocksReply.notAllowed);
    assert.equal((await sandbox.next()).decision, "denied");
    const floor = await socksVia(port, encodeSocksConnect({ addressType: "ipv4", host: BLOCKED, port: echoPort }));
    assert.equal(floor.reply, SocksReply.notAllowed);
    assert.match((await sandbox.next()).reason ?? "", /private address/);
    const bind = await socksVia(port, Buffer.from([5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80]));
    assert.equal(bind.reply, SocksReply.commandNotSupported);
  });

  it("a name resolving only to blocked addresses is denied, naming the floor; mixed answers use the allowed one", async () => {
    const policy = NetworkPolicy.denyByDefault().allowTcp("internal.test", echoPort).allowTcp("mixed.test", echoPort);
    const { sandbox, port } = await harness(policy);
    const { status, response } = await connectVia(port, `internal.test:${echoPort}`);
    assert.equal(status, 403);
    assert.match(response, /"internal\.test" resolves only to blocked addresses: "127\.0\.0\.9" is a private address/);
    assert.equal((await sandbox.next()).decision, "denied");
    const mixed = await connectVia(port, `mixed.test:${echoPort}`);
    assert.equal(mixed.status, 200);
    mixed.socket.end();
    assert.equal((await sandbox.next()).ip, "127.0.0.1");
  });

  describe("TLS", { skip: false }, () => {
    const tlsVia = async (port: number, servername: string | undefined): Promise<{ ok: boolean; echoed?: string }> => {
      const { socket, status } = await connectVia(port, "api.test:443");
      assert.equal(status, 200);
      const client = tls.connect({ socket, host: "127.0.0.1", ca: caPem, ...(servername === undefined ? {} : { servername }), checkServerIdentity: () => undefined });
      try {
        await once(client, "secureConnect");
      } catch {
        return { ok: false };
      }
      client.write("secret-free");
      const echoed = await readUntil(client as unknown as net.Socket, (b) => b.length >= 11);
      client.end();
      return { ok: true, echoed: echoed.toString() };
    };

    it("SNI equal to the CONNECT host is spliced to the upstream; the event is https", async (t) => {
      if (tlsServer === undefined) return t.skip("needs root to bind port 443 (CI runs as root)");
      const { sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowHttps("api.test"));
      assert.deepEqual(await tlsVia(port, "api.test"), { ok: true, echoed: "secret-free" });
      const e = await sandbox.next();
      assert.deepEqual({ d: e.decision, protocol: e.protocol, rule: e.rule, ip: e.ip }, { d: "allowed", protocol: "https", rule: 0, ip: TLS_IP });
      assert.ok(e.bytesOut > 11 && e.bytesIn > 11);
    });

    it("an SNI other than the CONNECT host, or none, is denied (no domain fronting)", async (t) => {
      if (tlsServer === undefined) return t.skip("needs root to bind port 443 (CI runs as root)");
      const { sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowHttps("api.test"));
      assert.equal((await tlsVia(port, "other.test")).ok, false);
      const e = await sandbox.next();
      assert.equal(e.decision, "denied");
      assert.equal(e.reason, 'TLS SNI "other.test" does not match "api.test"');
      assert.equal((await tlsVia(port, undefined)).ok, false);
      assert.match((await sandbox.next()).reason ?? "", /^TLS SNI is missing/);
    });
  });

  it("a name that does not resolve: SOCKS host unreachable (0x04), CONNECT 502, a denied event", async () => {
    const { sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowTcp("missing.test", 80));
    const socks = await socksVia(port, encodeSocksConnect({ addressType: "domain", host: "missing.test", port: 80 }));
    assert.equal(socks.reply, SocksReply.hostUnreachable);
    const e = await sandbox.next();
    assert.deepEqual({ d: e.decision, via: e.via, host: e.host }, { d: "denied", via: "socks5", host: "missing.test" });
    assert.match(e.reason ?? "", /missing\.test/);
    assert.equal((await connectVia(port, "missing.test:80")).status, 502);
    assert.equal((await sandbox.next()).decision, "denied");
  });

  it("TLS to a host with a mediated secret is intercepted: the upstream gets the value, the event only the name", async (t) => {
    if (httpsServer === undefined) return t.skip("needs root to bind port 443 (CI runs as root)");
    const ca = await SandboxCa.create({ sandboxId: "sbx_test" });
    const policy = NetworkPolicy.denyByDefault().allowHttps("secret.test");
    const secrets = [{ name: "API_TOKEN", placeholder: PLACEHOLDER, value: SECRET_VALUE, hosts: ["secret.test"] }];
    const { sandbox, port } = await harness(policy, { upstreamCa: [caPem] }, new RecordingSandbox("sbx_test", policy, secrets, ca));
    const { socket, status } = await connectVia(port, "secret.test:443");
    assert.equal(status, 200);
    const client = tls.connect({ socket, servername: "secret.test", ca: ca.certPem });
    client.on("error", () => undefined);
    await once(client, "secureConnect");
    client.write(`GET /x HTTP/1.1\r\nHost: secret.test\r\nAuthorization: Bearer ${PLACEHOLDER}\r\nConnection: close\r\n\r\n`);
    const answer = (await readUntil(client as unknown as net.Socket, () => false)).toString();
    assert.match(answer, /^HTTP\/1\.1 200/);
    assert.match(answer, /\r\nsecured\r\n/);
    assert.deepEqual(seenBySecret, [`Bearer ${SECRET_VALUE}`]);
    const e = await sandbox.next();
    assert.deepEqual({ d: e.decision, protocol: e.protocol, intercepted: e.intercepted, secrets: e.secrets }, { d: "allowed", protocol: "https", intercepted: true, secrets: ["API_TOKEN"] });
    assert.ok(!JSON.stringify(sandbox.events).includes(SECRET_VALUE));
  });

  it("enforce() closes connections the new policy denies, and keeps the others", async () => {
    const { gateway, sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowTcp("echo.test", echoPort).allowCidr("127.0.0.1/32", [echoPort]));
    const named = await connectVia(port, `echo.test:${echoPort}`);
    const literal = await connectVia(port, `127.0.0.1:${echoPort}`);
    assert.equal(await roundTrip(named.socket, "a"), "a");
    assert.equal(await roundTrip(literal.socket, "b"), "b");
    sandbox.current = NetworkPolicy.denyByDefault().allowTcp("echo.test", echoPort);
    assert.equal(gateway.enforce("sbx_test"), 1);
    await once(literal.socket, "close");
    const e = await sandbox.next();
    assert.deepEqual({ d: e.decision, host: e.host, ip: e.ip, reason: e.reason, out: e.bytesOut }, { d: "allowed", host: undefined, ip: "127.0.0.1", reason: "closed: policy changed", out: 1 });
    assert.equal(await roundTrip(named.socket, "c"), "c");
    named.socket.end();
    assert.equal((await sandbox.next()).reason, undefined);
  });

  it("connections beyond the per-sandbox limit are denied with a reason", async () => {
    const { gateway, sandbox, port } = await harness(NetworkPolicy.denyByDefault().allowTcp("echo.test", echoPort), { maxConnectionsPerSandbox: 1 });
    const first = await connectVia(port, `echo.test:${echoPort}`);
    assert.equal(first.status, 200);
    assert.equal(gateway.openConnections("sbx_test"), 1);
    const second = net.connect(port, "127.0.0.1");
    second.on("error", () => undefined);
    await once(second, "close");
    const e = await sandbox.next();
    assert.equal(e.decision, "denied");
    assert.match(e.reason ?? "", /already has 1 open connections, the limit is 1/);
    first.socket.end();
    await sandbox.next();
  });
});

async function fetchVia(proxyPort: number, target: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: proxyPort, path: target, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on("data", (c: Buffer) => parts.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString() }));
    });
    req.on("error", reject);
    req.end();
  });
}
