/**
 * The engine's bundle capability with a host-process backend (no isolation; the real backend is
 * in sdk/src/bundle.e2e.test.ts): what a push resolves, what a pull registers on a second engine
 * with its own state and image store, what is refused, and what lands in the audit logs.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, NotFoundError } from "@mvm/protocol";
import { Engine } from "../engine.js";
import { ImageStore } from "../images/store.js";
import { HostProcessBackend, STATE_FILE, tinyImageStore, usable } from "../_host-process-backend.js";
import { auditFilePath } from "../audit/log.js";
import { tailAuditEntries } from "../audit/read.js";

let root: string;
let images: ImageStore;
before(async () => {
  ({ root, images } = await tinyImageStore("mvm-bundles-test-"));
});
after(async () => rm(root, { recursive: true, force: true }));

async function events(stateDir: string): Promise<Record<string, unknown>[]> {
  return (await tailAuditEntries(auditFilePath(stateDir), 100_000)).map((s) => s.entry!.event as Record<string, unknown>);
}

test("a snapshot pushed by one engine is pulled by another (own state, own images) and restores there; both audited", async () => {
  const backendA = new HostProcessBackend("namespace", usable("container"));
  const stateA = await mkdtemp(join(root, "a-"));
  const a = await Engine.open({ stateDir: stateA, backends: [backendA], images, agentDir: "/nonexistent", defaultImage: "tiny" });
  const stateB = await mkdtemp(join(root, "b-"));
  const backendB = new HostProcessBackend("namespace", usable("container"));
  const imagesB = await ImageStore.open(join(stateB, "images"));
  const b = await Engine.open({ stateDir: stateB, backends: [backendB], images: imagesB, agentDir: "/nonexistent", defaultImage: "tiny" });
  try {
    const source = await a.createSandbox({ backend: "namespace", resources: { memoryMiB: 256 } });
    await writeFile(join(backendA.launches[0]!.stateDir, STATE_FILE), "carried\n".repeat(500));
    const snap = await a.snapshotSandbox(source.id, { retention: { manual: true } });
    const dir = join(root, "out");
    await assert.rejects(a.pushBundle({ source: "nothing-here", destination: `file://${dir}` }), NotFoundError);
    await assert.rejects(a.pushBundle({ source: snap.id, destination: "file://relative" }), InvalidArgumentError);
    await assert.rejects(a.pushBundle({ source: snap.id, destination: `https://example.org/x` }), InvalidArgumentError);
    const pushed = await a.pushBundle({ source: snap.digest, destination: `file://${dir}` });
    assert.equal(pushed.kind, "snapshot");
    const imageOnly = await a.pushBundle({ source: "tiny", destination: `file://${dir}` });
    assert.equal(imageOnly.kind, "image");

    await assert.rejects(b.pullBundle({ source: `file://${dir}` }), InvalidArgumentError, "not digest-pinned");
    const pulled = await b.pullBundle({ source: pushed.uri, retention: { ttlSeconds: 3600 } });
    assert.equal(pulled.snapshot?.digest, snap.digest);
    assert.notEqual(pulled.snapshot?.id, snap.id);
    assert.equal(pulled.snapshot?.source, "bundle");
    assert.deepEqual((await b.listSnapshots()).map((s) => s.id), [pulled.snapshot!.id]);
    const copy = await b.createSandbox({ fromSnapshot: pulled.snapshot!.id });
    assert.equal(await readFile(join(backendB.launches.at(-1)!.stateDir, STATE_FILE), "utf8"), "carried\n".repeat(500));
    assert.deepEqual(copy.resources, { memoryMiB: 256 }, "the source's limits travel with the snapshot");

    const pushedEvents = (await events(stateA)).filter((e) => e["type"] === "bundle.pushed");
    assert.deepEqual(pushedEvents.map((e) => e["kind"]), ["snapshot", "image"]);
    assert.equal(pushedEvents[0]!["sourceDigest"], snap.digest.slice(7));
    const pulledEvents = (await events(stateB)).filter((e) => e["type"] === "bundle.pulled");
    assert.deepEqual(pulledEvents, [{ type: "bundle.pulled", bundleDigest: pushed.digest.slice(7), kind: "snapshot", imageDigest: pulled.image.digest.slice(7), snapshotId: pulled.snapshot!.id }]);
  } finally {
    await a.close();
    await b.close();
  }
});
