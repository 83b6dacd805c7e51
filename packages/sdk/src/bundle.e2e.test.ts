/**
 * The "done when" of bundles: a snapshot taken by one engine restores, with its state, on a second
 * engine with its own state directory and image store (as another host would have), through a
 * file:// directory and through an OCI registry (docker-registry on loopback). Real namespace
 * sandboxes, the default image from the shared image store on the first engine only.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openEngine } from "@mvm/engine";
import { InvalidArgumentError } from "@mvm/protocol";
import { registrySkipReason, startRegistry } from "@mvm/engine/testing";
import { Bundle } from "./bundle.js";
import { EmbeddedEngine } from "./embedded.js";
import { Sandbox } from "./sandbox.js";

const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const present = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);
const skip = !present ? `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh` : (registrySkipReason() ?? false);

test("a snapshot restores on another engine from a bundle, through file:// and an OCI registry", { skip, timeout: 900_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), "mvm-bundle-e2e-"));
  // The sandbox's uid must be able to pass through the state directories' parents.
  chmodSync(root, 0o711);
  const hostA = join(root, "a");
  // Two engines in one process, each its own (openEmbeddedEngine would share one).
  const engineA = new EmbeddedEngine(await openEngine({ stateDir: hostA, imagesDir: IMAGES, defaultBackend: "namespace" }));
  const registry = await startRegistry();
  const engines = [engineA];
  try {
    const sh = async (sb: Sandbox, script: string): Promise<string> => (await sb.commands.run(["sh", "-c", script])).stdout;
    let uris: string[];
    {
      await using sb = await Sandbox.create({ engine: engineA, image: IMAGE, backend: "namespace", ttlSeconds: 300 });
      await sh(sb, "echo carried > /work/state && head -c 3000000 /dev/urandom > /work/blob && sha256sum /work/blob > /work/blob.sum");
      const snap = await sb.snapshot({ retention: { ttlSeconds: 3600 } });
      const viaFile = await Bundle.push(snap, `file://${join(root, "bundles")}`, { engine: engineA });
      const viaRegistry = await Bundle.push(snap.id, `oci+http://${new URL(registry.origin).host}/mvm/envs`, { engine: engineA });
      assert.equal(viaFile.digest.length, 71);
      assert.equal(viaFile.kind, "snapshot");
      uris = [viaFile.uri, viaRegistry.uri];
    }
    for (const [n, uri] of uris.entries()) {
      const stateDir = join(root, `b${n}`);
      const engineB = new EmbeddedEngine(await openEngine({ stateDir, imagesDir: join(stateDir, "images"), defaultBackend: "namespace" }));
      engines.push(engineB);
      assert.deepEqual(await engineB.listImages(), [], "the second engine starts with no image");
      await assert.rejects(Bundle.pull(uri, { engine: engineB }), (err: Error) => err instanceof InvalidArgumentError && /retention/.test(err.message));
      const pulled = await Bundle.pull(uri, { engine: engineB, retention: { ttlSeconds: 3600 } });
      assert.equal(pulled.kind, "snapshot");
      assert.ok(pulled.snapshot !== undefined);
      assert.equal(pulled.packsFetched, pulled.packs, "a fresh host fetches every pack");
      assert.equal(pulled.chunksReused, 0);
      await using copy = await Sandbox.create({ engine: engineB, fromSnapshot: pulled.snapshot.id, ttlSeconds: 120 });
      assert.equal(await sh(copy, "cat /work/state"), "carried\n", uri);
      assert.match(await sh(copy, "cd /work && sha256sum -c blob.sum"), /blob: OK/);
    }
  } finally {
    for (const engine of engines) await engine.close().catch(() => undefined);
    await registry.close();
    rmSync(root, { recursive: true, force: true });
  }
});
