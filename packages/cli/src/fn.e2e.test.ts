/**
 * End to end: the built mvmctl runs a function from a TypeScript file in a sandbox (namespace
 * backend, embedded engine), prints its result, and `logs --fn` shows a failure's stack.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { scratchDir } from "./_test/scratch.js";
import { cliEnv, skipWithoutImages } from "./_test/e2e-env.js";

const MAIN = fileURLToPath(new URL("./main.js", import.meta.url));
const BUNDLED = fileURLToPath(new URL("../bin/mvmctl.cjs", import.meta.url));
const SDK = fileURLToPath(new URL("../../sdk/dist/index.js", import.meta.url));

test("mvmctl fn run prints the result; a failure names its errorId and logs --fn shows the stack", { skip: skipWithoutImages, timeout: 120_000 }, () => {
  const dir = scratchDir("mvm-cli-fn");
  // The sandbox's uid must be able to pass through the state directory's parents.
  chmodSync(dirname(dir), 0o711);
  chmodSync(dir, 0o711);
  const env = { ...cliEnv(dir), MVM_FN_LOG_DIR: join(dir, "fn-logs") };
  const file = join(dir, "fns.ts");
  writeFileSync(
    file,
    `import { fn } from ${JSON.stringify(SDK)};
export const add = fn({ id: "add", backend: "namespace" }, async (a: number, b: number) => { console.log("adding"); return a + b; });
export function shoutIt(s: string): string { return s.toUpperCase(); }
export const boom = fn({ id: "boom", backend: "namespace" }, () => { throw new Error("nope at /srv/app/secret.txt"); });
`,
  );
  const mvmctl = (...args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { env, encoding: "utf8", timeout: 100_000 });

  const add = mvmctl("--embedded", "fn", "run", `${file}#add`, "--", "[2, 3]");
  assert.equal(add.status, 0, add.stderr);
  assert.equal(add.stdout, "5\n");
  assert.match(add.stderr, /adding/);

  // The shipped mvmctl (one CommonJS bundle) imports the file too.
  const bundled = spawnSync(process.execPath, [BUNDLED, "--embedded", "fn", "run", `${file}#add`, "--", "[4, 5]"], { env, encoding: "utf8", timeout: 100_000 });
  assert.equal(bundled.status, 0, bundled.stderr);
  assert.equal(bundled.stdout, "9\n");

  const plain = mvmctl("--embedded", "fn", "run", `${file}#shoutIt`, "--backend", "namespace", "--", '["hi"]');
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal(plain.stdout, '"HI"\n');

  const boom = mvmctl("--embedded", "fn", "run", `${file}#boom`);
  assert.notEqual(boom.status, 0);
  const errorId = /fe_[0-9a-f]{24}/.exec(boom.stderr)?.[0];
  assert.ok(errorId, boom.stderr);
  assert.ok(!boom.stderr.includes("/srv/app"), boom.stderr);
  const logs = mvmctl("logs", "--fn", "boom", "--json");
  assert.equal(logs.status, 0, logs.stderr);
  const entry = logs.stdout.trim().split("\n").map((l) => JSON.parse(l) as { errorId: string; stack?: string }).find((e) => e.errorId === errorId);
  assert.match(entry?.stack ?? "", /\/srv\/app\/secret\.txt/);
});
