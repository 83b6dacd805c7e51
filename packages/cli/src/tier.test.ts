import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeEngine } from "./_test/fake-engine.js";
import { cli } from "./_test/test-io.js";
import { defaultTierNotice, tierLabel } from "./tier.js";

const NOTICE = /^sandbox sbx_[a-z2-7]{20} on vm-emulated \(VM isolation, emulated \(TCG\): slow\)$/m;

function vmEngine(tier: "vm-emulated" | "vm-hardware" = "vm-emulated"): FakeEngine {
  const engine = new FakeEngine();
  engine.backend = "vm";
  engine.tier = tier;
  return engine;
}

test("the notice names the tier in plain words; unknown tiers are not trusted", () => {
  assert.equal(defaultTierNotice({ id: "sbx_aaaaaaaaaaaaaaaaaaaa", tier: "vm-hardware" }), "sandbox sbx_aaaaaaaaaaaaaaaaaaaa on vm-hardware (hardware VM isolation (KVM))\n");
  assert.equal(tierLabel("container"), "shared host kernel");
  assert.equal(tierLabel("toString"), "unknown tier");
  assert.equal(defaultTierNotice({ id: "sbx_\x1b" as never, tier: "x\x07" as never }), "sandbox sbx_\\x1b on x\\x07 (unknown tier)\n");
});

test("run and create without --backend say on stderr which tier the engine chose", async () => {
  for (const argv of [["run", "--", "true"], ["create"]]) {
    const r = await cli(argv, { engine: vmEngine() });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, NOTICE, argv.join(" "));
    assert.equal(r.stderr.split("\n").length, 2, "one line, and no container-tier warning");
  }
});

test("no notice when --backend names the backend, or with --json (the record carries the tier)", async () => {
  const named = await cli(["run", "--backend", "vm", "--", "true"], { engine: vmEngine() });
  assert.equal(named.code, 0);
  assert.equal(named.stderr, "");
  const json = await cli(["create", "--json"], { engine: vmEngine("vm-hardware") });
  assert.equal(json.stderr, "");
  assert.equal((JSON.parse(json.stdout) as { tier: string }).tier, "vm-hardware");
});

test("a default on the container tier gets the notice and the container-tier warning; acknowledging keeps the notice", async () => {
  const warned = await cli(["run", "--", "true"], { engine: new FakeEngine() });
  assert.match(warned.stderr, /^sandbox sbx_[a-z2-7]{20} on container \(shared host kernel\)\nwarning: backend "namespace" is container tier/);
  const acked = await cli(["run", "--", "true"], { engine: new FakeEngine(), env: { MVM_ACK_CONTAINER_TIER: "1" } });
  assert.match(acked.stderr, /^sandbox sbx_[a-z2-7]{20} on container \(shared host kernel\)\n$/);
});
