// Container-tier snapshots through the engine (in-process, namespace backend): taking a snapshot
// of a sandbox holding BENCH_SNAPNS_MIB of files in /work, a create from it to the first output
// of `cat` of one of those files, and a fork into BENCH_SNAPNS_FORK children. Baseline from the
// same run: a fresh create to the first output of `echo`.
//
//   node bench/run.mjs snapshot-ns   # BENCH_SNAPNS_RUNS (default 10), BENCH_SNAPNS_MIB (32), BENCH_SNAPNS_FORK (8)
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

const KEEP = { retention: { ttlSeconds: 3600 } };

/** create → first stdout byte of argv, ms. */
async function createToFirstOutput(engine, request, argv) {
  const t0 = performance.now();
  const sb = await engine.createSandbox(request);
  let first;
  const started = await engine.exec(sb.id, { argv }, { onStdout: () => (first ??= performance.now() - t0) });
  await started.exit;
  return { sb, ms: first ?? performance.now() - t0 };
}

export async function benchSnapshotNs({ log, summary, ratio, openEngine, imagesDir, image }) {
  const runs = Number(process.env.BENCH_SNAPNS_RUNS ?? 10);
  const mib = Number(process.env.BENCH_SNAPNS_MIB ?? 32);
  const forkCount = Number(process.env.BENCH_SNAPNS_FORK ?? 8);
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-snapns-"));
  const engine = await openEngine({ stateDir, imagesDir, defaultTtlSeconds: 3600, backends: ["namespace"] });
  try {
    const source = await engine.createSandbox({ backend: "namespace", image });
    // Half random (incompressible, not elided), half small files.
    const fill = `head -c ${(mib / 2) * 1024 * 1024} /dev/urandom > /work/blob && mkdir /work/many && i=0; while [ $i -lt 1000 ]; do echo $i > /work/many/$i; i=$((i+1)); done; head -c ${(mib / 2) * 1024 * 1024} /dev/zero > /work/zeros`;
    await (await engine.exec(source.id, { argv: ["/bin/sh", "-c", fill] }, {})).exit;

    const take = [];
    let snap;
    for (let i = 0; i < runs + 1; i++) {
      const t0 = performance.now();
      const s = await engine.snapshotSandbox(source.id, KEEP);
      if (i >= 1) take.push(performance.now() - t0);
      if (snap === undefined) snap = s;
      else await engine.deleteSnapshot(s.id);
    }
    const restore = [];
    const fresh = [];
    for (let i = 0; i < runs + 1; i++) {
      const r = await createToFirstOutput(engine, { fromSnapshot: snap.id }, ["cat", "/work/many/999"]);
      const f = await createToFirstOutput(engine, { backend: "namespace", image }, ["echo", "hi"]);
      await engine.killSandbox(r.sb.id);
      await engine.killSandbox(f.sb.id);
      if (i >= 1) {
        restore.push(r.ms);
        fresh.push(f.ms);
      }
    }
    const t0 = performance.now();
    const kids = await engine.forkSandbox(source.id, { count: forkCount });
    const forkMs = performance.now() - t0;
    for (const k of kids) await engine.killSandbox(k.id);
    await engine.killSandbox(source.id);
    const r = summary(restore);
    const f = summary(fresh);
    const out = {
      unit: "ms",
      runs,
      workMiB: mib,
      snapshot: { take: summary(take), sizes: snap.sizes },
      restoreToFirstOutput: r,
      baselineFreshCreateToFirstOutput: f,
      restoreRatioP50: ratio(r.p50, f.p50),
      fork: { count: forkCount, wallMs: Math.round(forkMs), perChildMs: Math.round(forkMs / forkCount) },
    };
    log("snapshot-ns", JSON.stringify(out));
    return out;
  } finally {
    await engine.close();
    await rm(stateDir, { recursive: true, force: true });
  }
}
