// The packages as a user gets them: `npm pack` of each, installed from the tarballs alone into an
// empty project with `npm install --offline`, then the README's first example run with plain
// `node` against a real engine (namespace backend) behind a daemon this test starts. Nothing is
// fetched: the registry packages the tarballs depend on (zod, …) are copied first from this
// repository's node_modules, which `npm ci` filled from the lockfile, so npm finds them installed.
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseJsonStrict } from "../packages/protocol/dist/index.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PACKAGES = ["protocol", "agent", "engine", "sdk", "cli"];
const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const manifests = Object.fromEntries(PACKAGES.map((p) => [p, parseJsonStrict(readFileSync(join(ROOT, "packages", p, "package.json"), "utf8"))]));
const imagePresent = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);

/** The environment of an npm child: none of the npm settings `npm test` exports (workspace, prefix…). */
function npmEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.toLowerCase().startsWith("npm_")) delete env[k];
  return env;
}

function run(cmd, args, options) {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 180_000, ...options });
  if (r.status !== 0) assert.fail(`${cmd} ${args.join(" ")} failed (${r.status ?? r.signal ?? r.error}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Copies the registry packages `names` need, with theirs, from the repository's node_modules into `dir`'s. */
function copyRegistryDeps(dir, names) {
  const seen = new Set();
  const queue = [...names];
  while (queue.length > 0) {
    const name = queue.pop();
    if (seen.has(name) || name.startsWith("@mvm/")) continue;
    const from = join(ROOT, "node_modules", name);
    if (!existsSync(from)) continue; // an optional dependency of another platform
    seen.add(name);
    cpSync(from, join(dir, "node_modules", name), { recursive: true });
    const manifest = parseJsonStrict(readFileSync(join(from, "package.json"), "utf8"));
    queue.push(...Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies, ...manifest.peerDependencies }));
  }
}

/** `npm install --offline` of tarballs into a new empty project; returns its directory. */
function installProject(work, name, tarballs, manifests) {
  const dir = join(work, name);
  mkdirSync(dir);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: `mvm-pack-${name}`, private: true, type: "module" }));
  copyRegistryDeps(dir, manifests.flatMap((m) => Object.keys(m.dependencies ?? {})));
  run("npm", ["install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", ...tarballs], { cwd: dir, env: npmEnv() });
  return dir;
}

/** The README's first js block: the example a new user copies. */
function readmeExample() {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const m = /^```js\n([\s\S]*?)^```$/m.exec(readme);
  assert.ok(m, "README.md has a ```js block");
  return m[1];
}

describe("npm pack: tarballs install into an empty project and run", () => {
  let work;
  /** @type {Record<string, string>} package → tarball path */
  const tarballs = {};
  /** @type {Record<string, string[]>} package → files in its tarball */
  const contents = {};

  before(() => {
    work = mkdtempSync(join(tmpdir(), "mvm-pack-"));
    // The sandbox's uid passes through the daemon's state directory, which lives in here.
    chmodSync(work, 0o711);
    const out = run("npm", ["pack", "--json", "--pack-destination", work, ...PACKAGES.flatMap((p) => ["-w", `packages/${p}`])], { cwd: ROOT, env: npmEnv() });
    for (const entry of parseJsonStrict(out)) {
      const pkg = entry.name.replace("@mvm/", "");
      tarballs[pkg] = join(work, entry.filename);
      contents[pkg] = entry.files.map((f) => f.path);
    }
  });
  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("each tarball has its entry points and no tests, test helpers or build info", () => {
    for (const pkg of PACKAGES) {
      const files = contents[pkg];
      assert.ok(files, `a tarball for ${pkg}`);
      const manifest = manifests[pkg];
      assert.equal(manifest.license, "Apache-2.0");
      for (const [sub, target] of Object.entries(manifest.exports)) {
        for (const file of typeof target === "string" ? [target] : Object.values(target)) {
          assert.ok(files.includes(file.replace(/^\.\//, "")), `${pkg} exports ${sub} as ${file}, which the tarball has`);
        }
      }
      for (const bin of Object.values(manifest.bin ?? {})) assert.ok(files.includes(bin.replace(/^\.\//, "")), `${pkg}'s bin ${bin}`);
      const stray = files.filter((f) => /\.test\.|(^|\/)_test\/(?!registry\.)|_testing\.|tsbuildinfo|\.d\.ts\.map$/.test(f) && !f.startsWith("dist/oci/_test/registry.") && !f.startsWith("dist/conformance/_writer-stall."));
      assert.deepEqual(stray, [], `${pkg}'s tarball has only what it needs`);
    }
  });

  it("the SDK installs offline without the compiler, the bundler or the engine, and runs the README example against a daemon", { skip: imagePresent ? false : `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh` }, async () => {
    const app = installProject(work, "app", [tarballs.protocol, tarballs.sdk], [manifests.protocol, manifests.sdk]);
    const installed = readdirSync(join(app, "node_modules")).sort();
    for (const absent of ["typescript", "esbuild"]) assert.ok(!installed.includes(absent), `${absent} is not installed with the SDK`);
    assert.deepEqual(readdirSync(join(app, "node_modules", "@mvm")).sort(), ["protocol", "sdk"]);

    // A feature that needs an optional package names it.
    const missing = run(process.execPath, ["--input-type=module", "-e", 'import { analyzeSourceText, MissingPackageError } from "@mvm/sdk"; try { await analyzeSourceText("", "a.ts"); } catch (e) { console.log(e instanceof MissingPackageError, e.packageName, e.code); }'], { cwd: app });
    assert.equal(missing.trim(), "true typescript UNSUPPORTED_CAPABILITY");

    const { openEngine, startDaemonServer } = await import("../packages/engine/dist/index.js");
    const stateDir = join(work, "state");
    const engine = await openEngine({ stateDir, imagesDir: IMAGES, defaultBackend: "namespace", backends: ["namespace"] });
    const socketPath = join(stateDir, "run", "d.sock");
    const server = await startDaemonServer({ engine, socketPath });
    try {
      writeFileSync(join(app, "example.mjs"), readmeExample());
      // Asynchronously: the daemon answering it runs in this process.
      const r = await new Promise((resolve) => {
        execFile(
          process.execPath,
          ["example.mjs"],
          { cwd: app, timeout: 120_000, env: { ...process.env, MVM_DAEMON_SOCKET: socketPath, MVM_ACK_CONTAINER_TIER: "1" } },
          (error, stdout, stderr) => resolve({ error, stdout, stderr }),
        );
      });
      assert.equal(r.error, null, r.stderr);
      assert.equal(r.stdout, "0 4\n\nhi\n");
      // The example's finally killed its sandbox.
      const left = (await engine.listSandboxes()).filter((s) => s.state === "running");
      assert.deepEqual(left, []);
    } finally {
      await server.close();
      await engine.close();
    }
  });

  it("the CLI installs offline from the five tarballs and its bin runs", () => {
    const cli = installProject(work, "cli", PACKAGES.map((p) => tarballs[p]), PACKAGES.map((p) => manifests[p]));
    const help = run(join(cli, "node_modules", ".bin", "mvmctl"), ["--help"], { cwd: cli });
    assert.match(help, /mvmctl/);
    const version = run(join(cli, "node_modules", ".bin", "mvmctl"), ["--version"], { cwd: cli });
    assert.match(version, /0\.1\.0/);
  });
});
