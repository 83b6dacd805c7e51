#!/usr/bin/env node
// Dependency audit: the lockfile's own rules (always), then npm's advisory database.
//
// Lockfile rules: every installed package is pinned by a sha512 integrity, comes from the npm
// registry (no git, file, tarball-URL or other-registry sources), and runs no install script
// unless scripts/audit-allowlist.json lists it with a reason.
// Advisories: `npm audit --json`; any high or critical advisory fails unless the allowlist names
// its advisory URL with a reason and an expiry date that has not passed.
//
// Usage: node scripts/audit-deps.mjs [--advisories required|if-reachable]
//   required (default): an advisory database that cannot be reached is a failure.
//   if-reachable: it is reported and the lockfile rules still decide (for machines whose
//   registry mirror does not serve the advisory endpoint).
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const REGISTRY = "https://registry.npmjs.org/";
const FAILING = new Set(["high", "critical"]);

/**
 * Checks the lockfile's pinning rules.
 * @param {any} lock parsed package-lock.json (lockfileVersion 3)
 * @param {{ installScripts: Record<string, string> }} allow
 * @returns {string[]} one line per violation
 */
export function lockfileViolations(lock, allow) {
  const out = [];
  if (lock?.lockfileVersion !== 3) out.push(`lockfileVersion is ${JSON.stringify(lock?.lockfileVersion)}, expected 3`);
  for (const [path, entry] of Object.entries(lock?.packages ?? {})) {
    if (path === "" || !path.includes("node_modules/")) continue; // the root and the workspaces
    if (entry.link === true) {
      if (!String(entry.resolved ?? "").startsWith("packages/")) out.push(`${path}: links outside the workspaces (${entry.resolved})`);
      continue;
    }
    const name = path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
    if (typeof entry.integrity !== "string" || !entry.integrity.startsWith("sha512-")) out.push(`${path}: no sha512 integrity`);
    if (entry.resolved !== undefined && !String(entry.resolved).startsWith(REGISTRY)) out.push(`${path}: resolved from ${entry.resolved}`);
    if (typeof entry.version !== "string" || !/^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$/.test(entry.version)) out.push(`${path}: version ${JSON.stringify(entry.version)} is not a registry version`);
    if (entry.hasInstallScript === true && !(name in allow.installScripts)) out.push(`${path}: runs an install script and is not in the allowlist`);
  }
  return out;
}

/**
 * Reads `npm audit --json` output.
 * @param {string} text
 * @param {{ advisories: Array<{ url: string; reason: string; expires: string }> }} allow
 * @param {Date} now
 * @returns {{ reachable: true; failing: string[]; accepted: string[] } | { reachable: false; why: string }}
 */
export function advisoryFindings(text, allow, now) {
  let report;
  try {
    report = JSON.parse(text);
  } catch {
    return { reachable: false, why: "npm audit printed no JSON" };
  }
  if (report === null || typeof report !== "object" || report.vulnerabilities === undefined) {
    return { reachable: false, why: String(report?.message ?? report?.error?.summary ?? "npm audit returned no report").slice(0, 300) };
  }
  const accepted = new Map(allow.advisories.filter((a) => new Date(a.expires) > now).map((a) => [a.url, a]));
  const failing = [];
  const acceptedHits = [];
  for (const vuln of Object.values(report.vulnerabilities)) {
    for (const via of vuln.via ?? []) {
      if (typeof via !== "object" || !FAILING.has(via.severity)) continue;
      const line = `${via.severity} ${via.name ?? vuln.name} ${via.range ?? ""}: ${via.title ?? ""} (${via.url})`;
      if (accepted.has(via.url)) acceptedHits.push(`${line}; accepted: ${accepted.get(via.url).reason}`);
      else failing.push(line);
    }
  }
  return { reachable: true, failing: [...new Set(failing)], accepted: [...new Set(acceptedHits)] };
}

function main() {
  const args = process.argv.slice(2);
  let mode = "required";
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--advisories" && (args[i + 1] === "required" || args[i + 1] === "if-reachable")) mode = args[++i];
    else {
      console.error(`audit-deps: unknown argument ${JSON.stringify(args[i])}; usage: audit-deps.mjs [--advisories required|if-reachable]`);
      process.exit(2);
    }
  }
  const allow = JSON.parse(readFileSync(`${ROOT}scripts/audit-allowlist.json`, "utf8"));
  const lock = JSON.parse(readFileSync(`${ROOT}package-lock.json`, "utf8"));
  const problems = lockfileViolations(lock, allow);
  for (const p of problems) console.error(`audit-deps: lockfile: ${p}`);

  const r = spawnSync("npm", ["audit", "--json"], { cwd: ROOT, encoding: "utf8", timeout: 120_000, maxBuffer: 64 << 20 });
  const found = advisoryFindings(r.stdout ?? "", allow, new Date());
  let failed = problems.length > 0;
  if (!found.reachable) {
    console.error(`audit-deps: advisory database not reachable: ${found.why}`);
    if (mode === "required") failed = true;
    else console.error("audit-deps: advisories NOT checked on this machine (--advisories if-reachable); lockfile rules checked");
  } else {
    for (const a of found.accepted) console.error(`audit-deps: ${a}`);
    for (const f of found.failing) console.error(`audit-deps: advisory: ${f}`);
    if (found.failing.length > 0) failed = true;
  }
  const count = Object.keys(lock.packages ?? {}).filter((p) => p.includes("node_modules/")).length;
  console.error(`audit-deps: ${failed ? "FAILED" : "ok"}: ${count} locked packages, ${problems.length} lockfile violations${found.reachable ? `, ${found.failing.length} unaccepted high/critical advisories` : ""}`);
  process.exit(failed ? 1 : 0);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
