#!/usr/bin/env node
// Reproducibility check: builds the agent bundle twice, each from a fresh clone of HEAD at a
// different path with its own `npm ci`, and compares the sha256 of the two agent.cjs files.
// The bundle is what every sandbox runs, so the same commit must always give the same bytes.
// Usage: node scripts/check-reproducible.mjs
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function step(cwd, cmd, args) {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", timeout: 300_000 });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed in ${cwd}: ${(r.stderr || r.stdout || String(r.error)).slice(-2000)}`);
  }
}

function buildOnce(label) {
  const dir = mkdtempSync(join(tmpdir(), `mvm-repro-${label}-`));
  try {
    const tree = join(dir, `tree-${label}`);
    step(ROOT, "git", ["clone", "--quiet", "--no-hardlinks", ROOT, tree]);
    step(tree, "npm", ["ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"]);
    step(tree, process.execPath, [join(tree, "node_modules/typescript/bin/tsc"), "-b", "packages/agent"]);
    step(tree, process.execPath, ["packages/agent/scripts/bundle.mjs"]);
    const bytes = readFileSync(join(tree, "packages/agent/dist/agent.cjs"));
    return { sha256: createHash("sha256").update(bytes).digest("hex"), size: bytes.length };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const head = spawnSync("git", ["rev-parse", "HEAD"], { cwd: ROOT, encoding: "utf8" }).stdout.trim();
const a = buildOnce("a");
const b = buildOnce("b");
const same = a.sha256 === b.sha256 && a.size === b.size;
console.log(JSON.stringify({ commit: head, first: a, second: b, reproducible: same }));
if (!same) {
  console.error("check-reproducible: the agent bundle differs between two clean builds of the same commit");
  process.exit(1);
}
