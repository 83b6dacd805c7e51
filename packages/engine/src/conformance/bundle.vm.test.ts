/**
 * A VM-tier memory snapshot moves between two "hosts": engine A (its own state directory, the
 * shared image store) snapshots a running VM sandbox and pushes it as a bundle to a file://
 * directory; engine B (its own state directory and an empty image store of its own) pulls it,
 * verified, and restores it: the process that was running in A's guest goes on counting in B's,
 * and /work came along. One case, one VM per engine (TCG is slow).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EngineApi } from "@mvm/protocol";
import { openEngine } from "../open.js";
import { DEFAULT_IMAGE } from "../engine.js";
import { run, sh, sharedVmCacheDir, testEngine, unavailableReason, waitFor } from "./harness.js";

const skip = unavailableReason() ?? (existsSync("/usr/bin/qemu-system-x86_64") ? undefined : "needs qemu-system-x86_64 (scripts/setup.sh installs it)");

/** A Python process that keeps a counter in memory and writes it to /work/counter every 100 ms. */
const PY_COUNTER = [
  "python3",
  "-c",
  "import time\nn=0\nwhile True:\n  n+=1\n  open('/work/counter.tmp','w').write(str(n))\n  __import__('os').replace('/work/counter.tmp','/work/counter')\n  time.sleep(0.1)\n",
];

test("a VM memory snapshot pushed as a bundle by one engine restores, still running, on another", { skip, timeout: 1_500_000 }, async () => {
  const a = await testEngine();
  const root = await mkdtemp(join(tmpdir(), "mvm-bundle-vm-"));
  await chmod(root, 0o711);
  const b = await openEngine({ stateDir: join(root, "b"), imagesDir: join(root, "b-images"), vmCacheDir: sharedVmCacheDir() });
  try {
    const source = await a.engine.createSandbox({ backend: "vm", image: DEFAULT_IMAGE, ttlSeconds: 900 });
    const counter = async (engine: EngineApi, id: string): Promise<number> => Number((await run(engine, id, ["cat", "/work/counter"])).stdout.trim());
    await sh(a.engine, source.id, "echo carried > /work/state");
    await a.engine.exec(source.id, { argv: PY_COUNTER, background: true }, {});
    assert.ok(await waitFor(async () => (await counter(a.engine, source.id)) >= 5, 120_000), "the counter runs on A");
    const snap = await a.engine.snapshotSandbox(source.id, { retention: { ttlSeconds: 3600 } });
    assert.equal(snap.memory, true);
    await a.engine.killSandbox(source.id);
    const pushed = await a.engine.pushBundle({ source: snap.id, destination: `file://${join(root, "bundles")}` });
    assert.equal(pushed.kind, "snapshot");

    assert.deepEqual(await b.listImages(), [], "B starts with no image");
    const pulled = await b.pullBundle({ source: pushed.uri, retention: { ttlSeconds: 3600 } });
    assert.equal(pulled.snapshot?.digest, snap.digest);
    const copy = await b.createSandbox({ fromSnapshot: pulled.snapshot!.id, ttlSeconds: 600 });
    try {
      assert.equal(copy.backend, "vm");
      assert.equal(copy.tier, source.tier);
      assert.equal((await sh(b, copy.id, "cat /work/state")).stdout, "carried\n");
      const atRestore = await counter(b, copy.id);
      assert.ok(atRestore >= 5, `the counter file came along (${atRestore})`);
      assert.ok(await waitFor(async () => (await counter(b, copy.id)) > atRestore + 3, 120_000), "the process from A's memory goes on counting on B");
    } finally {
      await b.killSandbox(copy.id);
    }
  } finally {
    await b.close();
    await a.close();
    await rm(root, { recursive: true, force: true });
  }
});
