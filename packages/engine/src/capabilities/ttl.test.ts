/**
 * Setting a live sandbox's TTL with a host-process backend (the real backends run the same engine
 * code): bounds, the operator policy's maxTtlSeconds, the record in the audit log.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, PolicyDeniedError } from "@mvm/protocol";
import { Engine } from "../engine.js";
import type { ImageStore } from "../images/store.js";
import { HostProcessBackend, tinyImageStore, usable } from "../_host-process-backend.js";
import { auditFilePath } from "../audit/log.js";
import { tailAuditEntries } from "../audit/read.js";

let root: string;
let images: ImageStore;

before(async () => {
  ({ root, images } = await tinyImageStore("mvm-ttl-test-"));
});
after(async () => rm(root, { recursive: true, force: true }));

test("setSandboxTimeout moves the end from now within 1 s..7 days and the policy's maxTtlSeconds, recorded as sandbox.ttl_set", async () => {
  const stateDir = await mkdtemp(join(root, "state-"));
  const policyFile = join(root, "policy.json");
  await writeFile(policyFile, JSON.stringify({ version: 1, maxTtlSeconds: 7200 }), { mode: 0o600 });
  const engine = await Engine.open({ stateDir, backends: [new HostProcessBackend("namespace", usable("container"))], images, agentDir: "/nonexistent", defaultImage: "tiny", policyFile });
  try {
    const sb = await engine.createSandbox({ backend: "namespace", ttlSeconds: 60 });
    const before = Date.now();
    const info = await engine.setSandboxTimeout(sb.id, 3600);
    assert.ok(Math.abs(Date.parse(info.expiresAt) - (before + 3_600_000)) < 2_000, info.expiresAt);
    await assert.rejects(engine.setSandboxTimeout(sb.id, 7201), PolicyDeniedError);
    for (const bad of [0, -1, 1.5, 7 * 24 * 3600 + 1, Number.NaN]) await assert.rejects(engine.setSandboxTimeout(sb.id, bad), InvalidArgumentError);
    const events = (await tailAuditEntries(auditFilePath(stateDir), 1000)).map((s) => s.entry!.event as Record<string, unknown>);
    assert.deepEqual(
      events.filter((e) => e["type"] === "sandbox.ttl_set"),
      [{ type: "sandbox.ttl_set", sandboxId: sb.id, ttlSeconds: 3600 }],
    );
  } finally {
    await engine.close();
  }
});
