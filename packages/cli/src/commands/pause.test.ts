import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeEngine } from "../_test/fake-engine.js";
import { cli } from "../_test/test-io.js";

test("pause [--freeze-ttl] and resume call the engine and print the state; --json prints the sandbox", async () => {
  const engine = new FakeEngine();
  const info = engine.newSandbox();
  const paused = await cli(["pause", info.id], { engine });
  assert.equal(paused.code, 0, paused.stderr);
  assert.equal(paused.stdout, `${info.id} paused (TTL running, expires ${info.expiresAt}; killed at ${info.expiresAt} unless resumed)\n`);
  const frozen = await cli(["pause", "--freeze-ttl", "--json", info.id], { engine });
  assert.equal(frozen.code, 0, frozen.stderr);
  assert.equal(JSON.parse(frozen.stdout).state, "paused");
  const resumed = await cli(["resume", info.id], { engine });
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal(resumed.stdout, `${info.id} running, expires ${info.expiresAt}\n`);
  assert.deepEqual(
    engine.calls.filter((c) => /^(pause|resume)Sandbox/.test(c)),
    [`pauseSandbox ${info.id} running`, `pauseSandbox ${info.id} frozen`, `resumeSandbox ${info.id}`],
  );
});

test("create --on-ttl pause asks for a pause at the TTL; a bad action or id is a usage error", async () => {
  const engine = new FakeEngine();
  const created = await cli(["create", "--ttl", "60", "--on-ttl", "pause"], { engine });
  assert.equal(created.code, 0, created.stderr);
  assert.deepEqual(engine.lastCreate, { ttlSeconds: 60, onTtl: "pause", acknowledgeContainerTier: true });
  const bad = await cli(["create", "--on-ttl", "sleep"], { engine });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Invalid value "sleep" for --on-ttl/);
  const noId = await cli(["pause"], { engine });
  assert.equal(noId.code, 2);
  assert.match(noId.stderr, /Missing arguments for "mvmctl pause"/);
});
