/**
 * Conformance suite: pause and resume. Every backend runs it unchanged (see
 * namespace.conformance.test.ts, vm.conformance.test.ts): a paused sandbox makes no progress,
 * refuses calls with SandboxPausedError, is not declared crashed, keeps or freezes its TTL, pauses
 * at its TTL under `onTtl: "pause"`, is killed and released like a running one, and every pause
 * and resume is in the audit log.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";
import { SandboxPausedError, type BackendName, type EngineApi } from "@mvm/protocol";
import { DEFAULT_IMAGE } from "../engine.js";
import { auditEntries } from "./admission.js";
import { hostFootprint, processesInSandboxCgroups, sh, testEngine, unavailableReason, waitFor, type TestEngine } from "./harness.js";

/** A busy shell loop: counts in /work/n (written whole, then renamed) and prints each count. */
const COUNTER_LOOP = "n=0; while :; do n=$((n+1)); echo $n > /work/n.tmp && mv /work/n.tmp /work/n; echo $n; done";

/** Starts COUNTER_LOOP in the background; `last()` is the latest count it printed. */
async function startCounter(engine: EngineApi, id: string): Promise<{ last: () => number }> {
  let tail = "";
  let last = 0;
  await engine.exec(id, { argv: ["/bin/sh", "-c", COUNTER_LOOP], background: true }, {
    onStdout: (chunk) => {
      const lines = (tail + Buffer.from(chunk).toString("utf8")).split("\n");
      tail = lines.pop() ?? "";
      const n = Number(lines.at(-1));
      if (lines.length > 0 && Number.isSafeInteger(n)) last = n;
    },
  });
  return { last: () => last };
}

export function pauseSuite(backend: BackendName): void {
  const skip = unavailableReason();
  describe(`${backend} backend: pause and resume`, { skip }, () => {
    let t: TestEngine;
    before(async () => {
      t = await testEngine();
    });
    after(async () => t?.close());

    test("pause stops a busy loop's progress and resume continues it; calls while paused are SandboxPausedError; both are audited; kill of a paused sandbox releases everything", async () => {
      const sb = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE });
      const counter = await startCounter(t.engine, sb.id);
      assert.ok(await waitFor(() => counter.last() >= 10, 60_000), "the loop counts");

      const paused = await t.engine.pauseSandbox(sb.id);
      assert.equal(paused.state, "paused");
      // Output already on its way when the pause took effect may still arrive: wait until it has
      // stopped for 500 ms (a loop that still runs never stops), then nothing more may come.
      let atPause = counter.last();
      assert.ok(
        await waitFor(async () => {
          atPause = counter.last();
          await delay(500);
          return counter.last() === atPause;
        }, 10_000),
        "the output stops after pause",
      );
      await delay(1_000);
      assert.equal(counter.last(), atPause, "no progress while paused");
      assert.equal((await t.engine.getSandbox(sb.id)).state, "paused", "the heartbeat does not declare it crashed");
      await assert.rejects(sh(t.engine, sb.id, "true"), (err: unknown) => err instanceof SandboxPausedError && /is paused/.test(err.message));
      await assert.rejects(t.engine.readFile(sb.id, "/work/n"), SandboxPausedError);
      await assert.rejects(t.engine.listProcesses(sb.id), SandboxPausedError);

      const resumed = await t.engine.resumeSandbox(sb.id);
      assert.equal(resumed.state, "running");
      const inFile = Number((await sh(t.engine, sb.id, "cat /work/n")).stdout);
      assert.ok(inFile >= atPause, `the counter file holds the count the loop reached (${inFile} >= ${atPause})`);
      assert.ok(await waitFor(() => counter.last() > atPause + 10, 60_000), "the loop counts on after resume");

      const entries = await auditEntries(t.stateDir);
      const ofSandbox = entries.filter((e) => "sandboxId" in e.event && e.event.sandboxId === sb.id);
      const pausedEntry = ofSandbox.find((e) => e.event.type === "sandbox.paused");
      const resumedEntry = ofSandbox.find((e) => e.event.type === "sandbox.resumed");
      assert.deepEqual(pausedEntry?.event, { type: "sandbox.paused", sandboxId: sb.id, by: "caller", ttl: "running" });
      assert.equal(resumedEntry?.event.type, "sandbox.resumed");
      assert.ok(resumedEntry.event.type === "sandbox.resumed" && resumedEntry.event.pausedMs >= 1_500);
      assert.equal(paused.receipt?.auditEntryId, `aud_${pausedEntry?.seq}_${pausedEntry?.hash.slice(0, 16)}`, "the pause's receipt names its entry");
      assert.equal(resumed.receipt?.auditEntryId, `aud_${resumedEntry.seq}_${resumedEntry.hash.slice(0, 16)}`, "the resume's receipt names its entry");

      // Kill while paused: on the v1 freezer a frozen task dies only once thawed.
      await sh(t.engine, sb.id, "sleep 1000 >/dev/null 2>&1 &");
      const fp = await hostFootprint(t.stateDir, sb.id);
      await t.engine.pauseSandbox(sb.id);
      const killed = await t.engine.killSandbox(sb.id);
      assert.equal(killed.state, "stopped");
      assert.equal(killed.endReason, "killed");
      assert.equal(existsSync(`/proc/${fp.pid}`), false);
      assert.deepEqual(await processesInSandboxCgroups(sb.id), []);
      for (const cg of fp.cgroups) assert.equal(existsSync(cg), false, `cgroup left behind: ${cg}`);
      assert.ok(await waitFor(() => !existsSync(`${t.stateDir}/sandboxes/${sb.id}`)));
    });

    test("the TTL keeps running while paused: a paused sandbox expires and is released", async () => {
      // The TTL runs from before the launch; an emulated VM's launch on a busy host can take most
      // of 3 s, and the case needs the sandbox paused before it expires.
      const sb = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE, ttlSeconds: backend === "vm" ? 15 : 3 });
      const fp = await hostFootprint(t.stateDir, sb.id);
      await t.engine.pauseSandbox(sb.id);
      assert.ok(await waitFor(async () => (await t.engine.getSandbox(sb.id)).state === "stopped", 30_000));
      assert.equal((await t.engine.getSandbox(sb.id)).endReason, "expired");
      assert.ok(await waitFor(() => !existsSync(`/proc/${fp.pid}`)));
      for (const cg of fp.cgroups) assert.ok(await waitFor(() => !existsSync(cg)), `cgroup left behind: ${cg}`);
    });

    test(`{ ttl: "frozen" } keeps a paused sandbox alive past its TTL; resume restarts the remaining time`, async () => {
      const sb = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE, ttlSeconds: backend === "vm" ? 15 : 3 });
      const paused = await t.engine.pauseSandbox(sb.id, { ttl: "frozen" });
      assert.equal(paused.pause?.ttl, "frozen");
      await delay(Date.parse(sb.expiresAt) - Date.now() + 1_000);
      assert.equal((await t.engine.getSandbox(sb.id)).state, "paused", "past its TTL, still paused");
      const resumed = await t.engine.resumeSandbox(sb.id);
      assert.equal(resumed.state, "running");
      assert.ok(Date.parse(resumed.expiresAt) > Date.now());
      assert.ok(await waitFor(async () => (await t.engine.getSandbox(sb.id)).state === "stopped", 30_000));
      assert.equal((await t.engine.getSandbox(sb.id)).endReason, "expired");
    });

    test(`onTtl "pause" pauses the sandbox at expiry instead of killing it, audited as by ttl`, async () => {
      const ttlSeconds = backend === "vm" ? 20 : 3;
      const sb = await t.engine.createSandbox({ backend, image: DEFAULT_IMAGE, ttlSeconds, onTtl: "pause" });
      await sh(t.engine, sb.id, "echo kept > /work/state");
      assert.ok(await waitFor(async () => (await t.engine.getSandbox(sb.id)).state === "paused", (ttlSeconds + 30) * 1000));
      const info = await t.engine.getSandbox(sb.id);
      assert.equal(info.pause?.by, "ttl");
      assert.equal(info.pause?.ttl, "spent");
      await assert.rejects(sh(t.engine, sb.id, "true"), SandboxPausedError);
      const entries = await auditEntries(t.stateDir);
      const event = entries.find((e) => e.event.type === "sandbox.paused" && e.event.sandboxId === sb.id)?.event;
      assert.deepEqual(event, { type: "sandbox.paused", sandboxId: sb.id, by: "ttl", ttl: "spent" });
      await t.engine.resumeSandbox(sb.id);
      assert.equal((await sh(t.engine, sb.id, "cat /work/state")).stdout, "kept\n", "the sandbox's state was kept");
      const fp = await hostFootprint(t.stateDir, sb.id);
      assert.equal((await t.engine.killSandbox(sb.id)).endReason, "killed");
      for (const cg of fp.cgroups) assert.equal(existsSync(cg), false, `cgroup left behind: ${cg}`);
    });
  });
}
