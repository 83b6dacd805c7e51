// Before/after in one process: the engine (and the SDK through a daemon) of two built checkouts,
// e.g. `git archive <commit> | tar -x -C /tmp/base && (cd /tmp/base && npm ci && npm run build)`,
// interleaved with host spawn("/bin/true"), the order of base and new alternating every round.
// Prints one JSON line: p50/p99 per side and against host spawn, execs/s in alternating 500 ms
// blocks, and commands.run through a daemon of the same tree. N rounds (default 300).
//   node bench/exec-ab.mjs /tmp/base .
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { performance } from "node:perf_hooks";
const [baseRoot, newRoot] = process.argv.slice(2);
if (!baseRoot || !newRoot) {
  console.error("usage: node bench/exec-ab.mjs BASE_TREE NEW_TREE   (each a built checkout: npm ci && npm run build)");
  process.exit(2);
}
const TREES = { base: resolve(baseRoot), new: resolve(newRoot) };
const moduleUrl = (root, pkg) => pathToFileURL(join(root, "packages", pkg, "dist", "index.js")).href;
const N = Number(process.env.N ?? 300);
const IMAGES = process.env.MVM_TEST_IMAGES_DIR ?? "/var/lib/mvm/images";
const IMAGE = process.env.BENCH_IMAGE ?? "debian:bookworm+python3";
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return +s[Math.min(s.length - 1, Math.ceil(p / 100 * s.length) - 1)].toFixed(2); };
const sum = (xs) => ({ p50: pct(xs, 50), p99: pct(xs, 99) });
const hostTrue = () => new Promise((res) => { const t = performance.now(); const c = spawn("/bin/true", [], { stdio: ["ignore", "pipe", "pipe"] }); c.on("exit", () => res(performance.now() - t)); });
const sides = {};
for (const [name, root] of Object.entries(TREES)) {
  const m = await import(moduleUrl(root, "engine"));
  const dir = await mkdtemp(join(tmpdir(), `mvm-exec-ab-${name}-`));
  const engine = await m.openEngine({ stateDir: dir, imagesDir: IMAGES, backends: ["namespace"], defaultTtlSeconds: 3600 });
  const sb = await engine.createSandbox({ acknowledgeContainerTier: true, image: IMAGE });
  const ddir = await mkdtemp(join(tmpdir(), `mvm-exec-abd-${name}-`));
  const sock = join(ddir, "run", "d.sock");
  const script = `const m = await import(${JSON.stringify(moduleUrl(root, "engine"))});
const engine = await m.openEngine({ stateDir: process.env.STATE, imagesDir: process.env.IMAGES, backends: ["namespace"], defaultTtlSeconds: 3600 });
const server = await m.startDaemonServer({ engine, socketPath: process.env.SOCK });
process.once("SIGTERM", async () => { await server.close(); await engine.close(); process.exit(0); });
process.stdout.write("ready\\n");`;
  const daemon = spawn(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, STATE: ddir, SOCK: sock, IMAGES }, stdio: ["ignore", "pipe", "inherit"] });
  await new Promise((r) => daemon.stdout.once("data", r));
  const { Sandbox } = await import(moduleUrl(root, "sdk"));
  const remote = await Sandbox.create({ image: IMAGE, acknowledgeContainerTier: true, mode: "daemon", socketPath: sock });
  const exec = async () => { const t = performance.now(); const s = await engine.exec(sb.id, { argv: ["/bin/true"] }, {}); const e = await s.exit; if (e.exitCode !== 0) throw new Error("exit"); return performance.now() - t; };
  const sdk = async () => { const t = performance.now(); await remote.commands.run(["/bin/true"]); return performance.now() - t; };
  sides[name] = { engine, sb, dir, ddir, daemon, remote, exec, sdk, api: [], viaSdk: [], rate: { n: 0, s: 0 } };
}
for (let i = 0; i < 20; i++) for (const s of Object.values(sides)) { await s.exec(); await s.sdk(); }
const host = [];
for (let i = 0; i < N; i++) {
  host.push(await hostTrue());
  const order = i % 2 === 0 ? ["base", "new"] : ["new", "base"];
  for (const k of order) sides[k].api.push(await sides[k].exec());
  for (const k of order) sides[k].viaSdk.push(await sides[k].sdk());
}
const hostRate = { n: 0, s: 0 };
const block = async (fn, acc) => { const t0 = performance.now(); let n = 0; while (performance.now() - t0 < 500) { await fn(); n++; } acc.n += n; acc.s += (performance.now() - t0) / 1000; };
for (let b = 0; b < 8; b++) {
  const order = b % 2 === 0 ? ["host", "base", "new"] : ["new", "base", "host"];
  for (const k of order) await block(k === "host" ? hostTrue : sides[k].exec, k === "host" ? hostRate : sides[k].rate);
}
const h = sum(host);
const out = { host: h, hostSpawnsPerSecond: +(hostRate.n / hostRate.s).toFixed(1) };
for (const [k, s] of Object.entries(sides)) {
  const a = sum(s.api), d = sum(s.viaSdk), r = s.rate.n / s.rate.s;
  out[k] = { engineApi: a, ratioP50: +(a.p50 / h.p50).toFixed(3), ratioP99: +(a.p99 / h.p99).toFixed(3), execsPerSecond: +r.toFixed(1), seqRatio: +(r / out.hostSpawnsPerSecond).toFixed(3), sdkDaemon: d, sdkRatioP50: +(d.p50 / h.p50).toFixed(3) };
}
console.log(JSON.stringify(out));
for (const s of Object.values(sides)) {
  await s.remote.kill(); await s.engine.killSandbox(s.sb.id); await s.engine.close();
  const ex = new Promise((r) => s.daemon.once("exit", r)); s.daemon.kill("SIGTERM"); await ex;
  await rm(s.dir, { recursive: true, force: true }); await rm(s.ddir, { recursive: true, force: true });
}
