import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeEngine } from "../_test/fake-engine.js";
import { cli } from "../_test/test-io.js";

test("pool set sends the workload the sandbox flags describe, as run would; pool ls lists; --size is required and bounded", async () => {
  const engine = new FakeEngine();
  const set = await cli(["pool", "set", "--size", "3", "--backend", "namespace", "--memory", "256", "--env", "A=1"], { engine });
  assert.equal(set.code, 2, "--env is an exec flag, not a workload flag");
  const ok = await cli(["pool", "set", "--size", "3", "--backend", "namespace", "--memory", "256"], { engine });
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(engine.poolRequest, { sandbox: { backend: "namespace", resources: { memoryMiB: 256 }, acknowledgeContainerTier: true }, size: 3 });
  assert.match(ok.stdout, /^pool_0123456789abcdef: 0 of 3 ready, 3 starting \(namespace, debian:bookworm\)\n$/);
  const ls = await cli(["pool", "ls", "--json"], { engine });
  assert.equal(ls.code, 0, ls.stderr);
  assert.equal(JSON.parse(ls.stdout)[0].size, 3);
  const removed = await cli(["pool", "set", "--size", "0", "--backend", "namespace", "--memory", "256"], { engine });
  assert.equal(removed.stdout, "pool_0123456789abcdef: removed\n");
  for (const bad of [["pool", "set"], ["pool", "set", "--size", "17"], ["pool", "set", "--size", "2", "--ttl", "60"]]) {
    const r = await cli(bad, { engine });
    assert.equal(r.code, 2, `${bad.join(" ")}: ${r.stderr}`);
  }
});
