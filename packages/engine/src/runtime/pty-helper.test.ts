import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { HostFacts } from "../store/host-facts.js";
import { ptyHelperIfBuildable } from "./pty-helper.js";

test("the terminal helper is built once; later engine starts reuse it without running the compiler", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-pty-helper-"));
  const savedPath = process.env["PATH"];
  t.after(async () => {
    process.env["PATH"] = savedPath;
    await rm(dir, { recursive: true, force: true });
  });
  // A `cc` first on PATH that logs each run and hands over to the system compiler.
  const log = join(dir, "cc.log");
  await writeFile(join(dir, "cc"), `#!/bin/sh\necho "$*" >> ${log}\nexec /usr/bin/cc "$@"\n`);
  await chmod(join(dir, "cc"), 0o755);
  process.env["PATH"] = `${dir}:${savedPath ?? ""}`;
  const runs = async () => (await readFile(log, "utf8").catch(() => "")).split("\n").filter(Boolean).length;

  const out = join(dir, "out");
  const first = await ptyHelperIfBuildable(out, new HostFacts(join(dir, "facts.json")));
  assert.ok(first !== undefined, "the helper builds with the system compiler");
  const afterFirst = await runs();
  assert.ok(afterFirst >= 2, "the first start asks the compiler's version and compiles");

  // Another engine start: a new HostFacts on the same file, as another process would have.
  assert.equal(await ptyHelperIfBuildable(out, new HostFacts(join(dir, "facts.json"))), first);
  assert.equal(await runs(), afterFirst, "no compiler run on a start with everything unchanged");

  // A removed build is noticed and made again.
  await rm(first);
  assert.equal(await ptyHelperIfBuildable(out, new HostFacts(join(dir, "facts.json"))), first);
  assert.ok((await runs()) > afterFirst);
});
