import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeEngine } from "../_test/fake-engine.js";
import { cli } from "../_test/test-io.js";

test("image inspect shows the source and the verified provenance; --json prints the whole inspection; unknown images fail", async () => {
  const engine = new FakeEngine();
  const r = await cli(["image", "inspect", "debian:bookworm+python3"], { engine });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(engine.calls.filter((c) => c.startsWith("inspectImage")), ["inspectImage debian:bookworm+python3"]);
  assert.match(r.stdout, /^provenance: sha256:b{64} \(signature verified, key sha256:c{16}…\)$/m);
  assert.match(r.stdout, /^ {2}builder: {2}mvm-build \(uid 999\), boundary netns-unshare$/m);
  assert.match(r.stdout, /^ {4}python3 3\.11\.2-1\+b1 amd64$/m);
  assert.match(r.stdout, /SOURCE_DATE_EPOCH=1686355200, mmdebstrap 1\.3\.5 \(--mode=unshare\)/);
  const json = await cli(["image", "inspect", "--json", "debian:bookworm+python3"], { engine });
  assert.equal(json.code, 0, json.stderr);
  assert.equal(JSON.parse(json.stdout).provenance.status, "verified");
  const missing = await cli(["image", "inspect", "debian:trixie"], { engine });
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /not found/);
});
