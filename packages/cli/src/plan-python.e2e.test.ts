/**
 * End to end: `mvmctl plan FILE.py` has the mvm Python package read the script (never importing
 * it) and plans its declarations with mvmctl's engine; the bundle has the TypeScript bundle's
 * schema and runs with --plan. Without a Python that has the package, a clear error; a malformed
 * answer from the interpreter is refused.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseJsonStrict } from "@mvm/protocol";
import { DEFAULT_IMAGE } from "@mvm/engine";
import { scratchDir } from "./_test/scratch.js";
import { cliEnv, run, skipWithoutImages } from "./_test/e2e-env.js";
import { PlanBundle } from "./plan-file.js";

const PYTHON_PACKAGE = fileURLToPath(new URL("../../../python", import.meta.url));
const PYTHON = existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
const skip = skipWithoutImages ?? (existsSync(PYTHON_PACKAGE) ? undefined : `no ${PYTHON_PACKAGE}`);

function setup(prefix: string): { dir: string; env: NodeJS.ProcessEnv } {
  const dir = scratchDir(prefix);
  // The sandbox's uid must be able to pass through the state directory's parents.
  chmodSync(dirname(dir), 0o711);
  chmodSync(dir, 0o711);
  // This checkout's package, whatever copy the interpreter may have installed.
  return { dir, env: { ...cliEnv(dir), PYTHONPATH: PYTHON_PACKAGE, MVM_PYTHON: PYTHON } };
}

test("mvmctl plan app.py: static analysis by the Python package, plans signed by mvmctl, the TypeScript bundle's shape", { skip, timeout: 180_000 }, async () => {
  const { dir, env } = setup("plan-py");
  const marker = join(dir, "imported");
  const app = join(dir, "app.py");
  writeFileSync(
    app,
    [
      "import pathlib",
      `pathlib.Path(${JSON.stringify(marker)}).write_text("imported")`,
      "import mvm",
      "from mvm import Sandbox",
      `with Sandbox.create(image=${JSON.stringify(DEFAULT_IMAGE)}, ttl_seconds=120, memory_mib=256) as sb:`,
      `    sb.commands.run(["python3", "-c", "print(6*7)"])`,
      `@mvm.function(image=${JSON.stringify(DEFAULT_IMAGE)}, timeout_seconds=30)`,
      "def add(a, b):",
      "    return a + b",
      "ttl = 600",
      `Sandbox.create(image=${JSON.stringify(DEFAULT_IMAGE)}, ttl_seconds=ttl)`,
      "",
    ].join("\n"),
  );
  const out = join(dir, "plans.json");
  const planned = await run(env, ["plan", "--embedded", app, "-o", out, "--json"]);
  // Exit 1: the last declaration's options are not literal, so the bundle is not the whole script.
  assert.equal(planned.code, 1, planned.stderr);
  assert.equal(existsSync(marker), false, "the script was never imported");
  assert.match(planned.stderr, /app\.py:11:\d+: not planned/);
  assert.match(planned.stderr, /option "ttl_seconds" is not a literal value/);
  const bundle = PlanBundle.parse(parseJsonStrict(planned.stdout));
  assert.deepEqual(PlanBundle.parse(parseJsonStrict(readFileSync(out, "utf8"))), bundle);
  assert.equal(bundle.mode, "static");
  assert.equal(bundle.source, app);
  assert.equal(bundle.workloads.length, 2);
  const [box, fn] = bundle.workloads;
  assert.deepEqual(box!.location, { line: 5, column: 6 });
  assert.deepEqual(box!.commands, [["python3", "-c", "print(6*7)"]]);
  assert.equal(box!.plan.plan.ir.ttlSeconds, 120);
  assert.equal(box!.plan.plan.ir.resources.memoryMiB, 256);
  assert.equal(fn!.plan.plan.ir.function?.id, "add");
  assert.equal(fn!.plan.plan.ir.function?.limits.invokeTimeoutMs, 30_000);
  assert.equal(bundle.diagnostics.length, 1);

  const ran = await run(env, ["run", "--embedded", "--plan", out, "--plan-index", "0", "--", "python3", "-c", "print(6*7)"]);
  assert.equal(ran.code, 0, ran.stderr);
  assert.equal(ran.stdout, "42\n");
});

test("mvmctl plan app.py without a Python that has the mvm package: a clear error naming the interpreter and what to do", { skip }, async () => {
  const { dir, env } = setup("plan-py-none");
  const app = join(dir, "app.py");
  writeFileSync(app, `from mvm import Sandbox\nSandbox.create(image="debian:bookworm")\n`);
  const missing = await run(env, ["plan", "--embedded", "--python", join(dir, "no-such-python"), app]);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /Cannot plan ".*app\.py": cannot run Python ".*no-such-python"/);
  assert.match(missing.stderr, /hint: .*--python or MVM_PYTHON/);

  // A real interpreter that cannot import mvm: site-packages off (-S), no PYTHONPATH; named by MVM_PYTHON.
  const bare = join(dir, "bare-python");
  writeFileSync(bare, `#!/bin/sh\nunset PYTHONPATH\nexec ${PYTHON} -S "$@"\n`, { mode: 0o755 });
  const without = await run({ ...env, MVM_PYTHON: bare }, ["plan", "--embedded", app]);
  assert.notEqual(without.code, 0);
  assert.match(without.stderr, /Python ".*bare-python" has no mvm package/);

  const record = await run(env, ["plan", "--embedded", "--mode", "record", app]);
  assert.notEqual(record.code, 0);
  assert.match(record.stderr, /a Python script is planned statically/);

  const absent = await run(env, ["plan", "--embedded", join(dir, "absent.py")]);
  assert.notEqual(absent.code, 0);
  assert.match(absent.stderr, /Cannot read ".*absent\.py"/);
});

test("mvmctl plan app.py refuses a malformed answer from the interpreter", { skip }, async () => {
  const { dir, env } = setup("plan-py-hostile");
  const app = join(dir, "app.py");
  writeFileSync(app, "\n");
  const answers = {
    duplicate: `{"workloads":[],"workloads":[],"diagnostics":[]}`,
    extra: `{"workloads":[],"diagnostics":[],"more":1}`,
    incomplete: `{"workloads":[{"location":{"line":1,"column":1},"complete":true,"commands":[]}],"diagnostics":[]}`,
    badRequest: `{"workloads":[{"location":{"line":1,"column":1},"complete":true,"commands":[],"request":{"ttlSeconds":"x"}}],"diagnostics":[]}`,
    notJson: "hello",
  };
  for (const [name, answer] of Object.entries(answers)) {
    const fake = join(dir, `python-${name}`);
    writeFileSync(fake, `#!/bin/sh\ncat <<'EOF'\n${answer}\nEOF\n`, { mode: 0o755 });
    const r = await run(env, ["plan", "--embedded", "--python", fake, app]);
    assert.notEqual(r.code, 0, name);
    assert.match(r.stderr, /Bad JSON|analyzer's answer/, `${name}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /at .*\.js:\d+/, `${name}: no stack trace`);
  }
});
