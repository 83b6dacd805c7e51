#!/bin/sh
":" /*mvm-launcher
# Started as an executable, this file is a shell script first: it runs Node with mvmctl's startup
# snapshot (dist/mvmctl.blob, written by scripts/bundle.mjs) when the snapshot fits this Node and
# this directory, and otherwise runs itself with Node as below. Run as `node mvmctl.cjs`, all of
# this is a comment. MVM_CLI_NO_SNAPSHOT=1 turns the snapshot off.
f=$0
while [ -L "$f" ]; do
  l=$(readlink "$f")
  case $l in /*) f=$l ;; *) f=${f%/*}/$l ;; esac
done
case $f in *[/]*) ;; *) f=./$f ;; esac
d=${f%/*}/../dist
n=
o=$IFS
IFS=:
for p in $PATH; do
  if [ -f "${p:-.}/node" ] && [ -x "${p:-.}/node" ]; then n=${p:-.}/node; break; fi
done
IFS=$o
if [ -z "$MVM_CLI_NO_SNAPSHOT" ] && [ -n "$n" ] && [ -f "$d/mvmctl.blob" ] && [ -f "$d/mvmctl.blob.node" ] &&
  { read -r built && read -r dist; } < "$d/mvmctl.blob.node" &&
  [ "$n" -ef "$built" ] && [ "$d" -ef "$dist" ] && ! [ "$n" -nt "$d/mvmctl.blob.node" ] && ! [ "$n" -ot "$d/mvmctl.blob.node" ]; then
  exec "$n" --snapshot-blob "$d/mvmctl.blob" "$f" "$@"
fi
exec node "$f" "$@"
*/
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
