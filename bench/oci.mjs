#!/usr/bin/env node
// OCI image pull benchmark. Prints one JSON document on stdout (progress on stderr).
//   node bench/oci.mjs
//   BENCH_OCI_RUNS=5 BENCH_OCI_LAYERS=4 BENCH_OCI_LAYER_MIB=16 node bench/oci.mjs
//
// A multi-layer image built with umoci: a static busybox layer, then BENCH_OCI_LAYERS layers of
// BENCH_OCI_LAYER_MIB MiB each (half one random file, half 256 small random files), pushed with
// skopeo to Debian's docker-registry on loopback. Each run, interleaved, same process:
//   pull:          ImageStore.pull into a fresh store (manifest, config and blobs fetched and
//                  verified by digest, each layer checked against its diff_id, then applied
//                  path-safely, the tree hashed and committed)
//   skopeoDir:     `skopeo copy docker://… dir:…` of the same image (fetch and verify blobs only)
//   skopeoUnpack:  `skopeo copy docker://… oci:…` then `umoci raw unpack --rootless` (fetch,
//                  verify and unpack: the same work as a pull, by the reference tools)
// ratio = pull / baseline (p50 of each); below 1 is faster than the baseline.
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { ImageStore } from "../packages/engine/dist/images/store.js";
import { startRegistry } from "../packages/engine/dist/oci/_test/registry.js";

const RUNS = Number(process.env.BENCH_OCI_RUNS ?? 5);
const LAYERS = Number(process.env.BENCH_OCI_LAYERS ?? 4);
const LAYER_MIB = Number(process.env.BENCH_OCI_LAYER_MIB ?? 16);
const log = (...a) => console.error("[bench:oci]", ...a);

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
const r2 = (v) => Math.round(v * 100) / 100;
const summary = (xs) => ({ n: xs.length, p50: r2(pct(xs, 50)), p95: r2(pct(xs, 95)), min: r2(Math.min(...xs)), max: r2(Math.max(...xs)) });

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    c.stderr.on("data", (d) => (err += d).slice(-2000));
    c.on("error", reject);
    c.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err}`))));
  });
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Builds the image with umoci in `dir`/layout:bench. */
async function buildImage(dir) {
  const layout = join(dir, "layout");
  const bundle = join(dir, "bundle");
  const umoci = (...args) => execFileSync("umoci", args, { stdio: "pipe" });
  umoci("init", "--layout", layout);
  umoci("new", "--image", `${layout}:bench`);
  umoci("unpack", "--rootless", "--image", `${layout}:bench`, bundle);
  await mkdir(join(bundle, "rootfs", "bin"), { recursive: true });
  await cp("/bin/busybox", join(bundle, "rootfs", "bin", "busybox"));
  umoci("repack", "--image", `${layout}:bench`, bundle);
  const half = (LAYER_MIB * 1024 * 1024) / 2;
  for (let i = 0; i < LAYERS; i++) {
    const d = join(bundle, "rootfs", `layer${i}`);
    await mkdir(d, { recursive: true });
    await writeFile(join(d, "big"), randomBytes(half));
    for (let f = 0; f < 256; f++) await writeFile(join(d, `small-${f}`), randomBytes(Math.floor(half / 256)));
    umoci("repack", "--image", `${layout}:bench`, bundle);
  }
  await rm(bundle, { recursive: true, force: true });
  return layout;
}

export async function benchOci() {
  for (const tool of ["/usr/bin/umoci", "/usr/bin/skopeo", "/usr/bin/docker-registry", "/bin/busybox"]) {
    if (!existsSync(tool)) return { skipped: `${tool} is not installed` };
  }
  const dir = await mkdtemp(join(tmpdir(), "mvm-oci-bench-"));
  await chmod(dir, 0o755);
  const reg = await startRegistry();
  try {
    const layout = await buildImage(dir);
    const host = reg.origin.replace(/^http:\/\//, "");
    const ref = `${host}/bench/img:1`;
    await run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:bench`, `docker://${ref}`]);
    log(`image: ${LAYERS + 1} layers, ${LAYERS} x ${LAYER_MIB} MiB of random data; ${RUNS} runs`);
    const series = { pull: [], skopeoDir: [], skopeoUnpack: [] };
    let record;
    for (let i = -1; i < RUNS; i++) {
      const runDir = join(dir, `run${i}`);
      await mkdir(runDir);
      const pullMs = await timed(async () => {
        const store = await ImageStore.open(join(runDir, "store"));
        record = await store.pull(ref);
      });
      const dirMs = await timed(() => run("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `dir:${join(runDir, "skopeo-dir")}`]));
      const unpackMs = await timed(async () => {
        await run("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `oci:${join(runDir, "skopeo-oci")}:bench`]);
        await run("umoci", ["raw", "unpack", "--rootless", "--image", `${join(runDir, "skopeo-oci")}:bench`, join(runDir, "unpacked")]);
      });
      await rm(runDir, { recursive: true, force: true });
      if (i < 0) continue; // warm-up
      series.pull.push(pullMs);
      series.skopeoDir.push(dirMs);
      series.skopeoUnpack.push(unpackMs);
      log(`run ${i + 1}: pull ${pullMs.toFixed(0)} ms, skopeo dir ${dirMs.toFixed(0)} ms, skopeo+umoci unpack ${unpackMs.toFixed(0)} ms`);
    }
    const pull = summary(series.pull);
    const skopeoDir = summary(series.skopeoDir);
    const skopeoUnpack = summary(series.skopeoUnpack);
    return {
      layers: LAYERS + 1,
      layerMiB: LAYER_MIB,
      imageBytes: record?.sizeBytes,
      pullMs: pull,
      skopeoDirMs: skopeoDir,
      skopeoUnpackMs: skopeoUnpack,
      ratioPullToSkopeoDir: Math.round((pull.p50 / skopeoDir.p50) * 1000) / 1000,
      ratioPullToSkopeoUnpack: Math.round((pull.p50 / skopeoUnpack.p50) * 1000) / 1000,
      pullMiBPerSecond: r2((record?.sizeBytes ?? 0) / 1024 / 1024 / (pull.p50 / 1000)),
    };
  } finally {
    await reg.close();
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const result = await benchOci();
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}
