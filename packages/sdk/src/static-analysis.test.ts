import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { InvalidArgumentError, NetworkPolicy, NotFoundError, SecretRef } from "@mvm/protocol";
import { analyzeSource, analyzeSourceText } from "./static-analysis.js";

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-static-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("static mode never executes the module: a file with side effects is read, not run", async () => {
  await withDir(async (dir) => {
    const marker = join(dir, "ran");
    const file = join(dir, "agent.mjs");
    await writeFile(
      file,
      [
        `import { writeFileSync } from "node:fs";`,
        `import { Sandbox } from "@mvm/sdk";`,
        `writeFileSync(${JSON.stringify(marker)}, "top level ran");`,
        `await import(${JSON.stringify(join(dir, "other.mjs"))});`,
        `const sb = await Sandbox.create({ image: "debian:bookworm+python3", ttlSeconds: 120 });`,
        `await sb.commands.run(["python3", "-c", "print(1)"]);`,
        `process.exit(3);`,
        `throw new Error("never");`,
      ].join("\n"),
    );
    await writeFile(join(dir, "other.mjs"), `import { writeFileSync } from "node:fs"; writeFileSync(${JSON.stringify(marker)}, "import ran");`);
    const analysis = await analyzeSource(file);
    assert.equal(existsSync(marker), false, "no code of the module ran");
    assert.deepEqual(analysis.workloads, [
      {
        location: { line: 5, column: 18 },
        request: { image: "debian:bookworm+python3", ttlSeconds: 120 },
        commands: [["python3", "-c", "print(1)"]],
        complete: true,
        forks: [],
      },
    ]);
    assert.deepEqual(analysis.diagnostics, []);
  });
});

test("reads TypeScript: types, as const, await using, aliased and namespace imports, consts and shorthand", async () => {
  const source = `
import { Sandbox as S, NetworkPolicy as NP, SecretRef } from "@mvm/sdk";
import * as mvm from "@mvm/sdk";
interface Job { name: string }
const image = "debian:bookworm" as const;
const limits = { memoryMiB: 512, pids: 64 } satisfies Record<string, number>;
const policy = NP.denyByDefault().allowHttps("api.example.com").allowTcp("db.example.com", 5432);
export async function main(job: Job): Promise<void> {
  await using sb = await S.create({ image, resources: limits, network: policy, ttlSeconds: 60,
    secrets: { API_KEY: SecretRef.from("api-key", { hosts: ["api.example.com"] }) }, mode: "embedded", onProgress: (e) => console.log(e) });
  await sb.commands.run("echo hi");
  const other = await mvm.Sandbox.create({ backend: "vm", intent: "ci:test", command: ["make", "test"], env: { A: "1" } });
  await other.commands.start(["make", "test"], { timeoutSeconds: 5 });
}
`;
  const a = await analyzeSourceText(source, "job.ts");
  assert.deepEqual(a.diagnostics, []);
  assert.equal(a.workloads.length, 2);
  assert.deepEqual(a.workloads[0]!.request, {
    image: "debian:bookworm",
    resources: { memoryMiB: 512, pids: 64 },
    network: NetworkPolicy.denyByDefault().allowHttps("api.example.com").allowTcp("db.example.com", 5432).toJSON(),
    ttlSeconds: 60,
    secrets: { API_KEY: SecretRef.from("api-key", { hosts: ["api.example.com"] }).toJSON() },
  });
  assert.deepEqual(a.workloads[0]!.commands, [["/bin/sh", "-c", "echo hi"]]);
  assert.deepEqual(a.workloads[1]!.request, { backend: "vm", intent: "ci:test", command: ["make", "test"], env: { A: "1" } });
  assert.deepEqual(a.workloads[1]!.commands, [["make", "test"]]);
  assert.ok(a.workloads.every((w) => w.complete));
});

test("what is not a literal is reported with its line and left out; the rest is kept", async () => {
  const source = [
    `const { Sandbox } = require("@mvm/sdk");`,
    `const ttl = Number(process.env.TTL);`,
    `async function go(argv) {`,
    `  const sb = await Sandbox.create({ image: "debian:bookworm", ttlSeconds: ttl, env: { ...process.env }, labels: { team: "x" } });`,
    `  await sb.commands.run(argv);`,
    `  await sb.commands.run(["ls", "-l"]);`,
    `}`,
  ].join("\n");
  const a = await analyzeSourceText(source, "go.cjs");
  assert.equal(a.workloads.length, 1);
  const w = a.workloads[0]!;
  assert.equal(w.complete, false);
  assert.deepEqual(w.request, { image: "debian:bookworm", env: {}, labels: { team: "x" } });
  assert.deepEqual(w.commands, [["ls", "-l"]]);
  const lines = a.diagnostics.map((d) => `${d.line}: ${d.message}`);
  assert.ok(lines.some((l) => /^4: ttlSeconds: a function call is not static/.test(l)), lines.join("\n"));
  assert.ok(lines.some((l) => /^4: env: a spread/.test(l)), lines.join("\n"));
  assert.ok(lines.some((l) => /^5: command: "argv" is not a const/.test(l)), lines.join("\n"));
});

test("fromSnapshot: a literal id or digest is part of the request; a snapshot the script takes is the workload's origin", async () => {
  const source = `
import { Sandbox } from "@mvm/sdk";
const base = "snap_abcdefghijklmnopqrst";
await using a = await Sandbox.create({ fromSnapshot: base, ttlSeconds: 60 });
await using b = await Sandbox.create({ fromSnapshot: "sha256:${"ab".repeat(32)}" });
const snap = await a.snapshot({ retention: { ttlSeconds: 3600 } });
await using c = await Sandbox.create({ fromSnapshot: snap.id, ttlSeconds: 30 });
await c.commands.run(["cat", "/work/state"]);
await using d = await Sandbox.create({ fromSnapshot: snap });
await using e = await Sandbox.create({ fromSnapshot: "snap_tooshort" });
`;
  const w = (await analyzeSourceText(source, "x.ts")).workloads;
  assert.equal(w.length, 5);
  assert.deepEqual(w[0]!.request, { fromSnapshot: "snap_abcdefghijklmnopqrst", ttlSeconds: 60 });
  assert.equal(w[0]!.complete, true);
  assert.deepEqual(w[1]!.request, { fromSnapshot: `sha256:${"ab".repeat(32)}` });
  assert.deepEqual(w[2]!.origin, { snapshot: { line: 6, column: 20 } });
  assert.deepEqual(w[2]!.request, { ttlSeconds: 30 });
  assert.equal(w[2]!.complete, true);
  assert.deepEqual(w[2]!.commands, [["cat", "/work/state"]]);
  assert.deepEqual(w[3]!.origin, { snapshot: { line: 6, column: 20 } });
  assert.equal(w[0]!.origin, undefined);
  // A malformed literal is refused by the schema and left out, as any other bad option.
  assert.equal(w[4]!.complete, false);
  assert.deepEqual(w[4]!.request, {});
});

test("sb.fork is recognised on the sandbox it forks, with its literal count (1 by default)", async () => {
  const source = `
import { Sandbox } from "@mvm/sdk";
const sb = await Sandbox.create({ image: "debian:bookworm" });
const kids = await sb.fork({ count: 4 });
const [one] = await sb.fork();
const n = Number(process.env.N);
await sb.fork({ count: n });
const other = { fork() {} };
other.fork();
`;
  const a = await analyzeSourceText(source, "x.ts");
  assert.equal(a.workloads.length, 1);
  assert.equal(a.workloads[0]!.complete, true);
  assert.deepEqual(a.workloads[0]!.forks, [
    { location: { line: 4, column: 20 }, count: 4 },
    { location: { line: 5, column: 21 }, count: 1 },
    { location: { line: 7, column: 7 }, count: undefined },
  ]);
  assert.ok(a.diagnostics.some((d) => d.line === 7 && /fork\.count/.test(d.message)));
});

test("a value the schema refuses is reported and left out; an unknown builder method is not guessed", async () => {
  const source = `
import { Sandbox, NetworkPolicy } from "@mvm/sdk";
await Sandbox.create({ image: "UPPER CASE", ttlSeconds: 30, network: NetworkPolicy.denyByDefault().allowEverything() });
await Sandbox.create(makeOptions());
await Sandbox.create();
`;
  const a = await analyzeSourceText(source, "x.ts");
  assert.equal(a.workloads.length, 3);
  assert.deepEqual(a.workloads[0]!.request, { ttlSeconds: 30 });
  assert.equal(a.workloads[0]!.complete, false);
  assert.ok(a.diagnostics.some((d) => /allowEverything is not a builder method/.test(d.message)));
  assert.ok(a.diagnostics.some((d) => /option "image"/.test(d.message)));
  assert.deepEqual(a.workloads[1], { location: { line: 4, column: 7 }, request: {}, commands: [], complete: false, forks: [] });
  assert.deepEqual(a.workloads[2], { location: { line: 5, column: 7 }, request: {}, commands: [], complete: true, forks: [] });
});

test("Sandbox.create of another module is not a declaration; a syntax error is a diagnostic, not a throw", async () => {
  const a = await analyzeSourceText(`import { Sandbox } from "./mine.js";\nawait Sandbox.create({ image: "x" });\n`, "a.ts");
  assert.deepEqual(a.workloads, []);
  const b = await analyzeSourceText(`import { Sandbox } from "@mvm/sdk";\nawait Sandbox.create({ image: "debian:bookworm", ttlSeconds: 5 ;\n`, "b.ts");
  assert.ok(b.diagnostics.some((d) => d.line === 2 && /^syntax: /.test(d.message)), JSON.stringify(b.diagnostics));
});

test("a missing file is NotFoundError and a file over the size limit is InvalidArgumentError", async () => {
  await withDir(async (dir) => {
    await assert.rejects(analyzeSource(join(dir, "nope.ts")), NotFoundError);
    const big = join(dir, "big.ts");
    await writeFile(big, "x".repeat(2048));
    await assert.rejects(analyzeSource(big, { maxBytes: 1024 }), InvalidArgumentError);
  });
});

test("any literal request printed into source is read back unchanged (property)", async () => {
  const name = fc.stringMatching(/^[a-z][a-z0-9]{0,8}$/);
  const text = fc.string({ maxLength: 20 });
  const request = fc.record(
    {
      image: fc.constantFrom("debian:bookworm", "debian:bookworm+python3", "local/tools"),
      ttlSeconds: fc.integer({ min: 1, max: 604800 }),
      workMiB: fc.integer({ min: 1, max: 4096 }),
      env: fc.dictionary(name.map((n) => n.toUpperCase()), text, { maxKeys: 4 }),
      labels: fc.dictionary(name, text, { maxKeys: 4 }),
      command: fc.tuple(name, fc.array(text, { maxLength: 3 })).map(([program, args]) => [program, ...args]),
    },
    { requiredKeys: [] },
  );
  await fc.assert(
    fc.asyncProperty(request, async (r) => {
      const source = `import { Sandbox } from "@mvm/sdk";\nconst sb = await Sandbox.create(${JSON.stringify(r)});\n`;
      const a = await analyzeSourceText(source, "p.ts");
      assert.deepEqual(a.diagnostics, []);
      assert.deepEqual(a.workloads[0]?.request, JSON.parse(JSON.stringify(r)));
    }),
    { numRuns: 200 },
  );
});
