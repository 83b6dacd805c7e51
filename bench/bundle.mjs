// Bundles (engine in-process, namespace backend): push and pull of a snapshot bundle (the
// snapshot of a sandbox holding BENCH_BUNDLE_MIB of random data in /work, with its image) through
// file:// and a loopback OCI registry (Debian's docker-registry), and a pull into a fresh state
// directory followed by a restore to the first output. Baselines from the same run, interleaved:
// a plain recursive copy of the pushed bundle's directory (file://), the registry's own upload and
// download of one blob of the same size (OciRegistry.putBlob/getBlobToFile), and a restore of the
// same snapshot already in the local store.
//
//   node bench/run.mjs bundle   # BENCH_BUNDLE_RUNS (default 3), BENCH_BUNDLE_MIB (64)
import { randomBytes } from "node:crypto";
import { chmod, cp, mkdtemp, open, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { registrySkipReason, startRegistry } from "@mvm/engine/testing";
import { OciRegistry } from "../packages/engine/dist/oci/registry.js";

/** create → first stdout byte of argv, ms (from `t0`). */
async function firstOutput(engine, request, argv, t0) {
  const sb = await engine.createSandbox(request);
  let first;
  const started = await engine.exec(sb.id, { argv }, { onStdout: () => (first ??= performance.now() - t0) });
  await started.exit;
  await engine.killSandbox(sb.id);
  return first ?? performance.now() - t0;
}

async function dirBytes(dir) {
  const { readdir } = await import("node:fs/promises");
  let total = 0;
  for (const name of await readdir(join(dir, "blobs", "sha256"))) total += (await stat(join(dir, "blobs", "sha256", name))).size;
  return total;
}

async function randomFile(path, bytes) {
  const handle = await open(path, "wx");
  try {
    for (let at = 0; at < bytes; at += 4 * 1024 * 1024) await handle.write(randomBytes(Math.min(4 * 1024 * 1024, bytes - at)));
  } finally {
    await handle.close();
  }
}

export async function benchBundle({ log, summary, ratio, openEngine, imagesDir, image }) {
  const skipped = registrySkipReason();
  if (skipped) return { skipped };
  const runs = Number(process.env.BENCH_BUNDLE_RUNS ?? 3);
  const mib = Number(process.env.BENCH_BUNDLE_MIB ?? 64);
  const root = await mkdtemp(join(tmpdir(), "mvm-bench-bundle-"));
  await chmod(root, 0o711);
  const engine = await openEngine({ stateDir: join(root, "a"), imagesDir, defaultTtlSeconds: 3600, backends: ["namespace"] });
  const registry = await startRegistry();
  const host = new URL(registry.origin).host;
  try {
    const source = await engine.createSandbox({ backend: "namespace", image });
    await (await engine.exec(source.id, { argv: ["/bin/sh", "-c", `head -c ${mib * 1024 * 1024} /dev/urandom > /work/blob && echo ready > /work/state`] }, {})).exit;
    const snap = await engine.snapshotSandbox(source.id, { retention: { ttlSeconds: 3600 } });
    await engine.killSandbox(source.id);

    const rows = { pushFile: [], copyPushed: [], pullFile: [], copyPulled: [], pushOci: [], putBlob: [], pullOci: [], getBlob: [], pullRestore: [], localRestore: [] };
    let bytes = 0;
    let pulledBytes = 0;
    for (let i = 0; i < runs; i++) {
      log(`bundle run ${i + 1}/${runs}`);
      // file:// push, then a plain copy of what it wrote.
      const dir = join(root, `file-${i}`);
      let t0 = performance.now();
      const pushed = await engine.pushBundle({ source: snap.id, destination: `file://${dir}` });
      rows.pushFile.push(performance.now() - t0);
      bytes = await dirBytes(dir);
      t0 = performance.now();
      await cp(dir, join(root, `copy-${i}`), { recursive: true });
      rows.copyPushed.push(performance.now() - t0);
      await rm(join(root, `copy-${i}`), { recursive: true, force: true });

      // file:// pull into a fresh host, then restore to first output; a plain copy of the same bytes.
      const engineB = await openEngine({ stateDir: join(root, `b-${i}`), imagesDir: join(root, `b-${i}`, "images"), defaultTtlSeconds: 3600, backends: ["namespace"] });
      try {
        t0 = performance.now();
        const pulled = await engineB.pullBundle({ source: pushed.uri, retention: { ttlSeconds: 3600 } });
        rows.pullFile.push(performance.now() - t0);
        pulledBytes = pulled.fetchedBytes;
        rows.pullRestore.push(await firstOutput(engineB, { fromSnapshot: pulled.snapshot.id }, ["cat", "/work/state"], t0));
      } finally {
        await engineB.close();
        await rm(join(root, `b-${i}`), { recursive: true, force: true });
      }
      t0 = performance.now();
      await cp(dir, join(root, `copy-${i}`), { recursive: true });
      rows.copyPulled.push(performance.now() - t0);
      await rm(join(root, `copy-${i}`), { recursive: true, force: true });
      rows.localRestore.push(await firstOutput(engine, { fromSnapshot: snap.id }, ["cat", "/work/state"], performance.now()));
      await rm(dir, { recursive: true, force: true });

      // OCI: push to a fresh repository, then the registry's own upload of one blob of the same size.
      t0 = performance.now();
      const pushedOci = await engine.pushBundle({ source: snap.id, destination: `oci+http://${host}/bench/run${i}` });
      rows.pushOci.push(performance.now() - t0);
      const blobPath = join(root, `blob-${i}`);
      await randomFile(blobPath, bytes);
      const client = new OciRegistry({ origin: registry.origin, repository: `bench/blob${i}` });
      t0 = performance.now();
      const digest = await client.putBlob({ path: blobPath });
      rows.putBlob.push(performance.now() - t0);
      await rm(blobPath, { force: true });
      const engineC = await openEngine({ stateDir: join(root, `c-${i}`), imagesDir: join(root, `c-${i}`, "images"), defaultTtlSeconds: 3600, backends: ["namespace"] });
      try {
        t0 = performance.now();
        await engineC.pullBundle({ source: pushedOci.uri, retention: { ttlSeconds: 3600 } });
        rows.pullOci.push(performance.now() - t0);
      } finally {
        await engineC.close();
        await rm(join(root, `c-${i}`), { recursive: true, force: true });
      }
      t0 = performance.now();
      await client.getBlobToFile(digest, join(root, `got-${i}`), { sizeBytes: bytes });
      rows.getBlob.push(performance.now() - t0);
      await rm(join(root, `got-${i}`), { force: true });
    }
    const mibps = (ms) => Math.round((bytes / 1024 / 1024 / (ms / 1000)) * 10) / 10;
    const p50 = (xs) => summary(xs).p50;
    const figures = {
      bundleBytes: bytes,
      pulledBytes,
      workMiB: mib,
      runs,
      file: {
        pushMs: summary(rows.pushFile),
        plainCopyMs: summary(rows.copyPushed),
        pushMiBps: mibps(p50(rows.pushFile)),
        plainCopyMiBps: mibps(p50(rows.copyPushed)),
        ratioPushVsCopy: ratio(p50(rows.pushFile), p50(rows.copyPushed)),
        pullMs: summary(rows.pullFile),
        pullMiBps: mibps(p50(rows.pullFile)),
        ratioPullVsCopy: ratio(p50(rows.pullFile), p50(rows.copyPulled)),
      },
      oci: {
        pushMs: summary(rows.pushOci),
        putOneBlobMs: summary(rows.putBlob),
        pushMiBps: mibps(p50(rows.pushOci)),
        putOneBlobMiBps: mibps(p50(rows.putBlob)),
        ratioPushVsPutBlob: ratio(p50(rows.pushOci), p50(rows.putBlob)),
        pullMs: summary(rows.pullOci),
        getOneBlobMs: summary(rows.getBlob),
        ratioPullVsGetBlob: ratio(p50(rows.pullOci), p50(rows.getBlob)),
      },
      pullThenRestoreToFirstOutputMs: summary(rows.pullRestore),
      localRestoreToFirstOutputMs: summary(rows.localRestore),
      ratioPullRestoreVsLocalRestore: ratio(p50(rows.pullRestore), p50(rows.localRestore)),
    };
    log("bundle", JSON.stringify(figures));
    return figures;
  } finally {
    await engine.close();
    await registry.close();
    await rm(root, { recursive: true, force: true });
  }
}
