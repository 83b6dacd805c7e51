#!/usr/bin/env node
// Debian image build: the builder boundary against the build it replaced, same run, same mirror.
// Prints one JSON document on stdout (progress on stderr). Needs root, the build user and the
// .deb files setup.sh keeps (served from a test host, as the build tests do: no traffic leaves).
//   node bench/build.mjs
//   BENCH_BUILD_RUNS=2 BENCH_BUILD_REF=debian:bookworm+python3 node bench/build.mjs
//
// Each run, interleaved:
//   before: mmdebstrap --mode=root as host root in private mount and pid namespaces, host
//           network straight to the mirror (the argv the engine used before), then the store's
//           importTar of its tar (the same extraction and hashing a build does)
//   after:  ImageStore.buildDebian: mmdebstrap --mode=unshare as the build user in the builder
//           boundary, egress through the gateway, then import and the signed provenance record
// ratio = after / before, wall time.
import { spawn } from "node:child_process";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { startLocalMirror } from "../packages/engine/dist/images/_debian-mirror.js";
import { DEBIAN_SOURCE_DATE_EPOCH } from "../packages/engine/dist/images/debian.js";
import { parseImageRef } from "../packages/engine/dist/images/ref.js";
import { ImageStore } from "../packages/engine/dist/images/store.js";

const RUNS = Number(process.env.BENCH_BUILD_RUNS ?? 1);
const REF = process.env.BENCH_BUILD_REF ?? "debian:bookworm+python3";
const log = (...a) => console.error("[bench:build]", ...a);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const round = (v, d = 1) => Math.round(v * 10 ** d) / 10 ** d;

function run(argv, env, cwd) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { env, cwd, stdio: ["ignore", "ignore", "pipe"] });
    let tail = "";
    child.stderr.on("data", (c) => (tail = (tail + c).slice(-4000)));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve() : reject(new Error(`${argv[0]} exited ${code}: ${tail}`))));
  });
}

async function before(mirrorLine, parsed, dir) {
  const store = await ImageStore.open(join(dir, "images"), { stateDir: dir });
  const tar = join(dir, "rootfs.tar");
  const argv = [
    "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
    "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", '--aptopt=Acquire::Retries "3"',
    '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname" && : > "$1/etc/resolv.conf" && echo sandbox > "$1/etc/hostname"',
    ...(parsed.packages.length ? [`--include=${parsed.packages.join(",")}`] : []),
    parsed.suite, tar, mirrorLine,
  ];
  const t0 = performance.now();
  await run(argv, { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C.UTF-8", HOME: "/root", TMPDIR: dir, SOURCE_DATE_EPOCH: String(DEBIAN_SOURCE_DATE_EPOCH) }, dir);
  const rec = await store.importTar(tar, "bench/before");
  return { ms: performance.now() - t0, digest: rec.digest };
}

async function after(mirror, dir) {
  const store = await ImageStore.open(join(dir, "images"), { stateDir: dir, debianMirrors: [mirror.line], buildTestAllowance: mirror.network.testAllowance });
  const t0 = performance.now();
  const rec = await store.buildDebian(REF, { force: true });
  return { ms: performance.now() - t0, digest: rec.digest };
}

const mirror = await startLocalMirror();
const parsed = parseImageRef(REF);
const samples = { before: [], after: [] };
const digests = { before: new Set(), after: new Set() };
try {
  for (let i = 0; i < RUNS; i++) {
    for (const kind of i % 2 === 0 ? ["before", "after"] : ["after", "before"]) {
      const dir = await mkdtemp("/var/tmp/mvm-bench-build-");
      await chmod(dir, 0o711);
      try {
        const r = kind === "before" ? await before(mirror.line, parsed, dir) : await after(mirror, dir);
        samples[kind].push(r.ms);
        digests[kind].add(r.digest);
        log(`run ${i + 1} ${kind}: ${round(r.ms / 1000, 2)} s ${r.digest}`);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
  }
} finally {
  await mirror.close();
}
const b = median(samples.before);
const a = median(samples.after);
console.log(JSON.stringify({
  bench: "build",
  ref: REF,
  runs: RUNS,
  beforeMs: { median: round(b), samples: samples.before.map((x) => round(x)) },
  afterMs: { median: round(a), samples: samples.after.map((x) => round(x)) },
  ratioAfterToBefore: round(a / b, 3),
  digests: { before: [...digests.before], after: [...digests.after] },
}, null, 2));
