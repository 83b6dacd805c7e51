import { test } from "node:test";
import assert from "node:assert/strict";
import { parseJsonStrict } from "@mvm/protocol";
import { FakeEngine } from "../_test/fake-engine.js";
import { cli } from "../_test/test-io.js";

test("bundle push sends the source and destination and prints the pull source; bundle pull sends the retention", async () => {
  const engine = new FakeEngine();
  const pushed = await cli(["bundle", "push", "snap_aaaaaaaaaaaaaaaaaaaa", "file:///srv/bundles"], { engine });
  assert.equal(pushed.code, 0, pushed.stderr);
  assert.match(pushed.stdout, /mvmctl bundle pull file:\/\/\/srv\/bundles@sha256:b{64}\n$/);
  assert.deepEqual(engine.bundleRequests[0], { source: "snap_aaaaaaaaaaaaaaaaaaaa", destination: "file:///srv/bundles" });
  const pulled = await cli(["bundle", "pull", "--ttl", "3600", "--json", `file:///srv/bundles@sha256:${"b".repeat(64)}`], { engine });
  assert.equal(pulled.code, 0, pulled.stderr);
  assert.deepEqual(engine.bundleRequests[1], { source: `file:///srv/bundles@sha256:${"b".repeat(64)}`, retention: { ttlSeconds: 3600 } });
  assert.equal((parseJsonStrict(pulled.stdout) as { kind: string }).kind, "image");
  const keep = await cli(["bundle", "pull", "--keep", `file:///srv/bundles@sha256:${"b".repeat(64)}`], { engine });
  assert.equal(keep.code, 0, keep.stderr);
  assert.deepEqual(engine.bundleRequests[2], { source: `file:///srv/bundles@sha256:${"b".repeat(64)}`, retention: { manual: true } });
  for (const bad of [["bundle", "push", "x"], ["bundle", "pull"], ["bundle", "pull", "--ttl", "60", "--keep", "file:///x@sha256:1"]]) {
    const r = await cli(bad, { engine });
    assert.equal(r.code, 2, `${bad.join(" ")}: ${r.stderr}`);
  }
});
