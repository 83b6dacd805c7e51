import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeEngine } from "../_test/fake-engine.js";
import { ScriptedStdin, cli } from "../_test/test-io.js";

test("run turns --allow-host, --allow-cidr, --secret, --secret-env and --publish into the create request", async () => {
  const engine = new FakeEngine();
  const r = await cli(
    [
      "run",
      "--allow-host", "api.example.com",
      "--allow-host", "example.org:80",
      "--allow-host", "db.example.net:5432",
      "--allow-cidr", "203.0.113.0/24:443,8443",
      "--allow-cidr", "2001:db8::/32:any",
      "--secret", "API_KEY=example-key",
      "--secret-env", "PLAIN=other-key",
      "--publish", "8080",
      "--publish", "9000:19000",
      "--", "true",
    ],
    { engine },
  );
  assert.equal(r.code, 0, r.stderr);
  const req = engine.lastCreate!;
  assert.deepEqual(req.network?.rules, [
    { kind: "https", host: "api.example.com" },
    { kind: "http", host: "example.org" },
    { kind: "tcp", host: "db.example.net", port: 5432 },
    { kind: "cidr", cidr: "203.0.113.0/24", ports: [443, 8443] },
    { kind: "cidr", cidr: "2001:db8::/32", ports: "any" },
  ]);
  assert.deepEqual(req.secrets, {
    API_KEY: { kind: "secret-ref", source: "store", name: "example-key", posture: "mediated" },
    PLAIN: { kind: "secret-ref", source: "store", name: "other-key", posture: "env" },
  });
  assert.deepEqual(req.ports, [{ guest: 8080 }, { guest: 9000, host: 19000 }]);
});

test("bad network flags are usage errors naming the flag and value", async () => {
  const engine = new FakeEngine();
  for (const [flag, value, why] of [
    ["--allow-host", "10.0.0.1", /--allow-host/],
    ["--allow-host", "*.com", /--allow-host/],
    ["--allow-host", "example.com:0", /port/],
    ["--allow-cidr", "10.0.0.0/8", /CIDR:PORTS/],
    ["--secret", "API_KEY", /ENV=NAME/],
    ["--publish", "1:2:3", /GUEST/],
  ] as const) {
    const r = await cli(["run", flag, value, "--", "true"], { engine });
    assert.equal(r.code, 2, `${flag} ${value}: ${r.stderr}`);
    assert.match(r.stderr, why);
    assert.ok(r.stderr.includes(`"${value}"`), r.stderr);
  }
});

test("secret set reads the value from stdin, never prints it; ls shows names and hosts only; rm deletes", async () => {
  const engine = new FakeEngine();
  const stdin = new ScriptedStdin();
  stdin.push("sk-very-secret-value\n");
  stdin.end();
  const set = await cli(["secret", "set", "example-key", "--host", "api.example.com"], { engine, stdin });
  assert.equal(set.code, 0, set.stderr);
  assert.equal(engine.secretValues.get("example-key")?.value, "sk-very-secret-value\n");
  assert.deepEqual(engine.secretValues.get("example-key")?.hosts, ["api.example.com"]);
  assert.ok(!set.stdout.includes("sk-very-secret-value") && !set.stderr.includes("sk-very-secret-value"));
  const ls = await cli(["secret", "ls"], { engine });
  assert.match(ls.stdout, /example-key .*api\.example\.com/);
  assert.ok(!ls.stdout.includes("sk-very"));
  const rm = await cli(["secret", "rm", "example-key"], { engine });
  assert.equal(rm.code, 0);
  const again = await cli(["secret", "rm", "example-key"], { engine });
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /not found/);
});

test("secret set refuses a terminal on stdin and a value on the command line does not exist as a flag", async () => {
  const engine = new FakeEngine();
  const tty = await cli(["secret", "set", "k1"], { engine, stdin: new ScriptedStdin(true) });
  assert.equal(tty.code, 2);
  assert.match(tty.stderr, /stdin/);
  const flag = await cli(["secret", "set", "k1", "--value", "x"], { engine });
  assert.equal(flag.code, 2);
});

test("network set replaces the policy and says so; logs --network prints each event", async () => {
  const engine = new FakeEngine();
  const info = engine.newSandbox();
  const set = await cli(["network", "set", info.id, "--allow-host", "pypi.org"], { engine });
  assert.equal(set.code, 0, set.stderr);
  assert.equal(set.stdout, "0: allow https pypi.org:443\ndeny everything else\n");
  assert.deepEqual(engine.policies.get(info.id)?.rules, [{ kind: "https", host: "pypi.org" }]);
  engine.networkLog.get(info.id)!.push({
    type: "connection",
    time: "2026-01-01T00:00:00.000Z",
    decision: "denied",
    protocol: "https",
    via: "connect",
    host: "evil.example",
    port: 443,
    reason: "no rule allows it",
    bytesOut: 0,
    bytesIn: 0,
    durationMs: 0,
  });
  const logs = await cli(["logs", "--network", info.id], { engine });
  assert.equal(logs.code, 0, logs.stderr);
  assert.match(logs.stdout, /POLICY +0 -> 1 rules/);
  assert.match(logs.stdout, /DENIED +https evil\.example:443 via connect: no rule allows it/);
  const json = await cli(["logs", "--network", info.id, "--json"], { engine });
  assert.deepEqual(json.stdout.trim().split("\n").map((l) => (JSON.parse(l) as { seq: number }).seq), [1, 2]);
  const sandboxLogs = await cli(["logs", info.id], { engine });
  assert.equal(sandboxLogs.code, 0, sandboxLogs.stderr);
  assert.equal(sandboxLogs.stdout, "agent: fake agent\n");
  const noId = await cli(["logs"], { engine });
  assert.equal(noId.code, 2);
  const deny = await cli(["network", "set", info.id, "--deny-all"], { engine });
  assert.equal(deny.stdout, "deny all egress\n");
});
