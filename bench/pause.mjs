// Pause and resume latency, per backend: one sandbox running a busy shell loop, then
// BENCH_PAUSE_RUNS pause → resume cycles (two more first, discarded), each call timed from the
// caller's side (engine API, in-process: backend work, the audit append and its fsync included).
// Baseline from the same sandbox in the same run: the exec round trip of `true`.
//
//   node bench/run.mjs pause       # BENCH_PAUSE_RUNS (default 20), BENCH_PAUSE_BACKENDS (default namespace,vm)
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

export async function benchPause({ log, summary, ratio, openEngine, imagesDir, image }) {
  const runs = Number(process.env.BENCH_PAUSE_RUNS ?? 20);
  const backends = (process.env.BENCH_PAUSE_BACKENDS ?? "namespace,vm").split(",").filter(Boolean);
  const out = { unit: "ms", runs };
  for (const backend of backends) {
    const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-pause-"));
    const engine = await openEngine({ stateDir, imagesDir, defaultTtlSeconds: 3600, backends: [backend] });
    try {
      const probe = (await engine.health()).backends.find((b) => b.backend === backend);
      if (!probe?.usable) {
        out[backend] = { skipped: `backend "${backend}" is not usable on this host` };
        continue;
      }
      const sb = await engine.createSandbox({ backend, image });
      await engine.exec(sb.id, { argv: ["/bin/sh", "-c", "n=0; while :; do n=$((n+1)); done"], background: true }, {});
      const pause = [];
      const resume = [];
      for (let i = 0; i < runs + 2; i++) {
        const t0 = performance.now();
        await engine.pauseSandbox(sb.id);
        const t1 = performance.now();
        await engine.resumeSandbox(sb.id);
        const t2 = performance.now();
        if (i >= 2) {
          pause.push(t1 - t0);
          resume.push(t2 - t1);
        }
      }
      const exec = [];
      for (let i = 0; i < runs + 2; i++) {
        const t0 = performance.now();
        await (await engine.exec(sb.id, { argv: ["true"] }, {})).exit;
        if (i >= 2) exec.push(performance.now() - t0);
      }
      await engine.killSandbox(sb.id);
      const p = summary(pause);
      const r = summary(resume);
      const e = summary(exec);
      out[backend] = { tier: sb.tier, pause: p, resume: r, baselineExecTrue: e, pauseRatioP50: ratio(p.p50, e.p50), resumeRatioP50: ratio(r.p50, e.p50) };
      log(`pause (${backend})`, JSON.stringify(out[backend]));
    } finally {
      await engine.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  }
  return out;
}
