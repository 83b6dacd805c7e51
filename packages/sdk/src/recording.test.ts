import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ExitInfo, InvalidArgumentError, NetworkPolicy, NotFoundError, SandboxInfo, SnapshotInfo, UnsupportedCapabilityError } from "@mvm/protocol";
import { RecordingEngine, RecordingSchema, readRecording } from "./recording.js";
import { Sandbox } from "./sandbox.js";
import { Snapshot } from "./snapshot.js";

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

test("record mode: snapshots are recorded on their sandbox; forks and restores of them are workloads with an origin", async () => {
  const rec = new RecordingEngine();
  const sb = await Sandbox.create({ engine: rec, image: "debian:bookworm", ttlSeconds: 60 });
  const snap = await sb.snapshot({ retention: { ttlSeconds: 3600 }, labels: { step: "deps" } });
  assert.ok(SnapshotInfo.safeParse(snap.info).success);
  assert.equal(snap.source, sb.id);
  assert.deepEqual((await Snapshot.list({ engine: rec })).map((s) => s.id), [snap.id]);
  const restored = await Sandbox.create({ engine: rec, fromSnapshot: snap.id, ttlSeconds: 30 });
  await restored.commands.run(["cat", "/work/state"]);
  const kids = await sb.fork({ count: 2 });
  assert.equal(kids.length, 2);
  // A snapshot that exists outside this recording is named as is; it stays in the request.
  const outside = await Sandbox.create({ engine: rec, fromSnapshot: `sha256:${"ab".repeat(32)}` });
  await assert.rejects(Snapshot.get(`sha256:${"ab".repeat(32)}`, { engine: rec }), NotFoundError);
  await snap.delete();
  await assert.rejects(snap.delete(), NotFoundError);
  await assert.rejects(sb.snapshot({ retention: { ttlSeconds: 1 } }), InvalidArgumentError);
  await assert.rejects(sb.fork({ count: 99 }), InvalidArgumentError);

  const recording = rec.recording();
  assert.ok(RecordingSchema.safeParse(recording).success);
  const byId = new Map(recording.workloads.map((w) => [w.sandboxId, w]));
  assert.deepEqual(byId.get(sb.id)?.snapshots, [
    { snapshotId: snap.id, request: { retention: { ttlSeconds: 3600 }, labels: { step: "deps" } }, deleted: true },
  ]);
  assert.equal(byId.get(sb.id)?.origin, undefined);
  const r = byId.get(restored.id);
  assert.deepEqual(r?.origin, { snapshotId: snap.id, takenFrom: sb.id });
  assert.deepEqual(r?.request, { image: "debian:bookworm", ttlSeconds: 30 });
  assert.deepEqual(r?.commands.map((c) => c.argv), [["cat", "/work/state"]]);
  for (const kid of kids) {
    assert.deepEqual(byId.get(kid.id)?.origin, { forkOf: sb.id });
    assert.deepEqual(byId.get(kid.id)?.request, { image: "debian:bookworm", ttlSeconds: 60 });
  }
  assert.deepEqual(byId.get(outside.id)?.request, { fromSnapshot: `sha256:${"ab".repeat(32)}` });
  assert.equal(byId.get(outside.id)?.origin, undefined);
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
