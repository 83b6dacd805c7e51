/**
 * Snapshots through the public SDK, over the daemon (the real daemon server and DaemonClient) and
 * directly on an in-process engine, both on the fake engine: what a call sends, what comes back,
 * and the refusals made before anything is sent.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  InvalidArgumentError,
  NotFoundError,
  PolicyDeniedError,
  UnsupportedCapabilityError,
  type SandboxId,
} from "@mvm/protocol";
import { Sandbox } from "./sandbox.js";
import { Snapshot } from "./snapshot.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { startFakeDaemon, VIAS, engineVia } from "./_test/harness.js";

for (const via of VIAS) {
  test(`[${via}] snapshot, create fromSnapshot by id, digest and object, list, get and delete`, async (t) => {
    const { engine, fake } = await engineVia(t, via);
    await using sb = await Sandbox.create({ engine, ttlSeconds: 600, labels: { team: "a" } });
    await sb.files.write("/work/state", "one");
    const snap = await sb.snapshot({ retention: { ttlSeconds: 86400 }, labels: { step: "deps" } });
    assert.match(snap.id, /^snap_[a-z2-7]{20}$/);
    assert.match(snap.digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(snap.source, sb.id);
    assert.equal(snap.tier, "container");
    assert.equal(snap.memory, false);
    assert.deepEqual(snap.retention, { ttlSeconds: 86400 });
    assert.equal(Date.parse(snap.expiresAt ?? "") - Date.parse(snap.createdAt), 86400 * 1000);
    assert.deepEqual(snap.labels, { step: "deps" });
    assert.equal(snap.sizes.work?.bytes, 3);
    assert.deepEqual(JSON.parse(JSON.stringify(snap)), snap.info);

    // The source goes on and changes; copies start from the captured state.
    await sb.files.write("/work/state", "two");
    for (const fromSnapshot of [snap.id, snap.digest, snap]) {
      await using copy = await Sandbox.create({ engine, fromSnapshot });
      assert.notEqual(copy.id, sb.id);
      assert.equal(await copy.files.read("/work/state"), "one");
      assert.deepEqual(copy.info.labels, { team: "a" });
    }

    const manual = await sb.snapshot({ retention: { manual: true } });
    assert.equal(manual.expiresAt, undefined);
    assert.deepEqual((await Snapshot.list({ engine })).map((s) => s.id).sort(), [snap.id, manual.id].sort());
    assert.deepEqual((await Snapshot.get(snap.digest, { engine })).info, snap.info);

    await Snapshot.delete(snap.id, { engine });
    await assert.rejects(Snapshot.get(snap.id, { engine }), NotFoundError);
    await assert.rejects(Sandbox.create({ engine, fromSnapshot: snap.id }), NotFoundError);
    await manual.delete();
    await assert.rejects(manual.delete(), NotFoundError);
    assert.deepEqual(await Snapshot.list({ engine }), []);
    assert.equal(fake.snapshots.size, 0);
  });

  test(`[${via}] fork starts count sandboxes from the current state; each is its own and disposable`, async (t) => {
    const { engine, fake } = await engineVia(t, via);
    await using sb = await Sandbox.create({ engine });
    await sb.files.write("/work/state", "base");
    const kids = await sb.fork({ count: 3 });
    assert.equal(kids.length, 3);
    assert.equal(new Set([sb.id, ...kids.map((k) => k.id)]).size, 4);
    for (const [i, kid] of kids.entries()) {
      assert.ok(kid instanceof Sandbox);
      assert.equal(await kid.files.read("/work/state"), "base");
      await kid.files.write("/work/state", `kid ${i}`);
    }
    // They diverge: each child and the parent see their own writes.
    assert.deepEqual(await Promise.all(kids.map((k) => k.files.read("/work/state"))), ["kid 0", "kid 1", "kid 2"]);
    assert.equal(await sb.files.read("/work/state"), "base");
    const [one] = await sb.fork();
    assert.ok(one !== undefined);
    {
      await using _owned = one;
    }
    assert.equal(fake.sandboxes.get(one.id as SandboxId)?.info.state, "stopped");
    for (const kid of kids) await kid[Symbol.asyncDispose]();
    assert.deepEqual(kids.map((k) => fake.sandboxes.get(k.id)?.info.state), ["stopped", "stopped", "stopped"]);
  });

  test(`[${via}] the engine's refusals keep their class: memory on the container tier, env secrets without consent`, async (t) => {
    const { engine } = await engineVia(t, via);
    await using sb = await Sandbox.create({ engine, labels: { fake: "env-secrets" } });
    await assert.rejects(sb.snapshot({ retention: { manual: true }, memory: true }), UnsupportedCapabilityError);
    await assert.rejects(sb.snapshot({ retention: { manual: true } }), PolicyDeniedError);
    const snap = await sb.snapshot({ retention: { manual: true }, includeEnvSecrets: true });
    await snap.delete();
  });
}

test("refused before anything is sent: no retention, a bad reference, a bad fork count", async () => {
  const fake = new FakeEngine();
  const calls: string[] = [];
  const engine = new Proxy(fake, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        calls.push(String(key));
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  const sb = await Sandbox.create({ engine });
  calls.length = 0;
  // Retention is always explicit: a JavaScript caller that leaves it out is refused here.
  await assert.rejects(sb.snapshot({} as never), (err: unknown) => err instanceof InvalidArgumentError && /explicit retention/.test(err.message));
  await assert.rejects(sb.snapshot(undefined as never), InvalidArgumentError);
  for (const bad of ["snap_short", "sha256:abc", "../etc", "", "SNAP_ABCDEFGHIJKLMNOPQRST"]) {
    await assert.rejects(Snapshot.get(bad, { engine }), InvalidArgumentError, bad);
    await assert.rejects(Snapshot.delete(bad, { engine }), InvalidArgumentError, bad);
    await assert.rejects(Sandbox.create({ engine, fromSnapshot: bad }), InvalidArgumentError, bad);
  }
  assert.deepEqual(calls, []);
  await sb.kill();
});

test("the daemon client checks fork's count and refuses malformed references without a request", async (t) => {
  const d = await startFakeDaemon(t);
  await assert.rejects(d.client.getSnapshot("not-a-ref"), InvalidArgumentError);
  await assert.rejects(d.client.deleteSnapshot("sha256:XYZ"), InvalidArgumentError);
  const sb = await d.client.createSandbox({});
  await assert.rejects(d.client.forkSandbox(sb.id, { count: 0 }), InvalidArgumentError);
  await assert.rejects(d.client.forkSandbox(sb.id, { count: 17 }), InvalidArgumentError);
  assert.equal((await d.client.forkSandbox(sb.id, { count: 16 })).length, 16);
});
