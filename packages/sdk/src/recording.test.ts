import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ExitInfo, InvalidArgumentError, NetworkPolicy, SandboxInfo, UnsupportedCapabilityError } from "@mvm/protocol";
import { RecordingEngine, readRecording } from "./recording.js";
import { Sandbox } from "./sandbox.js";

const SDK = fileURLToPath(new URL("./index.js", import.meta.url));

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-record-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("a RecordingEngine answers the SDK with schema-valid empty successes and records what was asked", async () => {
  const rec = new RecordingEngine();
  const sb = await Sandbox.create({ engine: rec, image: "debian:bookworm", ttlSeconds: 60, env: { MODE: "secret-value" } });
  assert.ok(SandboxInfo.safeParse(sb.info).success);
  const r = await sb.commands.run(["make", "test"], { env: { CI: "1" }, cwd: "/work" });
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, "");
  assert.ok(ExitInfo.shape.receipt.safeParse(r.receipt).success);
  await sb.files.write("/work/in.txt", "hello");
  await sb.network.setPolicy(NetworkPolicy.denyByDefault().allowHttps("pypi.org"));
  await sb.kill();
  await assert.rejects(rec.setSecret(), UnsupportedCapabilityError);
  await assert.rejects(rec.planSandbox(), UnsupportedCapabilityError);
  await assert.rejects(Sandbox.create({ engine: rec, image: "BAD REF" }), InvalidArgumentError);
  assert.deepEqual(rec.recording(), {
    version: 1,
    workloads: [
      {
        sandboxId: sb.id,
        request: { image: "debian:bookworm", ttlSeconds: 60, env: { MODE: "secret-value" } },
        commands: [{ argv: ["make", "test"], cwd: "/work", envNames: ["CI"] }],
        files: [{ path: "/work/in.txt", bytes: 5 }],
        networkPolicies: [NetworkPolicy.denyByDefault().allowHttps("pypi.org").toJSON()],
        killed: true,
      },
    ],
  });
});

test("a script run with MVM_RECORD_FILE boots nothing, writes no state, and leaves its recording at exit", async () => {
  await withDir(async (dir) => {
    const script = join(dir, "job.mjs");
    await writeFile(
      script,
      [
        `import { Sandbox, NetworkPolicy } from ${JSON.stringify(SDK)};`,
        `const sb = await Sandbox.create({ image: "debian:bookworm+python3", ttlSeconds: 90, network: NetworkPolicy.denyByDefault().allowHttps("pypi.org") });`,
        `const r = await sb.commands.run(["pip", "install", "requests"], { env: { TOKEN: "do-not-record" } });`,
        `await sb.commands.run("python3 job.py");`,
        `await sb.files.write("/work/job.py", "print(1)");`,
        `console.log("exit", r.exitCode);`,
      ].join("\n"),
    );
    const recordFile = join(dir, "recording.json");
    const stateDir = join(dir, "state");
    const run = spawnSync(process.execPath, [script], { env: { ...process.env, MVM_RECORD_FILE: recordFile, MVM_STATE_DIR: stateDir }, encoding: "utf8" });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout, "exit 0\n");
    assert.equal(existsSync(stateDir), false, "no engine state was written");
    const recording = await readRecording(recordFile);
    assert.equal(recording.workloads.length, 1);
    const w = recording.workloads[0]!;
    assert.equal(w.request.image, "debian:bookworm+python3");
    assert.deepEqual(
      w.commands.map((c) => c.argv),
      [["pip", "install", "requests"], ["/bin/sh", "-c", "python3 job.py"]],
    );
    assert.deepEqual(w.commands[0]!.envNames, ["TOKEN"]);
    assert.deepEqual(w.files, [{ path: "/work/job.py", bytes: 8 }]);
    const { readFile } = await import("node:fs/promises");
    assert.ok(!(await readFile(recordFile, "utf8")).includes("do-not-record"), "exec environment values are not recorded");
  });
});

test("readRecording refuses a file too large, not JSON, or off the schema", async () => {
  await withDir(async (dir) => {
    const bad = join(dir, "bad.json");
    await writeFile(bad, "{not json");
    await assert.rejects(readRecording(bad), /not JSON/);
    await writeFile(bad, JSON.stringify({ version: 1, workloads: [{ sandboxId: "nope" }] }));
    await assert.rejects(readRecording(bad), InvalidArgumentError);
    await writeFile(bad, Buffer.alloc(16 * 1024 * 1024 + 1, 0x20));
    await assert.rejects(readRecording(bad), /over the limit/);
  });
});
