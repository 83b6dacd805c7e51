/**
 * The snapshot API of the SDK against the real engine embedded in this process (namespace
 * backend, its own state directory, the default image from the shared image store).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NotFoundError, UnsupportedCapabilityError } from "@mvm/protocol";
import { openEmbeddedEngine } from "./embedded.js";
import { Sandbox } from "./sandbox.js";
import { Snapshot } from "./snapshot.js";

const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const present = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);

test(
  "snapshot, create fromSnapshot, fork, list, get and delete on the real engine",
  { skip: present ? false : `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh`, timeout: 300_000 },
  async () => {
    // The sandbox's uid must be able to pass through the state directory's parents.
    const stateDir = mkdtempSync(join(tmpdir(), "mvm-sdk-snapshot-"));
    chmodSync(stateDir, 0o711);
    const engine = await openEmbeddedEngine({ engineOptions: { stateDir, imagesDir: IMAGES, defaultBackend: "namespace" } });
    try {
      const sh = async (sb: Sandbox, script: string): Promise<string> => (await sb.commands.run(["sh", "-c", script])).stdout;
      await using sb = await Sandbox.create({ engine, image: IMAGE, backend: "namespace", ttlSeconds: 300 });
      await sh(sb, "echo one > /work/state");

      await assert.rejects(sb.snapshot({ retention: { manual: true }, memory: true }), UnsupportedCapabilityError);
      const snap = await sb.snapshot({ retention: { ttlSeconds: 3600 }, labels: { step: "one" } });
      assert.match(snap.id, /^snap_[a-z2-7]{20}$/);
      assert.match(snap.digest, /^sha256:[0-9a-f]{64}$/);
      assert.equal(snap.source, sb.id);
      assert.equal(snap.tier, "container");
      assert.equal(snap.memory, false);
      assert.deepEqual(snap.labels, { step: "one" });
      assert.ok(snap.sizes.work !== undefined && snap.sizes.work.bytes > 0, JSON.stringify(snap.sizes));
      assert.equal(Date.parse(snap.expiresAt ?? "") - Date.parse(snap.createdAt), 3600 * 1000);
      await sh(sb, "echo two > /work/state");

      {
        await using copy = await Sandbox.create({ engine, fromSnapshot: snap, ttlSeconds: 120 });
        assert.notEqual(copy.id, sb.id);
        assert.equal(await sh(copy, "cat /work/state"), "one\n");
      }
      const kids = await sb.fork({ count: 2 });
      try {
        assert.equal(new Set([sb.id, ...kids.map((k) => k.id)]).size, 3);
        for (const kid of kids) assert.equal(await sh(kid, "cat /work/state"), "two\n");
        await sh(kids[0]!, "echo mine > /work/state");
        assert.equal(await sh(kids[1]!, "cat /work/state"), "two\n");
        assert.equal(await sh(sb, "cat /work/state"), "two\n");
      } finally {
        for (const kid of kids) await kid.kill();
      }

      assert.deepEqual((await Snapshot.list({ engine })).map((s) => s.id), [snap.id]);
      assert.equal((await Snapshot.get(snap.digest, { engine })).id, snap.id);
      await snap.delete();
      await assert.rejects(Snapshot.get(snap.id, { engine }), NotFoundError);
      await assert.rejects(Sandbox.create({ engine, fromSnapshot: snap.digest }), NotFoundError);
    } finally {
      await engine.close();
      rmSync(stateDir, { recursive: true, force: true });
    }
  },
);
