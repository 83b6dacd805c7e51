import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TierWarning, containerTierAcknowledged } from "./tier-warning.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { cli } from "./_test/test-io.js";
import { scratchDir } from "./_test/scratch.js";

const WARNING = /^warning: backend "namespace" is container tier: the sandbox shares the host kernel, so a kernel exploit inside it reaches the host$/m;

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
