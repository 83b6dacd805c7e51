/**
 * Warm pools with a host-process backend (no isolation; the real backends run the same engine
 * code): what is started ahead, who may see it, what a claim is admitted under and recorded as,
 * that a pooled sandbox serves one create only, and that nothing is left behind.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { InvalidArgumentError, NotFoundError, type WarmPoolInfo } from "@mvm/protocol";
import { Engine } from "../engine.js";
import type { ImageStore } from "../images/store.js";
import { HostProcessBackend, tinyImageStore, usable } from "../_host-process-backend.js";
import { auditFilePath } from "../audit/log.js";
import { tailAuditEntries } from "../audit/read.js";

let root: string;
let images: ImageStore;

before(async () => {
  ({ root, images } = await tinyImageStore("mvm-pools-test-"));
});
after(async () => rm(root, { recursive: true, force: true }));

async function engineWith(backend: HostProcessBackend): Promise<{ engine: Engine; stateDir: string }> {
  const stateDir = await mkdtemp(join(root, "state-"));
  const engine = await Engine.open({ stateDir, backends: [backend], images, agentDir: "/nonexistent", defaultImage: "tiny" });
  return { engine, stateDir };
}

async function events(stateDir: string): Promise<Record<string, unknown>[]> {
  return (await tailAuditEntries(auditFilePath(stateDir), 100_000)).map((s) => s.entry!.event as Record<string, unknown>);
}

/** Waits until the engine reports the pool with `ready` sandboxes ready and none starting. */
async function settled(engine: Engine, ready: number): Promise<WarmPoolInfo> {
  for (let i = 0; i < 400; i++) {
    const [pool] = await engine.listWarmPools();
    if (pool !== undefined && pool.ready === ready && pool.starting === 0) return pool;
    await delay(25);
  }
  throw new Error(`the pool did not settle at ${ready} ready: ${JSON.stringify(await engine.listWarmPools())}`);
}

const WORKLOAD = { backend: "namespace", resources: { memoryMiB: 256 }, env: { MODE: "warm" } } as const;

test("a pool starts its sandboxes ahead, unseen; a create of the same workload claims one under its own plan, recorded, and the pool refills", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine, stateDir } = await engineWith(backend);
  try {
    const set = await engine.setWarmPool({ sandbox: WORKLOAD, size: 2 });
    assert.equal(set.size, 2);
    await settled(engine, 2);
    assert.equal(backend.launches.length, 2);
    assert.deepEqual(await engine.listSandboxes(), [], "warm sandboxes are not listed");
    const warmIds = backend.launches.map((l) => l.sandboxId);
    for (const id of warmIds) {
      await assert.rejects(engine.getSandbox(id), NotFoundError);
      await assert.rejects(engine.exec(id, { argv: ["/bin/true"] }, {}), NotFoundError);
      await assert.rejects(engine.killSandbox(id).then(() => engine.getSandbox(id)), NotFoundError);
    }

    const claimed = await engine.createSandbox({ ...WORKLOAD, labels: { who: "caller" }, ttlSeconds: 120, command: ["/bin/echo", "hi"] });
    assert.ok(warmIds.includes(claimed.id), "the create was served by a warm sandbox");
    assert.equal(backend.launches.length >= 2, true);
    assert.deepEqual(claimed.labels, { who: "caller" });
    const ttl = (Date.parse(claimed.expiresAt) - Date.parse(claimed.createdAt)) / 1000;
    assert.equal(ttl, 120, "the TTL is the claimant's, counted from the claim");
    assert.deepEqual((await engine.listSandboxes()).map((s) => s.id), [claimed.id]);

    let out = "";
    const run = await engine.exec(claimed.id, { argv: ["/bin/echo", "hi"] }, { onStdout: (c) => void (out += Buffer.from(c).toString()) });
    assert.equal((await run.exit).exitCode, 0);
    assert.equal(out, "hi\n");
    await assert.rejects(engine.exec(claimed.id, { argv: ["/bin/sh"] }, {}), "the claimant's plan names the one command it may run");

    const log = await events(stateDir);
    const claim = log.find((e) => e.type === "sandbox.claimed");
    assert.deepEqual(claim, { type: "sandbox.claimed", sandboxId: claimed.id, planId: claimed.receipt!.planId, pool: set.id });
    const created = log.find((e) => e.type === "sandbox.created" && e.sandboxId === claimed.id);
    assert.notEqual(created?.planId, claimed.receipt!.planId, "the warm start and the claim are admitted under plans of their own");

    const refilled = await settled(engine, 2);
    assert.equal(refilled.claimed, 1);
    assert.equal(backend.launches.length, 3);
  } finally {
    await engine.close();
  }
  assert.ok(backend.children.every((c) => c.exitCode !== null || c.signalCode !== null), "closing the engine ends every pooled sandbox");
});

test("each warm sandbox serves one create; another workload never claims; a smaller pool and size 0 let sandboxes go", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine } = await engineWith(backend);
  try {
    await engine.setWarmPool({ sandbox: WORKLOAD, size: 1 });
    await settled(engine, 1);
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const sb = await engine.createSandbox({ ...WORKLOAD });
      assert.ok(!seen.has(sb.id), "a claimed sandbox is never handed out again");
      seen.add(sb.id);
      await engine.killSandbox(sb.id);
      await settled(engine, 1);
    }
    const before = backend.launches.length;
    const other = await engine.createSandbox({ ...WORKLOAD, env: { MODE: "cold" } });
    assert.equal(backend.launches.length, before + 1, "another environment starts its own sandbox");
    assert.equal(backend.launches.at(-1)!.sandboxId, other.id);
    const bigger = await engine.createSandbox({ ...WORKLOAD, resources: { memoryMiB: 512 } });
    assert.equal(backend.launches.at(-1)!.sandboxId, bigger.id, "other limits start their own sandbox");

    await engine.setWarmPool({ sandbox: WORKLOAD, size: 3 });
    await settled(engine, 3);
    await engine.setWarmPool({ sandbox: WORKLOAD, size: 1 });
    await settled(engine, 1);
    const removed = await engine.setWarmPool({ sandbox: WORKLOAD, size: 0 });
    assert.equal(removed.size, 0);
    assert.deepEqual(await engine.listWarmPools(), []);
    for (let i = 0; i < 200 && backend.children.filter((c) => c.exitCode === null && c.signalCode === null).length > 2; i++) await delay(25);
    assert.equal(backend.children.filter((c) => c.exitCode === null && c.signalCode === null).length, 2, "only the two cold sandboxes still run");
    const neverClaimed = backend.launches.map((l) => l.sandboxId).filter((id) => !seen.has(id) && id !== other.id && id !== bigger.id);
    assert.ok(neverClaimed.length >= 3);
    for (const id of neverClaimed) await assert.rejects(engine.getSandbox(id), NotFoundError, "a warm sandbox that ended unclaimed is not found either");
  } finally {
    await engine.close();
  }
});

test("a workload that is not the same at every start cannot be pooled", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine } = await engineWith(backend);
  try {
    for (const sandbox of [
      { ...WORKLOAD, secrets: { TOKEN: { source: "env", name: "HOME" } } },
      { ...WORKLOAD, ports: [{ guest: 8080 }] },
      { ...WORKLOAD, fromSnapshot: `sha256:${"a".repeat(64)}` },
      { ...WORKLOAD, onTtl: "pause" },
    ]) {
      await assert.rejects(engine.setWarmPool({ sandbox: sandbox as never, size: 1 }), InvalidArgumentError, JSON.stringify(sandbox));
    }
    await assert.rejects(engine.setWarmPool({ sandbox: WORKLOAD, size: 17 }), InvalidArgumentError);
    assert.equal(backend.launches.length, 0);
  } finally {
    await engine.close();
  }
});
