/**
 * End-to-end: snapshots through the built mvmctl and a real daemon (`mvmctl daemon`, namespace
 * backend, its own state directory): snapshot create, ls, inspect, create --from-snapshot, fork
 * and snapshot rm, each as a separate mvmctl process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cliEnv, run, skipWithoutImages, startDaemon, type Ran } from "./_test/e2e-env.js";
import { DEFAULT_IMAGE } from "@mvm/engine";

const skip = skipWithoutImages;

test("snapshot create/ls/inspect/rm, create --from-snapshot and fork through a real daemon", { skip, timeout: 300_000 }, async () => {
  // The sandbox's uid must be able to pass through the state directory's parents.
  const dir = mkdtempSync(join(tmpdir(), "mvm-snapshot-e2e-"));
  chmodSync(dir, 0o711);
  const env = cliEnv(dir);
  const socketPath = join(dir, "run", "d.sock");
  const daemon = await startDaemon(env, socketPath);
  const mvmctl = (...args: string[]): Promise<Ran> => run(env, ["--socket", socketPath, ...args]);
  const ok = async (...args: string[]): Promise<string> => {
    const r = await mvmctl(...args);
    assert.equal(r.code, 0, `mvmctl ${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };
  const read = (id: string): Promise<string> => ok("exec", id, "--", "cat", "/work/state");
  try {
    const id = (await ok("create", "--image", DEFAULT_IMAGE, "--ttl", "300")).trim();
    await ok("exec", id, "--", "sh", "-c", "echo one > /work/state");

    // Retention is required; memory is refused on the container tier, never dropped.
    const noRetention = await mvmctl("snapshot", "create", id);
    assert.equal(noRetention.code, 2);
    const memory = await mvmctl("--json", "snapshot", "create", "--keep", "--memory", id);
    assert.equal(memory.code, 1);
    assert.equal((JSON.parse(memory.stdout) as { error: { code: string } }).error.code, "UNSUPPORTED_CAPABILITY");

    const snap = JSON.parse(await ok("--json", "snapshot", "create", "--ttl", "3600", "--label", "step=one", id)) as {
      id: string;
      digest: string;
      source: string;
      memory: boolean;
      tier: string;
    };
    assert.match(snap.id, /^snap_[a-z2-7]{20}$/);
    assert.equal(snap.source, id);
    assert.equal(snap.memory, false);
    assert.equal(snap.tier, "container");
    await ok("exec", id, "--", "sh", "-c", "echo two > /work/state");

    const listed = JSON.parse(await ok("--json", "snapshot", "ls")) as { id: string; labels: Record<string, string> }[];
    assert.deepEqual(listed.map((s) => [s.id, s.labels]), [[snap.id, { step: "one" }]]);
    assert.match(await ok("snapshot", "inspect", snap.digest), new RegExp(`^id +${snap.id}\\n`));

    // A sandbox from the snapshot has the state at the snapshot; the source has moved on.
    const copy = (await ok("create", "--from-snapshot", snap.digest, "--ttl", "300")).trim();
    assert.notEqual(copy, id);
    assert.equal(await read(copy), "one\n");
    assert.equal(await read(id), "two\n");

    // Fork children start from the current state, then diverge.
    const kids = (await ok("fork", "-n", "2", id)).trim().split("\n");
    assert.equal(kids.length, 2);
    assert.equal(new Set([id, copy, ...kids]).size, 4);
    for (const kid of kids) assert.equal(await read(kid), "two\n");
    await ok("exec", kids[0]!, "--", "sh", "-c", "echo mine > /work/state");
    assert.equal(await read(kids[0]!), "mine\n");
    assert.equal(await read(kids[1]!), "two\n");
    assert.equal(await read(id), "two\n");

    await ok("kill", id, copy, ...kids);
    // The snapshot outlives its sandbox until it is removed.
    assert.equal((JSON.parse(await ok("--json", "snapshot", "ls")) as unknown[]).length, 1);
    assert.equal((await ok("snapshot", "rm", snap.id)).trim(), snap.id);
    const gone = await mvmctl("snapshot", "inspect", snap.id);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error: .*not found/im);
    assert.deepEqual(JSON.parse(await ok("--json", "snapshot", "ls")), []);
  } finally {
    const code = await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    assert.equal(code, 0);
  }
});
