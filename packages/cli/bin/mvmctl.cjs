#!/usr/bin/env node
// mvmctl. Runs dist/mvmctl.cjs, the CLI bundled into one file (scripts/bundle.mjs), compiled with
// V8's code cache dist/mvmctl.cjs.v8cache when V8 accepts it; without a bundle, the compiled
// modules (dist/main.js).
"use strict";
const { readFileSync, renameSync, writeFileSync } = require("node:fs");
const { createRequire } = require("node:module");
const { join } = require("node:path");
const vm = require("node:vm");

const bundle = join(__dirname, "..", "dist", "mvmctl.cjs");
const cacheFile = `${bundle}.v8cache`;
let source;
try {
  source = readFileSync(bundle, "utf8");
} catch {
  import("../dist/main.js");
  return;
}
let cachedData;
try {
  cachedData = readFileSync(cacheFile);
} catch {
  cachedData = undefined;
}
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
  filename: bundle,
  ...(cachedData !== undefined ? { cachedData } : {}),
});
const mod = { exports: {} };
script.runInThisContext()(mod.exports, createRequire(bundle), mod, bundle, join(__dirname, "..", "dist"));
const done = mod.exports.runMain(process.argv.slice(2));
// The build writes the cache after one run, when the functions a start needs are compiled.
if (process.env.MVM_CLI_WRITE_CODE_CACHE === "1") {
  done.then(() => {
    writeFileSync(`${cacheFile}.tmp`, script.createCachedData());
    renameSync(`${cacheFile}.tmp`, cacheFile);
  });
}
