import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, utimes, writeFile, rename } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { HostFacts, fileIdentity } from "./host-facts.js";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-facts-"));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A fact over `file` that counts how often it was computed. */
function lengthFact(file: string, context = "") {
  let computed = 0;
  return {
    get computed() {
      return computed;
    },
    options: {
      key: `length:${file}`,
      files: [file],
      context,
      schema: z.number(),
      compute: async () => {
        computed++;
        return { value: (await readFile(file)).length };
      },
    },
  };
}

test("a fact is computed once and reused by another process's cache while its file is unchanged", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "input");
    await writeFile(file, "abc");
    const first = lengthFact(file);
    assert.equal(await new HostFacts(join(dir, "facts.json")).fact(first.options), 3);
    const second = lengthFact(file);
    assert.equal(await new HostFacts(join(dir, "facts.json")).fact(second.options), 3);
    assert.deepEqual([first.computed, second.computed], [1, 0]);
  });
});

test("a rewritten, replaced or removed file, or another context, computes the fact again", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "input");
    const facts = join(dir, "facts.json");
    await writeFile(file, "abc");
    await new HostFacts(facts).fact(lengthFact(file).options);

    // Same size, modification time put back: the change time still moves.
    const before = await fileIdentity(file);
    await writeFile(file, "xyz");
    await utimes(file, new Date(0), new Date(0));
    assert.notEqual(await fileIdentity(file), before);
    const rewritten = lengthFact(file);
    await new HostFacts(facts).fact(rewritten.options);
    assert.equal(rewritten.computed, 1);

    await writeFile(join(dir, "other"), "longer content");
    await rename(join(dir, "other"), file);
    const replaced = lengthFact(file);
    assert.equal(await new HostFacts(facts).fact(replaced.options), 14);
    assert.equal(replaced.computed, 1);

    const otherContext = lengthFact(file, "kernel 2");
    await new HostFacts(facts).fact(otherContext.options);
    assert.equal(otherContext.computed, 1);

    await rm(file);
    await writeFile(file, "x");
    const recreated = lengthFact(file, "kernel 2");
    assert.equal(await new HostFacts(facts).fact(recreated.options), 1);
    assert.equal(recreated.computed, 1);
  });
});

test("a value the caller will not keep, a value failing its schema and a damaged cache file are computed again", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "input");
    const facts = join(dir, "facts.json");
    await writeFile(file, "abc");
    let runs = 0;
    const failing = { key: "trial", files: [file], schema: z.number(), compute: async () => ({ value: ++runs }), keep: (v: number) => v > 5 };
    await new HostFacts(facts).fact(failing);
    await new HostFacts(facts).fact(failing);
    assert.equal(runs, 2, "a value not kept is not reused");

    const counted = lengthFact(file);
    await new HostFacts(facts).fact(counted.options);
    const strict = { ...counted.options, schema: z.string() };
    let strictRuns = 0;
    const value = await new HostFacts(facts).fact({ ...strict, compute: async () => ({ value: `run ${++strictRuns}` }) });
    assert.equal(value, "run 1", "a stored value of the wrong shape is not returned");

    await writeFile(facts, '{"version":1,"facts":{"x":{"context":"","files":[],"value":1},"x":{}}}');
    const afterDamage = lengthFact(file);
    assert.equal(await new HostFacts(facts).fact(afterDamage.options), 3);
    assert.equal(afterDamage.computed, 1);
  });
});

test("a file that changes while its fact is computed is not kept", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "input");
    const facts = join(dir, "facts.json");
    await writeFile(file, "abc");
    let runs = 0;
    const racing = {
      key: "racing",
      files: [file],
      schema: z.number(),
      compute: async () => {
        runs++;
        await writeFile(file, "changed meanwhile");
        return { value: 3 };
      },
    };
    await new HostFacts(facts).fact(racing);
    await new HostFacts(facts).fact(racing);
    assert.equal(runs, 2);
  });
});
