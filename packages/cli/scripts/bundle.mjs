#!/usr/bin/env node
// Bundles mvmctl (the CLI with the SDK, the engine, the protocol and their dependencies) into one
// CommonJS file, dist/mvmctl.cjs, and writes V8's code cache of it, dist/mvmctl.cjs.v8cache.
// bin/mvmctl.cjs runs the bundle with that cache: Node then neither resolves and reads some 300
// module files nor parses them at each start, which is most of what a short command costs.
// Usage: node packages/cli/scripts/bundle.mjs
//
// The modules find files beside themselves through import.meta.url (the agent bundle, the C
// sources of the host helpers, package.json); in the bundle each such use is given the URL the
// module has in dist/, computed from the bundle's own location, so the same files are found.
import { spawnSync } from "node:child_process";
import { existsSync, rmSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
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
