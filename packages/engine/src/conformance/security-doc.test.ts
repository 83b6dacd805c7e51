/**
 * docs/SECURITY.md names, for every claim, the tests that enforce it. This checks the names are
 * real: each backticked test title in the claims table (a trailing "…" means "starts with") must
 * be the title of a test in the source tree, and each named file must exist.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

const ROOT = new URL("../../../../", import.meta.url).pathname;

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name === "node_modules" || entry.name === "dist") continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await sourceFiles(path)));
    else if (entry.name.endsWith(".ts")) out.push(path);
  }
  return out;
}

test("every test and file the SECURITY.md claims table names exists", async () => {
  const doc = await readFile(join(ROOT, "docs/SECURITY.md"), "utf8");
  const table = doc.slice(doc.indexOf("## Claims"), doc.indexOf("\n## ", doc.indexOf("## Claims") + 1));
  const rows = table.split("\n").filter((l) => l.startsWith("| ") && !l.startsWith("| #") && !l.startsWith("| ---"));
  assert.ok(rows.length >= 20, `only ${rows.length} claim rows found`);
  const sources = await Promise.all((await sourceFiles(join(ROOT, "packages"))).map((f) => readFile(f, "utf8")));
  const titles = sources.join("\n");
  const files = (await sourceFiles(join(ROOT, "packages"))).map((f) => f.slice(ROOT.length));
  const missing: string[] = [];
  for (const row of rows) {
    const enforcedBy = row.split(" | ").pop() ?? "";
    for (const [, name] of enforcedBy.matchAll(/`([^`]+)`/g)) {
      // Absolute paths are examples of what a test touches; "npm ci" is the CI command.
      if (name === undefined || name.startsWith("/") || name.startsWith("npm ")) continue;
      if (/^[\w.*/-]+$/.test(name) && (name.includes("/") || name.endsWith(".ts"))) {
        const base = name.replace(/\*.*$/, "").replace(/\/$/, "");
        const found = files.some((f) => f.endsWith(base) || f.includes(`${base}/`) || f.startsWith(base)) || existsSync(join(ROOT, base));
        if (!found) missing.push(`file ${name}`);
        continue;
      }
      // "…" stands for the rest of the title; only the part before it is checked.
      const title = name.split("…")[0]!.trim();
      if (!titles.includes(`"${title}`) && !titles.includes(`\`${title}`)) missing.push(`test "${name}"`);
    }
  }
  assert.deepEqual(missing, []);
});

test("claims 1 and 2 say, in the table, that on the container tier they hold only while the host kernel does", async () => {
  const doc = await readFile(join(ROOT, "docs/SECURITY.md"), "utf8");
  const rows = doc.split("\n").filter((l) => /^\| [12] \|/.test(l));
  assert.ok(rows.length >= 8, `only ${rows.length} rows of claims 1 and 2`);
  const unqualified = rows.filter((row) => {
    const tier = row.split(" | ")[2] ?? "";
    return /\b(both|all|container)\b/.test(tier) && !/host kernel has no exploitable bug/.test(tier);
  });
  assert.deepEqual(unqualified, [], "a container-tier row of claim 1 or 2 without the host-kernel qualification");
  assert.match(doc, /\n\\\* On the container tier the workload's system calls reach the host's own kernel/);
});
