/**
 * Bytes from a sandbox that are JSON (agent control messages, QMP lines from QEMU) are decoded
 * with parseJsonStrict, never with JSON.parse, which keeps the last of two equal keys. This test
 * reads the source of protocol, agent and engine: every file (tests aside) that calls JSON.parse
 * must be listed here with the reason its input never comes from a sandbox, so a new decoder of
 * guest bytes cannot reach JSON.parse unnoticed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

const ROOT = new URL("../../../../", import.meta.url).pathname;

/** Files that may call JSON.parse, each with where its input comes from. */
const HOST_ONLY: Record<string, string> = {
  "packages/protocol/src/json-strict.ts": "the strict decoder itself",
  "packages/engine/src/admission/plan.ts": "signed plans from the operator, accepted only in canonical form",
  "packages/engine/src/admission/policy.ts": "the operator's policy file",
  "packages/engine/src/admission/_testing.ts": "test helper: copies a host-made object",
  "packages/engine/src/audit/line.ts": "the engine's own audit log",
  "packages/engine/src/backends/namespace/launch.ts": "bubblewrap's status pipe, written by bwrap outside the sandbox",
  "packages/engine/src/backends/namespace/_launcher.ts": "test fixture: specs the test wrote",
  "packages/engine/src/backends/namespace/_fixtures.ts": "test fixture: the stand-in agent's lines in tests",
  "packages/engine/src/backends/vm/disk.ts": "the verity record the host wrote",
  "packages/engine/src/backends/vm/snapshot-manifest.ts": "the saved VM's manifest the engine wrote (0600, root)",
  "packages/engine/src/conformance/security.ts": "test: a probe's report, read only by the test's assertions",
  "packages/engine/src/conformance/harness.ts": "test harness: probe output and records in tests",
  "packages/engine/src/daemon/http-io.ts": "API request bodies from local clients of the daemon socket",
  "packages/engine/src/egress/_test-host-server.ts": "test fixture: commands from the test",
  "packages/engine/src/egress/_test-hosts.ts": "test fixture: answers of the test's own server",
  "packages/engine/src/images/layout.ts": "image metadata the store wrote",
  "packages/engine/src/images/refs-index.ts": "the store's ref index",
  "packages/engine/src/runtime/_stand-in-agent.ts": "test fixture: requests from the test",
  "packages/engine/src/secrets/store.ts": "the host's secret store",
  "packages/engine/src/state.ts": "sandbox records the engine wrote",
};

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await sources(path)));
    else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts")) out.push(path);
  }
  return out;
}

test("every JSON.parse outside parseJsonStrict reads host-made input", async () => {
  const calling: string[] = [];
  for (const pkg of ["protocol", "agent", "engine"]) {
    for (const file of await sources(join(ROOT, "packages", pkg, "src"))) {
      if ((await readFile(file, "utf8")).includes("JSON.parse(")) calling.push(file.slice(ROOT.length));
    }
  }
  const unlisted = calling.filter((f) => !(f in HOST_ONLY));
  assert.deepEqual(unlisted, [], "these call JSON.parse: use parseJsonStrict for bytes from a sandbox, or list the file with its reason");
  // A stale entry would let a later decoder in that file pass unseen.
  assert.deepEqual(Object.keys(HOST_ONLY).filter((f) => !calling.includes(f)), []);
});
