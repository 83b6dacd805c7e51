import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync, spawn } from "node:child_process";
import { Resolver } from "node:dns/promises";
import { request } from "node:https";
import { connect } from "node:net";
import { startTestNetwork, sweepTestHosts, testNetworkSupport } from "./_test-hosts.js";

const support = testNetworkSupport();
const skip = support.ok ? false : support.reason;

function ipOut(args: string[]): string {
  return spawnSync("ip", args, { encoding: "utf8" }).stdout;
}

test("test network: DNS, HTTPS with SNI, tcp-echo, and close leaves nothing", { skip }, async () => {
  const net = await startTestNetwork({ hosts: 2 });
  try {
    assert.equal(net.hosts.length, 2);
    await net.setDns("api.example.test", { A: [net.hosts[1]!.ip] });
    const resolver = new Resolver({ timeout: 2000, tries: 2 });
    resolver.setServers([net.dnsServer]);
    assert.deepEqual(await resolver.resolve4("api.example.test"), [net.hosts[1]!.ip]);
    await assert.rejects(resolver.resolve4("missing.example.test"), { code: "ENOTFOUND" });

    const https = await net.startServer(1, "https", { names: ["api.example.test"] });
    const body = await new Promise<string>((resolve, reject) => {
      const req = request({ host: https.host.ip, port: https.port, path: "/hello", servername: "api.example.test", ca: net.caPem, timeout: 5000 }, (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c: string) => (text += c)).on("end", () => resolve(text));
      });
      req.on("error", reject).on("timeout", () => req.destroy(new Error("request timed out"))).end();
    });
    assert.deepEqual(JSON.parse(body), { ok: true, path: "/hello" });
    const recorded = await https.requests();
    assert.equal(recorded.length, 1);
    assert.equal(recorded[0]!.sni, "api.example.test");
    assert.equal(recorded[0]!.path, "/hello");

    const echo = await net.startServer(0, "tcp-echo");
    const echoed = await new Promise<string>((resolve, reject) => {
      const s = connect({ host: echo.host.ip, port: echo.port, timeout: 5000 });
      let got = "";
      s.setEncoding("utf8");
      s.on("data", (c: string) => { got += c; if (got.length >= 5) { s.destroy(); resolve(got); } });
      s.on("error", reject).on("timeout", () => s.destroy(new Error("echo timed out")));
      s.write("hello");
    });
    assert.equal(echoed, "hello");
  } finally {
    await net.close();
    await net.close();
  }
  for (const h of net.hosts) assert.ok(!ipOut(["netns", "list"]).includes(h.netns), `netns ${h.netns} left behind`);
  assert.ok(!ipOut(["-j", "link"]).includes(`mvh${process.pid % 100000}x`), "veth left behind");
});

test("sweep removes a namespace left by a dead pid", { skip }, async () => {
  const child = spawn(process.execPath, ["-e", ""]);
  const deadPid = await new Promise<number>((resolve) => child.on("exit", () => resolve(child.pid!)));
  const name = `mvmt-${deadPid}-0`;
  assert.equal(spawnSync("ip", ["netns", "add", name]).status, 0);
  try {
    assert.ok(sweepTestHosts().includes(name));
    assert.ok(!ipOut(["netns", "list"]).includes(name));
  } finally {
    spawnSync("ip", ["netns", "del", name]);
  }
});
