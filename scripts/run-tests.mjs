#!/usr/bin/env node
// Runs every compiled test file (packages/*/dist/**/*.test.js), and scripts/*.test.mjs, with Node's test runner.
// Usage: node scripts/run-tests.mjs [substring-filter ...]
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

const root = new URL("..", import.meta.url).pathname;
const filters = process.argv.slice(2);
const files = [];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith(".test.js") && (filters.length === 0 || filters.some((f) => p.includes(f)))) files.push(p);
  }
}
for (const pkg of readdirSync(join(root, "packages"))) {
  const dist = join(root, "packages", pkg, "dist");
  try {
    if (statSync(dist).isDirectory()) walk(dist);
  } catch {}
}
// The Python SDK's pytest suite runs with no filter, or a filter matching "python".
const runPython = filters.length === 0 || filters.some((f) => "python".includes(f) || f.includes("python"));
// The repository's own scripts (dependency audit, …) have tests beside them too.
for (const name of readdirSync(join(root, "scripts"))) {
  const p = join(root, "scripts", name);
  if (name.endsWith(".test.mjs") && (filters.length === 0 || filters.some((f) => p.includes(f)))) files.push(p);
}
if (files.length === 0 && !runPython) {
  console.error("no test files found; run npm run build first");
  process.exit(1);
}
files.sort();
// TAP while tests run, then (second reporter) a summary of the failed cases, so the end of a
// long log says which case failed.
const reporters = ["--test-reporter=tap", "--test-reporter-destination=stdout"];
reporters.push(`--test-reporter=${join(root, "scripts", "test-failures-reporter.mjs")}`, "--test-reporter-destination=stdout");
let status = 0;
if (files.length > 0) {
  const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", ...reporters, ...files], { stdio: "inherit" });
  status = r.status ?? 1;
}
if (runPython) {
  // Debian's python3 has python3-pytest (scripts/setup.sh); MVM_PYTHON names another interpreter.
  const python = process.env.MVM_PYTHON ?? (existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3");
  // A private base for pytest's temporary directories, removed afterwards (pytest keeps its own).
  const basetemp = mkdtempSync(join(tmpdir(), "mvm-pytest-"));
  const r = spawnSync(python, ["-m", "pytest", "-q", "-p", "no:cacheprovider", `--basetemp=${basetemp}`, join(root, "python", "tests")], {
    stdio: "inherit",
    cwd: join(root, "python"),
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1" },
  });
  rmSync(basetemp, { recursive: true, force: true });
  if (r.status !== 0) {
    console.log(`# python: pytest failed (exit ${r.status ?? r.signal ?? r.error}); see its summary above`);
    status ||= 1;
  }
}
process.exit(status);
