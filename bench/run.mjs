#!/usr/bin/env node
// mvm benchmarks. Writes one JSON document with every figure to bench/results/latest.json and,
// with --json, prints exactly that document on stdout (else a short summary); progress goes to
// stderr. Every figure sits beside a baseline measured in the same run. Section names are
// optional: none runs them all.
//
//   npm run bench                  # all
//   npm run bench -- --json        # all, the JSON document on stdout (the repository's .npmrc
//                                  # sends npm's own banner to stderr)
//   node bench/run.mjs oneshot     # a whole `mvmctl run` process against srt and bwrap (bench/oneshot.mjs)
//   node bench/run.mjs functions   # fn().remote cold and warm, map throughput (bench/functions.mjs); BENCH_FN_RUNS, BENCH_FN_MAP_CALLS
//   node bench/run.mjs python      # the Python SDK beside the TypeScript SDK on one daemon (bench/python.mjs); BENCH_PY_RUNS
//   node bench/run.mjs mcp         # MCP run_code round trip against the SDK's commands.run (bench/mcp.mjs)
//   node bench/run.mjs e2b         # the e2b SDK's commands.run through mvmctl serve --e2b against the SDK's (bench/e2b.mjs)
//   node bench/run.mjs create exec # some
//   node bench/run.mjs egress      # egress gateway (bench/egress.mjs); BENCH_EGRESS_MIB, BENCH_EGRESS_CONNECTS, BENCH_EGRESS_TUNNELS
//   node bench/run.mjs admission   # admission overhead added to a create (bench/admission.mjs)
//   node bench/run.mjs audit       # audit log append (durable) and verify rates (bench/audit.mjs); AUDIT_ENTRIES, AUDIT_CONCURRENCY
//   node bench/run.mjs terminals   # pty exec start and keystroke echo against pipes (bench/terminals.mjs); BENCH_TERM_RUNS
//   node bench/run.mjs pause       # pause/resume latency per backend (bench/pause.mjs); BENCH_PAUSE_RUNS, BENCH_PAUSE_BACKENDS
//   node bench/run.mjs oci         # OCI pull of a multi-layer image against skopeo copy to a dir, same run (bench/oci.mjs); BENCH_OCI_RUNS, BENCH_OCI_LAYERS, BENCH_OCI_LAYER_MIB
//   node bench/run.mjs store       # snapshot store write/verify against raw BLAKE3, dedup (bench/store.mjs)
//   node bench/run.mjs snapshot-ns # container-tier snapshot, restore and fork (bench/snapshot-ns.mjs)
//   node bench/run.mjs snapshot-vm # VM-tier restore, memory per restored VM, snapshot, fork (bench/snapshot-vm.mjs)
//   node bench/run.mjs bundle      # bundle push/pull (file://, OCI registry) against plain copies and one-blob uploads (bench/bundle.mjs)
//   node bench/run.mjs vm          # VM tier (bench/vm.mjs); BENCH_VM_COLD_RUNS, BENCH_VM_RESTORE_RUNS, BENCH_VM_IDLE
//   BENCH_RUNS=50 BENCH_SANDBOXES=200 node bench/run.mjs
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir, cpus, totalmem } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { openEngine } from "@mvm/engine";
import { benchVm } from "./vm.mjs";
import { benchEgress, benchEgressSandbox } from "./egress.mjs";
import { benchAdmission } from "./admission.mjs";
import { benchAudit } from "./audit.mjs";
import { benchPause } from "./pause.mjs";
import { benchTerminals } from "./terminals.mjs";
import { benchStore } from "./store.mjs";
import { benchOci } from "./oci.mjs";
import { benchSnapshotNs } from "./snapshot-ns.mjs";
import { benchSnapshotVm } from "./snapshot-vm.mjs";
import { benchOneshot } from "./oneshot.mjs";
import { benchFunctions } from "./functions.mjs";
import { benchPython } from "./python.mjs";
import { benchBundle } from "./bundle.mjs";
import { benchMcp } from "./mcp.mjs";
import { benchE2b } from "./e2b.mjs";

const RUNS = Number(process.env.BENCH_RUNS ?? 30);
const SANDBOXES = Number(process.env.BENCH_SANDBOXES ?? 200);
const IMAGE = process.env.BENCH_IMAGE ?? "debian:bookworm+python3";
const SECTIONS = ["create", "exec", "density", "srt", "oneshot", "functions", "python", "mcp", "e2b", "egress", "admission", "audit", "pause", "terminals", "store", "oci", "snapshot-ns", "snapshot-vm", "vm", "bundle"];
const args = process.argv.slice(2);
const jsonOut = args.includes("--json");
const only = new Set(args.filter((a) => a !== "--json"));
for (const a of only) {
  if (!SECTIONS.includes(a)) {
    console.error(`bench: unknown ${a.startsWith("-") ? "flag" : "section"} ${JSON.stringify(a)}; usage: run.mjs [--json] [${SECTIONS.join("|")} ...]`);
    process.exit(2);
  }
}
const want = (name) => only.size === 0 || only.has(name);
const log = (...a) => console.error("[bench]", ...a);

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
function summary(xs) {
  const r = (v) => Math.round(v * 100) / 100;
  return { n: xs.length, p50: r(pct(xs, 50)), p95: r(pct(xs, 95)), p99: r(pct(xs, 99)), min: r(Math.min(...xs)), max: r(Math.max(...xs)) };
}
const ratio = (a, b) => Math.round((a / b) * 1000) / 1000;

function spawnTimed(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first;
    const c = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
    c.stdout.once("data", () => (first ??= performance.now() - t0));
    c.on("error", reject);
    c.on("exit", (code) => (code === 0 ? resolve({ totalMs: performance.now() - t0, firstMs: first }) : reject(new Error(`${cmd} exited ${code}`))));
  });
}

async function memAvailableKiB() {
  const m = (await readFile("/proc/meminfo", "utf8")).match(/MemAvailable:\s+(\d+)/);
  return Number(m[1]);
}

async function execOnce(engine, id, argv) {
  let first;
  const t0 = performance.now();
  const started = await engine.exec(id, { argv }, { onStdout: () => (first ??= performance.now() - t0) });
  const exit = await started.exit;
  return { totalMs: performance.now() - t0, firstMs: first, exit };
}

async function main() {
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-bench-"));
  const imagesDir = process.env.MVM_TEST_IMAGES_DIR ?? "/var/lib/mvm/images";
  // The figures below "vm" share one engine; the vm figures open their own.
  const engineWanted = ["create", "exec", "density", "srt"].some(want);
  const engine = engineWanted ? await openEngine({ stateDir, imagesDir, defaultTtlSeconds: 3600, backends: ["namespace"] }) : undefined;
  const health = engine ? await engine.health() : undefined;
  const result = {
    when: new Date().toISOString(),
    host: { cpus: cpus().length, memGiB: Math.round(totalmem() / 2 ** 30), kernel: (await readFile("/proc/sys/kernel/osrelease", "utf8")).trim(), node: process.version },
    backend: health?.defaultBackend ?? null,
    runs: RUNS,
    figures: {},
  };
  try {
    if (engine) {
      const info = await engine.createSandbox({ acknowledgeContainerTier: true, image: IMAGE });
      const rootfs = (await engine.listImages()).find((i) => i.digest === info.image.digest);
      await engine.killSandbox(info.id);
      log("image", info.image.digest, rootfs?.refs);
    }

    if (want("create")) {
      // Baseline: bubblewrap with every namespace, starting node, same machine, same run.
      const node = process.execPath;
      // Interleaved, so that drift in the machine's load affects both series alike.
      const base = [];
      const ours = [];
      for (let i = 0; i < RUNS; i++) {
        const r = await spawnTimed("bwrap", ["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", node, "-e", "process.stdout.write('x')"]);
        base.push(r.firstMs ?? r.totalMs);
        const t0 = performance.now();
        const sb = await engine.createSandbox({ acknowledgeContainerTier: true, image: IMAGE });
        let first;
        const st = await engine.exec(sb.id, { argv: ["/bin/echo", "hi"] }, { onStdout: () => (first ??= performance.now() - t0) });
        await st.exit;
        ours.push(first);
        await engine.killSandbox(sb.id);
      }
      const b = summary(base);
      const o = summary(ours);
      result.figures.createToFirstOutput = { unit: "ms", mvm: o, baselineBwrapNode: b, ratioP50: ratio(o.p50, b.p50), ratioP95: ratio(o.p95, b.p95), target: "ratioP50 <= 1.5" };
      log("create", JSON.stringify(result.figures.createToFirstOutput));
    }

    if (want("exec")) {
      const { benchExec } = await import("./exec.mjs");
      Object.assign(result.figures, await benchExec({ log, summary, ratio, spawnTimed, execOnce, engine, imagesDir, image: IMAGE, runs: RUNS }));
    }

    if (want("density")) {
      const before = await memAvailableKiB();
      const ids = [];
      let failures = 0;
      const t0 = performance.now();
      for (let i = 0; i < SANDBOXES; i++) {
        try {
          ids.push((await engine.createSandbox({ acknowledgeContainerTier: true, image: IMAGE, resources: { memoryMiB: 256, pids: 64 } })).id);
        } catch (err) {
          failures++;
          log("create failed", err.message);
        }
        if (i % 25 === 24) log(`density: ${i + 1} sandboxes`);
      }
      const createSeconds = (performance.now() - t0) / 1000;
      const execResults = await Promise.allSettled(ids.map((id) => execOnce(engine, id, ["/bin/echo", "ok"])));
      const execFailures = execResults.filter((r) => r.status === "rejected" || r.value.exit.exitCode !== 0).length;
      await new Promise((r) => setTimeout(r, 2000));
      const after = await memAvailableKiB();
      const pssKiB = await sandboxPssKiB(ids);
      const perSandboxMiB = (before - after) / 1024 / Math.max(1, ids.length);
      const alive = (await engine.listSandboxes()).length;
      for (const id of ids) await engine.killSandbox(id);
      result.figures.density = {
        sandboxes: SANDBOXES,
        alive,
        createFailures: failures,
        execFailures,
        createSeconds: Math.round(createSeconds * 10) / 10,
        idleHostMemoryPerSandboxMiB: Math.round(perSandboxMiB * 10) / 10,
        method: "drop of MemAvailable from before the first create to after every sandbox was exec'd once and idled 2 s, divided by the count",
        pssPerSandboxMiB: Math.round((pssKiB / 1024 / Math.max(1, ids.length)) * 10) / 10,
        pssMethod: "sum of Pss (smaps_rollup) of every host process in the sandboxes' cgroups (bubblewrap, its init, the agent), divided by the count; shared pages split among sharers",
        target: "<= 48 MiB per sandbox, zero failures",
      };
      log("density", JSON.stringify(result.figures.density));
    }

    if (want("srt")) {
      const srt = await findSrt();
      if (!srt) {
        result.figures.srt = { skipped: "@anthropic-ai/sandbox-runtime is not installed (npm i -g @anthropic-ai/sandbox-runtime, or set SRT_BIN)" };
      } else {
        const theirs = [];
        for (let i = 0; i < RUNS; i++) theirs.push((await spawnTimed(srt, ["echo", "hi"])).totalMs);
        const t = summary(theirs);
        const ours = result.figures.createToFirstOutput?.mvm;
        result.figures.srt = { unit: "ms", srtEcho: t, mvmCreateToFirstOutput: ours ?? null, ratioP50: ours ? ratio(ours.p50, t.p50) : null };
      }
      log("srt", JSON.stringify(result.figures.srt));
    }

    if (want("oneshot")) {
      result.figures.oneshot = await benchOneshot({ log, summary, ratio, imagesDir, runs: RUNS, findSrt, pools: true });
    }

    if (want("functions")) {
      result.figures.functions = await benchFunctions({ log, summary, ratio, openEngine, imagesDir, image: IMAGE });
    }

    if (want("python")) {
      result.figures.python = await benchPython({ log, summary, ratio, imagesDir, image: IMAGE });
    }

    if (want("mcp")) {
      result.figures.mcp = await benchMcp({ log, summary, ratio, imagesDir, image: IMAGE, runs: RUNS });
    }

    if (want("e2b")) {
      result.figures.e2b = await benchE2b({ log, summary, ratio, imagesDir, image: IMAGE, runs: RUNS });
    }

    if (want("egress")) {
      result.figures.egress = await benchEgress({ log, summary, ratio });
      if (!result.figures.egress.skipped) {
        result.figures.egress.fromSandbox = await benchEgressSandbox({ log, summary, ratio, openEngine, imagesDir });
      }
    }

    if (want("admission")) {
      result.figures.admission = await benchAdmission({ log, summary, ratio, openEngine, imagesDir, image: IMAGE, runs: RUNS });
    }
    if (want("audit")) {
      result.figures.audit = await benchAudit();
      log("audit", JSON.stringify(result.figures.audit));
    }
    if (want("pause")) {
      result.figures.pause = await benchPause({ log, summary, ratio, openEngine, imagesDir, image: IMAGE });
    }
    if (want("terminals")) {
      result.figures.terminals = await benchTerminals({ log, summary, ratio, openEngine, imagesDir, image: IMAGE });
    }
    if (want("store")) {
      result.figures.store = await benchStore();
    }
    if (want("oci")) {
      result.figures.oci = await benchOci();
      log("oci", JSON.stringify(result.figures.oci));
    }
    if (want("snapshot-ns")) {
      result.figures.snapshotNs = await benchSnapshotNs({ log, summary, ratio, openEngine, imagesDir, image: IMAGE });
    }
    if (want("bundle")) {
      result.figures.bundle = await benchBundle({ log, summary, ratio, openEngine, imagesDir, image: IMAGE });
    }
    if (want("snapshot-vm")) {
      result.figures.snapshotVm = await benchSnapshotVm({ log, summary });
    }
    if (want("vm")) {
      result.figures.vm = await benchVm({ log, summary, ratio });
      if (result.figures.vm.skipped) log("vm skipped:", result.figures.vm.skipped);
    }
  } finally {
    await engine?.close();
    await rm(stateDir, { recursive: true, force: true });
  }
  const out = JSON.stringify(result, null, 2);
  console.log(jsonOut ? out : summaryText(result.figures));
  await mkdir(new URL("./results/", import.meta.url), { recursive: true });
  await writeFile(new URL("./results/latest.json", import.meta.url), out + "\n");
}

/** One line per figure: its p50s and ratios, for a reader (the JSON has everything). */
function summaryText(figures) {
  const lines = [];
  const walk = (path, v) => {
    if (v === null || typeof v !== "object") return;
    if (typeof v.p50 === "number") {
      lines.push(`${path}: p50 ${v.p50}, p95 ${v.p95}${v.n ? ` (n=${v.n})` : ""}`);
      return;
    }
    for (const [k, x] of Object.entries(v)) {
      if (typeof x === "number" && /^ratio|^to[A-Z]/.test(k)) lines.push(`${path}.${k}: ${x}`);
      else walk(`${path}.${k}`, x);
    }
  };
  for (const [k, v] of Object.entries(figures)) walk(k, v);
  return `${lines.join("\n")}\n(every figure: bench/results/latest.json; --json prints it here)`;
}

async function sandboxPssKiB(ids) {
  const { readdir } = await import("node:fs/promises");
  const wanted = new Set(ids);
  let total = 0;
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cg = await readFile(`/proc/${pid}/cgroup`, "utf8");
      const m = cg.match(/sbx_[a-z2-7]{20}/);
      if (!m || !wanted.has(m[0])) continue;
      const roll = await readFile(`/proc/${pid}/smaps_rollup`, "utf8");
      total += Number(roll.match(/^Pss:\s+(\d+)/m)?.[1] ?? 0);
    } catch {
      // exited meanwhile
    }
  }
  return total;
}

async function findSrt() {
  if (process.env.SRT_BIN && existsSync(process.env.SRT_BIN)) return process.env.SRT_BIN;
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, "srt"))) return join(dir, "srt");
  }
  const local = new URL("../node_modules/.bin/srt", import.meta.url).pathname;
  return existsSync(local) ? local : undefined;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
