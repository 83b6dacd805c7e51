#!/usr/bin/env node
// Bundles mvmctl (the CLI with the SDK, the engine, the protocol and their dependencies) into one
// CommonJS file, dist/mvmctl.cjs, and writes V8's code cache of it, dist/mvmctl.cjs.v8cache.
// bin/mvmctl.cjs runs the bundle with that cache: Node then neither resolves and reads some 300
// module files nor parses them at each start, which is most of what a short command costs.
// Then it writes a V8 startup snapshot of the bundle after its evaluation, dist/mvmctl.blob (see
// writeStartupSnapshot below): started as an executable, bin/mvmctl.cjs hands that to Node, which
// then evaluates no module at all.
// Usage: node packages/cli/scripts/bundle.mjs
//
// The modules find files beside themselves through import.meta.url (the agent bundle, the C
// sources of the host helpers, package.json); in the bundle each such use is given the URL the
// module has in dist/, computed from the bundle's own location, so the same files are found.
import { spawnSync } from "node:child_process";
import { existsSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { builtinModules } from "node:module";
import { dirname, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
// mvmctl speaks English, like the agent.
import { zodEnglishOnly } from "../../agent/scripts/zod-english-only.mjs";

const pkgDir = fileURLToPath(new URL("..", import.meta.url));
const distDir = `${pkgDir}dist`;
const entry = `${distDir}/run-main.js`;
const outfile = `${distDir}/mvmctl.cjs`;
const cacheFile = `${outfile}.v8cache`;
if (!existsSync(entry)) {
  console.error(`bundle.mjs: ${entry} is missing; build first: npx tsc -b packages/cli`);
  process.exit(1);
}


// import.meta in the project's own modules: the module's dist URL, relative to the bundle.
const moduleUrls = {
  name: "module-urls",
  setup(b) {
    b.onLoad({ filter: /[\\/]packages[\\/][a-z]+[\\/]dist[\\/].*\.js$/ }, async (args) => {
      let contents = await readFile(args.path, "utf8");
      if (!contents.includes("import.meta") && !contents.includes("import(ENGINE_MODULE)")) return undefined;
      const rel = JSON.stringify(relative(distDir, args.path));
      contents = contents
        .replaceAll("import.meta.url", `__mvmModuleUrl(${rel})`)
        .replaceAll("import.meta.resolve(", `__mvmResolve(${rel}, `)
        // The SDK imports the engine through a variable (so it builds without the engine's
        // types); here it must be the bundled engine, never a second copy loaded from disk.
        .replaceAll("import(ENGINE_MODULE)", 'import("@mvm/engine")');
      if (contents.includes("import.meta")) throw new Error(`bundle.mjs: ${args.path} uses import.meta in a way the bundle does not map`);
      return { contents, loader: "js", resolveDir: dirname(args.path) };
    });
  },
};

const banner = `"use strict";
const __mvmUrl = require("node:url");
const __mvmPath = require("node:path");
function __mvmModuleUrl(rel) { return __mvmUrl.pathToFileURL(__mvmPath.join(__dirname, rel)).href; }
function __mvmResolve(rel, specifier) {
  return __mvmUrl.pathToFileURL(require("node:module").createRequire(__mvmPath.join(__dirname, rel)).resolve(specifier)).href;
}`;

await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  // TypeScript is only for `mvmctl plan` on a source file: loaded from node_modules when used.
  external: ["typescript"],
  // import() of what stays outside (typescript) as require(): a script compiled by node:vm has no
  // loader for import().
  supported: { "dynamic-import": false },
  minify: true,
  keepNames: true,
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
  banner: { js: banner },
  plugins: [zodEnglishOnly, moduleUrls],
});

// The code cache: written by running the bundle once (a --help), so that the functions a start
// compiles are in it. A cache V8 rejects later (another Node) only costs the compile it saves.
rmSync(cacheFile, { force: true });
const run = spawnSync(process.execPath, [`${pkgDir}bin/mvmctl.cjs`, "--help"], {
  env: { ...process.env, MVM_CLI_WRITE_CODE_CACHE: "1" },
  stdio: ["ignore", "ignore", "inherit"],
  timeout: 60_000,
});
if (run.status !== 0) {
  console.error(`bundle.mjs: running the bundle failed (${run.status ?? run.signal})`);
  process.exit(1);
}
console.error(`bundle.mjs: wrote ${outfile} (${statSync(outfile).size} bytes) and its code cache (${existsSync(cacheFile) ? statSync(cacheFile).size : 0} bytes)`);

await writeStartupSnapshot();

/**
 * The startup snapshot: Node's heap after evaluating the bundle, with runMain as the function a
 * start runs (node --build-snapshot, v8.startupSnapshot). The entry wraps the bundle like
 * bin/mvmctl.cjs does, with three things Node 20's snapshot builder needs: node:http, node:https and
 * node:http2 are loaded on first use (a loaded HTTP parser cannot be serialized), node:module's
 * builtinModules is filled in (the builder leaves it out), and Array.prototype.toSorted, absent
 * while building (present again after deserialization), is lent for the build only. Beside the
 * blob, dist/mvmctl.blob.node names the Node binary that built it and the dist directory whose
 * paths are in it, with that binary's mtime: the launcher uses the blob only when all three match
 * (Node refuses a blob from another build). A failure here leaves no blob, and mvmctl starts the
 * usual way.
 */
async function writeStartupSnapshot() {
  const blob = `${distDir}/mvmctl.blob`;
  const stamp = `${blob}.node`;
  const entryFile = `${distDir}/mvmctl.snapshot-entry.cjs`;
  rmSync(blob, { force: true });
  rmSync(stamp, { force: true });
  const source = await readFile(outfile, "utf8");
  const entry = `"use strict";
const __mvmFile = ${JSON.stringify(outfile)};
const __mvmDir = ${JSON.stringify(distDir)};
const __mvmModule = require("node:module");
if (!Array.isArray(__mvmModule.builtinModules)) __mvmModule.builtinModules = ${JSON.stringify(builtinModules)};
const __mvmDeferred = new Map([["http", undefined], ["https", undefined], ["http2", undefined]]);
function __mvmDefer(id) {
  let mod;
  const load = () => (mod ??= require(id));
  return new Proxy({}, {
    get: (_t, k) => Reflect.get(load(), k),
    has: (_t, k) => Reflect.has(load(), k),
    ownKeys: () => Reflect.ownKeys(load()),
    getOwnPropertyDescriptor: (_t, k) => {
      const d = Reflect.getOwnPropertyDescriptor(load(), k);
      return d === undefined ? undefined : { ...d, configurable: true };
    },
  });
}
function __mvmRequire(id) {
  const bare = id.startsWith("node:") ? id.slice(5) : id;
  if (__mvmDeferred.has(bare)) {
    if (__mvmDeferred.get(bare) === undefined) __mvmDeferred.set(bare, __mvmDefer(\`node:\${bare}\`));
    return __mvmDeferred.get(bare);
  }
  if (id.startsWith("node:") || __mvmModule.builtinModules.includes(id)) return require(id);
  return __mvmModule.createRequire(__mvmFile)(id);
}
const __mvmLent = typeof Array.prototype.toSorted === "function" ? undefined : "toSorted";
if (__mvmLent !== undefined) {
  Object.defineProperty(Array.prototype, __mvmLent, { configurable: true, writable: true, value: function (compare) { return Array.prototype.slice.call(this).sort(compare); } });
}
const __mvmMod = { exports: {} };
(function (exports, require, module, __filename, __dirname) {${source}\n})(__mvmMod.exports, __mvmRequire, __mvmMod, __mvmFile, __mvmDir);
if (__mvmLent !== undefined) delete Array.prototype[__mvmLent];
require("node:v8").startupSnapshot.setDeserializeMainFunction(() => {
  __mvmMod.exports.runMain(process.argv.slice(2));
});
`;
  writeFileSync(entryFile, entry);
  const built = spawnSync(process.execPath, ["--snapshot-blob", blob, "--build-snapshot", entryFile], {
    stdio: ["ignore", "ignore", "pipe"],
    encoding: "utf8",
    timeout: 120_000,
  });
  rmSync(entryFile, { force: true });
  if (built.status !== 0 || !existsSync(blob)) {
    rmSync(blob, { force: true });
    const why = (built.stderr ?? "").split("\n").filter((l) => l !== "" && !l.includes("Warning") && !l.startsWith("It may") && !l.startsWith("To request") && !l.startsWith("(Use")).slice(0, 5).join("\n");
    console.error(`bundle.mjs: no startup snapshot (mvmctl starts without it): ${built.status ?? built.signal}\n${why}`);
    return;
  }
  const node = realpathSync(process.execPath);
  writeFileSync(stamp, `${node}\n${realpathSync(distDir)}\n`);
  // The binary's mtime to the nanosecond (touch -r), which the launcher compares with test -nt/-ot.
  const touched = spawnSync("touch", ["-r", node, stamp], { stdio: "ignore" });
  if (touched.status !== 0) {
    rmSync(blob, { force: true });
    rmSync(stamp, { force: true });
    console.error("bundle.mjs: no startup snapshot (mvmctl starts without it): touch -r failed");
    return;
  }
  console.error(`bundle.mjs: wrote the startup snapshot ${blob} (${statSync(blob).size} bytes) for ${node}`);
}
