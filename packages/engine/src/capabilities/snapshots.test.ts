/**
 * The engine's snapshot logic with a host-process backend (no isolation: the real backends are
 * tested by conformance/snapshots.ts): what is stored, what a restore is given, what is refused,
 * what lands in the audit log, and what is cleaned up.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  InvalidArgumentError,
  NotFoundError,
  PolicyDeniedError,
  SnapshotMismatchError,
  UnsupportedCapabilityError,
} from "@mvm/protocol";
import { Engine } from "../engine.js";
import type { ImageStore } from "../images/store.js";
import { HostProcessBackend, STATE_FILE, tinyImageStore, usable } from "../_host-process-backend.js";
import { auditFilePath } from "../audit/log.js";
import { tailAuditEntries } from "../audit/read.js";

let root: string;
let images: ImageStore;

before(async () => {
  ({ root, images } = await tinyImageStore("mvm-snapshots-test-"));
});
after(async () => rm(root, { recursive: true, force: true }));

async function engineWith(backend: HostProcessBackend): Promise<{ engine: Engine; stateDir: string }> {
  const stateDir = await mkdtemp(join(root, "state-"));
  const engine = await Engine.open({ stateDir, backends: [backend], images, agentDir: "/nonexistent", defaultImage: "tiny" });
  return { engine, stateDir };
}

async function events(stateDir: string): Promise<{ seq: number; event: Record<string, unknown> }[]> {
  const stored = await tailAuditEntries(auditFilePath(stateDir), 100_000);
  return stored.map((s) => ({ seq: s.entry!.seq, event: s.entry!.event as Record<string, unknown> }));
}

async function chunkFiles(stateDir: string): Promise<string[]> {
  const base = join(stateDir, "snapshots", "chunks", "blake3");
  const out: string[] = [];
  for (const prefix of await readdir(base).catch(() => [] as string[])) for (const name of await readdir(join(base, prefix))) out.push(join(base, prefix, name));
  return out;
}

const KEEP = { retention: { ttlSeconds: 3600 } } as const;

test("a snapshot stores the backend's parts; a create from it (by id or digest) gets verified templates of them, through a plan naming the digest; all of it audited", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine, stateDir } = await engineWith(backend);
  const source = await engine.createSandbox({ backend: "namespace", resources: { memoryMiB: 256 }, labels: { a: "1" } });
  await writeFile(join(backend.launches[0]!.stateDir, STATE_FILE), "state at snapshot\n".repeat(1000));
  await assert.rejects(engine.snapshotSandbox(source.id, { ...KEEP, memory: true }), UnsupportedCapabilityError);
  const snap = await engine.snapshotSandbox(source.id, { ...KEEP, labels: { why: "test" } });
  assert.equal(snap.memory, false);
  assert.equal(snap.tier, "container");
  assert.deepEqual(snap.labels, { why: "test" }, "the engine's own labels are not shown");
  assert.ok(snap.sizes.work && snap.sizes.work.bytes === 18_000);
  assert.deepEqual(await engine.listSnapshots(), [snap]);
  assert.deepEqual(await engine.getSnapshot(snap.digest), snap);

  const plan = await engine.planSandbox({ fromSnapshot: snap.id });
  assert.equal(plan.plan.ir.fromSnapshot, snap.digest, "the plan names the snapshot's digest");
  assert.deepEqual(plan.plan.ir.resources, { memoryMiB: 256, workMiB: source.workMiB }, "restores enforce the source's limits");

  for (const ref of [snap.id, snap.digest]) {
    const copy = await engine.createSandbox({ fromSnapshot: ref, labels: { b: "2" } });
    const spec = backend.launches.at(-1)!;
    assert.equal(spec.sandboxId, copy.id);
    assert.equal(spec.restore?.memory, false);
    assert.equal(await readFile(spec.restore!.parts.work!, "utf8"), "state at snapshot\n".repeat(1000));
    assert.equal(await readFile(join(spec.stateDir, STATE_FILE), "utf8"), "state at snapshot\n".repeat(1000));
    assert.deepEqual(copy.resources, { memoryMiB: 256 });
    assert.deepEqual(copy.labels, { b: "2" });
    const log = await events(stateDir);
    const restored = log.find((e) => e.event["type"] === "snapshot.restored" && e.event["sandboxId"] === copy.id);
    assert.ok(restored);
    assert.equal(copy.receipt?.auditEntryId.split("_")[1], String(restored.seq));
  }
  // A request that contradicts the snapshot's shape is refused before anything starts.
  const launched = backend.launches.length;
  await assert.rejects(engine.createSandbox({ fromSnapshot: snap.id, workMiB: 1 }), InvalidArgumentError);
  await assert.rejects(engine.createSandbox({ fromSnapshot: snap.id, backend: "vm" }), InvalidArgumentError);
  await assert.rejects(engine.createSandbox({ fromSnapshot: "snap_aaaaaaaaaaaaaaaaaaaa" }), NotFoundError);
  assert.equal(backend.launches.length, launched);

  const log = await events(stateDir);
  assert.ok(log.some((e) => e.event["type"] === "snapshot.created" && e.event["snapshotId"] === snap.id && e.event["memory"] === false));
  await engine.deleteSnapshot(snap.id);
  await assert.rejects(engine.getSnapshot(snap.id), NotFoundError);
  assert.deepEqual(await chunkFiles(stateDir), []);
  assert.ok((await events(stateDir)).some((e) => e.event["type"] === "snapshot.deleted" && e.event["by"] === "caller"));
  await engine.close();
});

test("a flipped byte in a stored chunk stops the create with SnapshotMismatchError before the backend is asked for anything", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine, stateDir } = await engineWith(backend);
  const source = await engine.createSandbox({ backend: "namespace" });
  await writeFile(join(backend.launches[0]!.stateDir, STATE_FILE), Buffer.alloc(100_000, 7));
  const snap = await engine.snapshotSandbox(source.id, KEEP);
  const [chunk] = await chunkFiles(stateDir);
  await chmod(chunk!, 0o600);
  const handle = await open(chunk!, "r+");
  await handle.write(Buffer.from([8]), 0, 1, 500);
  await handle.close();
  const launched = backend.launches.length;
  await assert.rejects(engine.createSandbox({ fromSnapshot: snap.id }), SnapshotMismatchError);
  assert.equal(backend.launches.length, launched, "nothing was launched");
  assert.deepEqual((await engine.listSandboxes()).map((s) => s.id), [source.id]);
  await engine.close();
});

test("fork starts count children from the parent's state and settings, removes its snapshot, and records snapshot.forked", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine, stateDir } = await engineWith(backend);
  const parent = await engine.createSandbox({ backend: "namespace", labels: { role: "p" }, env: { MODE: "x" }, ttlSeconds: 600 });
  await writeFile(join(backend.launches[0]!.stateDir, STATE_FILE), "parent state\n");
  const kids = await engine.forkSandbox(parent.id, { count: 3 });
  assert.equal(kids.length, 3);
  assert.equal(new Set(kids.map((k) => k.id)).size, 3);
  for (const kid of kids) {
    assert.deepEqual(kid.labels, { role: "p" });
    const spec = backend.launches.find((l) => l.sandboxId === kid.id)!;
    assert.equal(await readFile(join(spec.stateDir, STATE_FILE), "utf8"), "parent state\n");
    assert.ok(Date.parse(kid.expiresAt) <= Date.parse(parent.expiresAt) + 2000, "a child lives no longer than its parent's TTL left");
  }
  assert.deepEqual(await engine.listSnapshots(), []);
  assert.deepEqual(await chunkFiles(stateDir), [], "the fork's snapshot is gone");
  const log = await events(stateDir);
  const forked = log.find((e) => e.event["type"] === "snapshot.forked");
  assert.deepEqual([...(forked?.event["children"] as string[])].sort(), kids.map((k) => k.id).sort());
  assert.ok(log.some((e) => e.event["type"] === "snapshot.deleted" && e.event["by"] === "engine"));
  await assert.rejects(engine.forkSandbox(parent.id, { count: 17 }), InvalidArgumentError);
  await engine.close();
});

test("env-posture secrets need consent; the operator policy can forbid snapshots and restores", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine, stateDir } = await engineWith(backend);
  await engine.setSecret("tok", "0123456789abcdef");
  const holder = await engine.createSandbox({ backend: "namespace", secrets: { TOKEN: { kind: "secret-ref", source: "store", name: "tok", posture: "env" } } });
  await assert.rejects(engine.snapshotSandbox(holder.id, KEEP), (err: unknown) => err instanceof PolicyDeniedError && /TOKEN/.test(err.message));
  const ok = await engine.snapshotSandbox(holder.id, { ...KEEP, includeEnvSecrets: true });
  await writeFile(join(stateDir, "policy.json"), JSON.stringify({ version: 1, forbidRestores: true }), { mode: 0o644 });
  await assert.rejects(engine.createSandbox({ fromSnapshot: ok.id }), PolicyDeniedError);
  await writeFile(join(stateDir, "policy.json"), JSON.stringify({ version: 1, forbidSnapshots: true }), { mode: 0o644 });
  await assert.rejects(engine.snapshotSandbox(holder.id, { ...KEEP, includeEnvSecrets: true }), PolicyDeniedError);
  await engine.close();
});

test("a capture directory left by an engine killed mid-snapshot is removed by the next engine; a live engine's is not", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const { engine, stateDir } = await engineWith(backend);
  await engine.close();
  const captures = join(stateDir, "snapshots", "capture");
  await mkdir(join(captures, "999999-1-abcdef"), { recursive: true });
  await writeFile(join(captures, "999999-1-abcdef", "work"), "partial");
  const mine = (await readFile(`/proc/${process.pid}/stat`, "utf8")).split(") ")[1]!.split(" ")[19]!;
  await mkdir(join(captures, `${process.pid}-${mine}-123456`));
  const again = await Engine.open({ stateDir, backends: [backend], images, agentDir: "/nonexistent", defaultImage: "tiny" });
  assert.deepEqual(await readdir(captures), [`${process.pid}-${mine}-123456`]);
  assert.deepEqual(await again.listSnapshots(), []);
  await again.close();
});
