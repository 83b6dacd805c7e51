/**
 * Conformance suite: snapshots, restores and forks, through the engine as callers meet them.
 * Every backend runs it (snapshots.namespace.test.ts, snapshots.vm.test.ts); what differs by tier
 * is what a snapshot holds: the container tier keeps /work and /tmp (a memory snapshot there is
 * UnsupportedCapabilityError), the VM tier keeps memory, devices and /work, so a process that was
 * running goes on running in every restored copy.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { open, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  NotFoundError,
  PolicyDeniedError,
  SnapshotMismatchError,
  UnsupportedCapabilityError,
  type BackendName,
  type SnapshotInfo,
} from "@mvm/protocol";
import { DEFAULT_IMAGE } from "../engine.js";
import { auditEntries } from "./admission.js";
import { run, sh, testEngine, unavailableReason, waitFor, type TestEngine } from "./harness.js";

const KEEP = { retention: { ttlSeconds: 3600 } } as const;

/** Every chunk file of a state directory's snapshot store. */
async function chunkFiles(stateDir: string): Promise<string[]> {
  const base = join(stateDir, "snapshots", "chunks", "blake3");
  const out: string[] = [];
  for (const prefix of await readdir(base).catch(() => [] as string[])) {
    for (const name of await readdir(join(base, prefix))) out.push(join(base, prefix, name));
  }
  return out;
}

/** A Python process that keeps a counter in memory and writes it to /work/counter every 100 ms. */
const PY_COUNTER = [
  "python3",
  "-c",
  "import time\nn=0\nwhile True:\n  n+=1\n  open('/work/counter.tmp','w').write(str(n))\n  __import__('os').replace('/work/counter.tmp','/work/counter')\n  time.sleep(0.1)\n",
];

async function counter(t: TestEngine, id: string): Promise<number> {
  const out = await run(t.engine, id, ["cat", "/work/counter"]);
  return Number(out.stdout.trim());
}

export function snapshotSuite(backend: BackendName): void {
  const skip = unavailableReason();
  const vm = backend === "vm";
  describe(`${backend} backend: snapshots, restores and forks`, { skip }, () => {
    let t: TestEngine;
    before(async () => {
      t = await testEngine();
    });
    after(async () => t?.close());

    test("round trip: a restore starts from the snapshot's files (and, on the VM tier, its running processes); the source carries on; both are audited with receipts", async () => {
      const source = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE });
      await sh(t.engine, source.id, "mkdir -p /work/d && echo kept > /work/d/f && chmod 640 /work/d/f && ln -s d/f /work/link && echo scratch > /tmp/s");
      if (vm) {
        await t.engine.exec(source.id, { argv: PY_COUNTER, background: true }, {});
        assert.ok(await waitFor(async () => (await counter(t, source.id)) >= 5, 60_000), "the counter runs");
      } else {
        await assert.rejects(t.engine.snapshotSandbox(source.id, { ...KEEP, memory: true }), UnsupportedCapabilityError);
      }
      // Read before the snapshot: the source keeps counting while and after it is taken.
      const beforeSnapshot = vm ? await counter(t, source.id) : 0;
      const snap = await t.engine.snapshotSandbox(source.id, { ...KEEP, labels: { purpose: "test" } });
      assert.match(snap.id, /^snap_[a-z2-7]{20}$/);
      assert.match(snap.digest, /^sha256:[0-9a-f]{64}$/);
      assert.equal(snap.tier, source.tier);
      assert.equal(snap.memory, vm);
      assert.equal(snap.source, source.id);
      assert.deepEqual(snap.labels, { purpose: "test" });
      assert.ok(snap.expiresAt !== undefined && Date.parse(snap.expiresAt) > Date.now());

      // The source goes on, and its later changes are not in the snapshot.
      await sh(t.engine, source.id, "echo changed > /work/d/f && rm /tmp/s");
      assert.equal((await sh(t.engine, source.id, "cat /work/d/f")).stdout, "changed\n");

      const byId = await t.engine.getSnapshot(snap.id);
      const byDigest = await t.engine.getSnapshot(snap.digest);
      assert.deepEqual(byDigest, byId);
      assert.ok((await t.engine.listSnapshots()).some((s) => s.id === snap.id));

      const copy = await t.engine.createSandbox({ fromSnapshot: snap.digest });
      assert.notEqual(copy.id, source.id);
      assert.equal(copy.image.digest, source.image.digest);
      assert.equal(copy.backend, backend);
      const files = await sh(t.engine, copy.id, "cat /work/d/f; stat -c %a /work/d/f; readlink /work/link; cat /tmp/s");
      assert.equal(files.stdout, "kept\n640\nd/f\nscratch\n");
      if (vm) {
        // The Python process was restored mid-loop: it continues from the count it had, not from 0.
        const first = await counter(t, copy.id);
        assert.ok(first >= beforeSnapshot, `restored counter ${first} continues from ${beforeSnapshot}`);
        assert.ok(await waitFor(async () => (await counter(t, copy.id)) > first + 3, 60_000), "and keeps counting");
      }

      const entries = await auditEntries(t.stateDir);
      const created = entries.find((e) => e.event.type === "snapshot.created" && e.event.snapshotId === snap.id);
      assert.ok(created, "snapshot.created is in the audit log");
      const restored = entries.find((e) => e.event.type === "snapshot.restored" && e.event.sandboxId === copy.id);
      assert.ok(restored, "snapshot.restored is in the audit log");
      assert.equal(copy.receipt?.auditEntryId.split("_")[1], String(restored.seq), "the copy's receipt names its restore");
      const plan = entries.find((e) => e.event.type === "plan.admitted" && e.seq < restored.seq);
      assert.ok(plan, "the restore was admitted through a plan");

      await t.engine.killSandbox(copy.id);
      await t.engine.killSandbox(source.id);
      await t.engine.deleteSnapshot(snap.id);
      await assert.rejects(t.engine.getSnapshot(snap.id), NotFoundError);
      assert.deepEqual(await chunkFiles(t.stateDir), [], "its chunks went with it");
      assert.ok((await auditEntries(t.stateDir)).some((e) => e.event.type === "snapshot.deleted" && e.event.snapshotId === snap.id && e.event.by === "caller"));
    });

    test("fork: children start from the parent's state with their own ids and diverge; the fork's snapshot is gone afterwards", async () => {
      const parent = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE, labels: { role: "parent" } });
      await sh(t.engine, parent.id, "echo base > /work/state");
      const kids = await t.engine.forkSandbox(parent.id, { count: 2 });
      assert.equal(kids.length, 2);
      const ids = new Set([parent.id, ...kids.map((k) => k.id)]);
      assert.equal(ids.size, 3, "distinct ids");
      for (const [i, kid] of kids.entries()) {
        assert.deepEqual(kid.labels, { role: "parent" });
        assert.equal((await sh(t.engine, kid.id, "cat /work/state")).stdout, "base\n");
        await sh(t.engine, kid.id, `echo kid${i} > /work/state`);
      }
      for (const [i, kid] of kids.entries()) assert.equal((await sh(t.engine, kid.id, "cat /work/state")).stdout, `kid${i}\n`);
      assert.equal((await sh(t.engine, parent.id, "cat /work/state")).stdout, "base\n");
      // Each child's RNG is its own.
      const rng = await Promise.all(kids.map(async (k) => (await sh(t.engine, k.id, "head -c 16 /dev/urandom | od -An -tx1")).stdout));
      assert.notEqual(rng[0], rng[1]);
      assert.deepEqual((await t.engine.listSnapshots()).filter((s) => s.source === parent.id), [], "no snapshot is left listed");
      const entries = await auditEntries(t.stateDir);
      const forked = entries.find((e) => e.event.type === "snapshot.forked" && e.event.sandboxId === parent.id);
      assert.ok(forked && forked.event.type === "snapshot.forked");
      assert.deepEqual([...forked.event.children].sort(), kids.map((k) => k.id).sort());
      for (const k of kids) await t.engine.killSandbox(k.id);
      await t.engine.killSandbox(parent.id);
    });

    test("a snapshot whose chunk was changed on disk fails closed with SnapshotMismatchError and boots nothing; so does an unknown reference", async () => {
      const source = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE });
      await sh(t.engine, source.id, "head -c 300000 /dev/urandom > /work/noise");
      const snap: SnapshotInfo = await t.engine.snapshotSandbox(source.id, KEEP);
      await t.engine.killSandbox(source.id);
      const chunks = await chunkFiles(t.stateDir);
      assert.ok(chunks.length > 0);
      const victim = chunks[0]!;
      const original = await readFile(victim);
      const handle = await open(victim, "r+").catch(async () => {
        // Chunks are stored read-only: a tamperer with the engine's rights changes the mode first.
        await import("node:fs/promises").then((fs) => fs.chmod(victim, 0o600));
        return open(victim, "r+");
      });
      const flipped = Buffer.from([original[original.length >> 1]! ^ 0x01]);
      await handle.write(flipped, 0, 1, original.length >> 1);
      await handle.close();
      const before = await t.engine.listSandboxes();
      await assert.rejects(t.engine.createSandbox({ fromSnapshot: snap.id }), SnapshotMismatchError);
      assert.deepEqual(await t.engine.listSandboxes(), before, "nothing was started");
      await assert.rejects(t.engine.createSandbox({ fromSnapshot: "snap_aaaaaaaaaaaaaaaaaaaa" }), NotFoundError);
      await t.engine.deleteSnapshot(snap.id);
    });

    test("secrets in the environment need consent; the operator policy can forbid snapshots and restores", async () => {
      await t.engine.setSecret("snap-test-token", "s3cr3t-value-0123456789");
      const holder = await t.engine.createSandbox({
        backend,
        image: DEFAULT_IMAGE,
        secrets: { TOKEN: { kind: "secret-ref", source: "store", name: "snap-test-token", posture: "env" } },
      });
      await assert.rejects(t.engine.snapshotSandbox(holder.id, KEEP), PolicyDeniedError);
      const consented = await t.engine.snapshotSandbox(holder.id, { ...KEEP, includeEnvSecrets: true });
      await t.engine.killSandbox(holder.id);

      const policyFile = join(t.stateDir, "policy.json");
      await writeFile(policyFile, JSON.stringify({ version: 1, forbidRestores: true }), { mode: 0o644 });
      await assert.rejects(t.engine.createSandbox({ fromSnapshot: consented.id }), PolicyDeniedError);
      const plain = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE });
      await writeFile(policyFile, JSON.stringify({ version: 1, forbidSnapshots: true }), { mode: 0o644 });
      await assert.rejects(t.engine.snapshotSandbox(plain.id, KEEP), PolicyDeniedError);
      await assert.rejects(t.engine.forkSandbox(plain.id, { count: 1 }), PolicyDeniedError);
      await writeFile(policyFile, JSON.stringify({ version: 1 }), { mode: 0o644 });
      await t.engine.killSandbox(plain.id);
      await t.engine.deleteSnapshot(consented.id);
    });
  });
}
