/**
 * The address floor, end to end: the real gateway asks a real DNS server (on a test host in its own
 * network namespace) and must refuse every floor range an allowed name resolves to, while the same
 * name pointing at a test host goes through.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect, type Server, type Socket } from "node:net";
import { NetworkPolicy, type ConnectionEvent, type NetworkPolicyJson } from "@mvm/protocol";
import { EgressGateway, type EgressSandbox } from "./gateway.js";
import { EgressResolver } from "./resolver.js";
import { startTestNetwork, testNetworkSupport, type TestNetwork } from "./_test-hosts.js";

const support = testNetworkSupport();

/** One address from every range the floor must refuse, by the reason it is refused. */
const FLOOR: readonly { name: string; A?: string[]; AAAA?: string[] }[] = [
  { name: "loopback", A: ["127.0.0.1"] },
  { name: "loopback-high", A: ["127.255.255.254"] },
  { name: "this-network", A: ["0.0.0.0"] },
  { name: "rfc1918-10", A: ["10.1.2.3"] },
  { name: "rfc1918-172", A: ["172.16.0.1"] },
  { name: "rfc1918-192", A: ["192.168.1.1"] },
  { name: "cgnat", A: ["100.64.0.1"] },
  { name: "link-local", A: ["169.254.1.1"] },
  { name: "metadata", A: ["169.254.169.254"] },
  { name: "multicast", A: ["224.0.0.1"] },
  { name: "reserved", A: ["240.0.0.1"] },
  { name: "broadcast", A: ["255.255.255.255"] },
  { name: "v6-loopback", AAAA: ["::1"] },
  { name: "v6-ula", AAAA: ["fd12:3456::1"] },
  { name: "v6-metadata", AAAA: ["fd00:ec2::254"] },
  { name: "v6-link-local", AAAA: ["fe80::1"] },
  { name: "v6-multicast", AAAA: ["ff02::1"] },
  { name: "v6-mapped", AAAA: ["::ffff:127.0.0.1"] },
  { name: "v6-nat64", AAAA: ["64:ff9b::a9fe:a9fe"] },
  { name: "v6-6to4", AAAA: ["2002:0a00:0001::1"] },
];

describe("address floor through a real resolver", { skip: support.ok ? undefined : support.reason, timeout: 120_000 }, () => {
  let net: TestNetwork;
  let gateway: EgressGateway;
  let server: Server;
  let port = 0;
  const events: ConnectionEvent[] = [];
  let policy: NetworkPolicyJson;

  before(async () => {
    net = await startTestNetwork({ hosts: 1 });
    await net.startServer(0, "tcp-echo", { port: 443 });
    let p = NetworkPolicy.denyByDefault().allowTcp("ok.floor.test", 443).allowTcp("host-self.floor.test", 443);
    for (const r of FLOOR) {
      await net.setDns(`${r.name}.floor.test`, { ...(r.A ? { A: r.A } : {}), ...(r.AAAA ? { AAAA: r.AAAA } : {}) });
      p = p.allowTcp(`${r.name}.floor.test`, 443);
    }
    await net.setDns("ok.floor.test", { A: [net.hosts[0]!.ip] });
    // The host's own end of the veth pair: a host address, even though it is in no private range.
    await net.setDns("host-self.floor.test", { A: [net.hosts[0]!.hostSideIp] });
    policy = p.toJSON();
    gateway = new EgressGateway({ resolver: new EgressResolver({ servers: [net.dnsServer], timeoutMs: 3000 }) });
    const sandbox: EgressSandbox = { id: "sbx_floortestfloortestfl", policy: () => policy, secrets: [], event: (e) => events.push(e) };
    server = createServer((s) => gateway.handle(s, sandbox));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as { port: number }).port;
  });

  after(async () => {
    await gateway?.close();
    await new Promise((r) => server?.close(r));
    await net?.close();
  });

  /** CONNECT through the gateway; resolves with the status line. */
  function connectThrough(host: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s: Socket = connect(port, "127.0.0.1", () => s.write(`CONNECT ${host}:443 HTTP/1.1\r\nHost: ${host}:443\r\n\r\n`));
      let got = "";
      s.setEncoding("utf8");
      s.on("data", (c: string) => {
        got += c;
        if (got.includes("\r\n")) {
          s.destroy();
          resolve(got.split("\r\n")[0]!);
        }
      });
      s.on("error", reject);
      s.on("close", () => resolve(got.split("\r\n")[0] ?? ""));
    });
  }

  test("an allowed name on a test host goes through", async () => {
    assert.match(await connectThrough("ok.floor.test"), / 200 /);
  });

  for (const r of FLOOR) {
    test(`floor: ${r.name} (${[...(r.A ?? []), ...(r.AAAA ?? [])].join(", ")}) is refused`, async () => {
      const status = await connectThrough(`${r.name}.floor.test`);
      assert.match(status, / 403 /);
      const e = events.find((x) => x.host === `${r.name}.floor.test`);
      assert.equal(e?.decision, "denied");
      assert.ok((e?.reason ?? "").length > 0);
    });
  }

  test("floor: the host's own address is refused", async () => {
    assert.match(await connectThrough("host-self.floor.test"), / 403 /);
  });
});
