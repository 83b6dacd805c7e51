import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REGISTER = fileURLToPath(new URL("./ts-register.js", import.meta.url));

async function runTs(files: Record<string, string>, entry: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-ts-hooks-"));
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
    const r = spawnSync(process.execPath, ["--import", REGISTER, join(dir, entry)], { encoding: "utf8", timeout: 60_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("a TypeScript script runs with its types erased, and imports sibling .ts/.mts modules spelled .js/.mjs", async () => {
  const r = await runTs(
    {
      "main.ts": [
        `import { double, type Box } from "./lib.js";`,
        `import { tag } from "./more.mjs";`,
        `enum Color { Red = "red" }`,
        `const box: Box<number> = { value: 21 };`,
        `console.log(double(box.value), Color.Red, tag satisfies string);`,
      ].join("\n"),
      "lib.ts": `export interface Box<T> { value: T }\nexport function double(n: number): number { return n * 2; }\n`,
      "more.mts": `export const tag: string = "mts";\n`,
    },
    "main.ts",
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "42 red mts\n");
});

test("a missing module is still an error naming it, and plain JavaScript is not remapped to .ts", async () => {
  const missing = await runTs({ "main.ts": `import "./nope.js";\n` }, "main.ts");
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /ERR_MODULE_NOT_FOUND[\s\S]*nope/);
  const js = await runTs({ "main.mjs": `import "./lib.js";\n`, "lib.ts": `console.log("ran");\n` }, "main.mjs");
  assert.notEqual(js.status, 0);
  assert.match(js.stderr, /ERR_MODULE_NOT_FOUND/);
});
