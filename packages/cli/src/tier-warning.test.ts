import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CONTAINER_TIER_CAVEATS, type CreateSandboxRequest } from "@mvm/protocol";
import { TierWarning, containerTierAcknowledged, containerTierWarning } from "./tier-warning.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { cli } from "./_test/test-io.js";
import { scratchDir } from "./_test/scratch.js";

const WARNING = /^warning: backend "namespace" is container tier, which is not isolation for hostile code:\nwarning: the sandbox shares the host kernel, so claims 1 and 2 /m;

test("TierWarning prints once, and only for the container tier", () => {
  const lines: string[] = [];
  const w = new TierWarning((t) => lines.push(t), false, "/cfg.json");
  w.notice("vm-hardware", "vm");
  w.notice("vm-emulated", "vm");
  assert.equal(lines.length, 0);
  w.notice("container", "namespace");
  w.notice("container", "namespace");
  assert.equal(lines.length, 1);
  assert.match(lines[0] ?? "", WARNING);
  assert.match(lines[0] ?? "", /MVM_ACK_CONTAINER_TIER=1 or "ackContainerTier": true in \/cfg.json/);
  const acked = new TierWarning((t) => lines.push(t), true, "/cfg.json");
  acked.notice("container", "namespace");
  assert.equal(lines.length, 1);
});

test("acknowledgement comes from MVM_ACK_CONTAINER_TIER=1 or the config file", () => {
  assert.equal(containerTierAcknowledged({}, {}), false);
  assert.equal(containerTierAcknowledged({ MVM_ACK_CONTAINER_TIER: "1" }, {}), true);
  assert.equal(containerTierAcknowledged({ MVM_ACK_CONTAINER_TIER: "0" }, {}), false);
  assert.equal(containerTierAcknowledged({}, { ackContainerTier: true }), true);
  assert.equal(containerTierAcknowledged({}, { ackContainerTier: false }), false);
});

test("mvmctl run warns once on stderr for a container-tier sandbox", async () => {
  const engine = new FakeEngine();
  const r = await cli(["run", "--", "true"], { engine });
  assert.equal(r.code, 0);
  assert.equal(r.stderr.match(new RegExp(WARNING.source, "gm"))?.length, 1);
  assert.equal(r.stdout, "");
});

test("mvmctl run on a VM tier prints no warning", async () => {
  const engine = new FakeEngine();
  engine.tier = "vm-emulated";
  engine.backend = "vm";
  const r = await cli(["run", "--", "true"], { engine });
  assert.equal(r.code, 0);
  assert.doesNotMatch(r.stderr, /warning/);
});

test("MVM_ACK_CONTAINER_TIER=1 silences the warning", async () => {
  const r = await cli(["run", "--", "true"], { engine: new FakeEngine(), env: { MVM_ACK_CONTAINER_TIER: "1" } });
  assert.equal(r.code, 0);
  assert.doesNotMatch(r.stderr, /warning/);
});

test("ackContainerTier in the config file silences the warning; an invalid file is an error before any sandbox starts", async () => {
  const dir = scratchDir("tier");
  const good = join(dir, "good.json");
  writeFileSync(good, '{"ackContainerTier": true}');
  const silenced = await cli(["run", "--", "true"], { engine: new FakeEngine(), env: { MVM_CONFIG: good } });
  assert.equal(silenced.code, 0);
  assert.doesNotMatch(silenced.stderr, /warning/);

  const bad = join(dir, "bad.json");
  writeFileSync(bad, '{"ackContainerTier": "yes"}');
  const engine = new FakeEngine();
  const failed = await cli(["run", "--", "true"], { engine, env: { MVM_CONFIG: bad } });
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /^error: Invalid config file ".*bad.json": ackContainerTier: .*\nhint: /);
  assert.deepEqual(engine.calls, []);
});

test("the per-user config file under XDG_CONFIG_HOME is read", async () => {
  const xdg = scratchDir("xdg");
  mkdirSync(join(xdg, "mvm"));
  writeFileSync(join(xdg, "mvm", "config.json"), '{"ackContainerTier": true}');
  const r = await cli(["run", "--", "true"], { engine: new FakeEngine(), env: { XDG_CONFIG_HOME: xdg } });
  assert.equal(r.code, 0);
  assert.doesNotMatch(r.stderr, /warning/);
  const warned = await cli(["run", "--", "true"], { engine: new FakeEngine() });
  assert.match(warned.stderr, WARNING);
});

test("create and exec warn too; ls does not", async () => {
  const engine = new FakeEngine();
  const created = await cli(["create"], { engine });
  assert.match(created.stderr, WARNING);
  const id = created.stdout.trim();
  const exec = await cli(["exec", id, "--", "true"], { engine });
  assert.match(exec.stderr, WARNING);
  const ls = await cli(["ls"], { engine });
  assert.doesNotMatch(ls.stderr, /warning/);
});

test("the warning names the claims that do not hold on the container tier, the same list the engine's refusal names", () => {
  const text = containerTierWarning("namespace", "/cfg.json");
  for (const caveat of CONTAINER_TIER_CAVEATS) assert.ok(text.includes(`warning: ${caveat}\n`), caveat);
  assert.match(text, /claims 1 and 2 .* hold only while the host kernel has no exploitable bug/);
  assert.match(text, /claim 3 .* does not hold/);
});

test("run and create acknowledge the container tier in the request (mvmctl warns itself) and pass on the caller's minimum tier and strict secret mode", async () => {
  const engine = new FakeEngine();
  const plain = await cli(["create"], { engine });
  assert.equal(plain.code, 0, plain.stderr);
  const last = (): CreateSandboxRequest | undefined => engine.lastCreate;
  assert.deepEqual(last(), { acknowledgeContainerTier: true });
  assert.match(plain.stderr, WARNING, "the user is told instead");

  const env = { MVM_MINIMUM_TIER: "container", MVM_STRICT_SECRETS: "1", MVM_ACK_CONTAINER_TIER: "1" };
  const ran = await cli(["run", "--minimum-tier", "vm-emulated", "--", "true"], { engine, env });
  assert.equal(ran.code, 0, ran.stderr);
  assert.equal(last()?.minimumTier, "vm-emulated", "the stronger of --minimum-tier and MVM_MINIMUM_TIER");
  assert.equal(last()?.strictSecrets, true);
  assert.equal(engine.processes.at(-1)?.request.strictSecrets, true, "the exec request carries it too");

  const fromEnv = await cli(["create"], { engine, env: { MVM_MINIMUM_TIER: "vm-hardware" } });
  assert.equal(fromEnv.code, 0, fromEnv.stderr);
  assert.equal(last()?.minimumTier, "vm-hardware");

  const bad = await cli(["create", "--minimum-tier", "vm"], { engine });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--minimum-tier/);
  const badEnv = await cli(["create"], { engine, env: { MVM_MINIMUM_TIER: "fast" } });
  assert.notEqual(badEnv.code, 0);
  assert.match(badEnv.stderr, /^error: Invalid MVM_MINIMUM_TIER "fast"/m);
});

test("exec passes on the caller's MVM_STRICT_SECRETS", async () => {
  const engine = new FakeEngine();
  const id = engine.newSandbox().id;
  const r = await cli(["exec", id, "--", "true"], { engine, env: { MVM_STRICT_SECRETS: "1", MVM_ACK_CONTAINER_TIER: "1" } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(engine.processes.at(-1)?.request.strictSecrets, true);
  await cli(["exec", id, "--", "true"], { engine });
  assert.equal(engine.processes.at(-1)?.request.strictSecrets, undefined);
});
