import { test } from "node:test";
import assert from "node:assert/strict";
import { SnapshotInfo } from "@mvm/protocol";
import { FakeEngine } from "../_test/fake-engine.js";
import { cli } from "../_test/test-io.js";

test("snapshot create sends the retention, memory, consent and labels; prints the id, --json the record", async () => {
  const engine = new FakeEngine();
  const { id } = engine.newSandbox();
  const made = await cli(["snapshot", "create", "--ttl", "86400", "--no-memory", "--label", "step=deps", id], { engine });
  assert.equal(made.code, 0, made.stderr);
  const [snap] = engine.snapshots.values();
  assert.ok(snap !== undefined);
  assert.equal(made.stdout, `${snap.id}\n`);
  assert.match(made.stderr, new RegExp(`snapshot ${snap.digest} of ${id}: .* stored, kept until 2025-01-02T00:10:00.000Z`));
  const kept = await cli(["--json", "snapshot", "create", "--keep", "--include-env-secrets", id], { engine });
  assert.equal(kept.code, 0, kept.stderr);
  const record = SnapshotInfo.parse(JSON.parse(kept.stdout));
  assert.deepEqual(record.retention, { manual: true });
  assert.equal(record.expiresAt, undefined);
  assert.deepEqual(
    engine.calls.filter((c) => c.startsWith("snapshotSandbox")),
    [
      `snapshotSandbox ${id} {"retention":{"ttlSeconds":86400},"memory":false,"labels":{"step":"deps"}}`,
      `snapshotSandbox ${id} {"retention":{"manual":true},"includeEnvSecrets":true}`,
    ],
  );
});

test("snapshot create without an explicit retention, or with a bad one, is a usage error and calls nothing", async () => {
  const engine = new FakeEngine();
  const { id } = engine.newSandbox();
  const cases: [string[], RegExp][] = [
    [[id], /explicit retention: --ttl SECONDS or --keep/],
    [["--memory", id], /explicit retention/],
    [["--ttl", "60", "--keep", id], /--ttl and --keep cannot be combined/],
    [["--ttl", "59", id], /Invalid value "59" for --ttl: expected 60 to 7776000 seconds/],
    [["--ttl", "7776001", id], /expected 60 to 7776000 seconds/],
    [["--ttl", "1h", id], /Invalid value "1h" for --ttl: expected a whole number/],
    [["--keep", "--memory", "--no-memory", id], /--memory and --no-memory cannot be combined/],
    [["--keep", "--label", "bad key=v", id], /Invalid value "bad key" for --label/],
    [["--keep", "not-an-id"], /Invalid sandbox id "not-an-id"/],
    [["--keep"], /Missing arguments for "mvmctl snapshot create"/],
  ];
  for (const [args, message] of cases) {
    const r = await cli(["snapshot", "create", ...args], { engine });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, message, args.join(" "));
  }
  const noRetention = await cli(["snapshot", "create", id], { engine });
  assert.match(noRetention.stderr, /hint: .*--ttl 86400.*--keep/);
  assert.deepEqual(engine.calls.filter((c) => c.startsWith("snapshot")), []);
});

test("snapshot ls, inspect and rm: table, details by id or digest, JSON, and exit 1 when a removal fails", async () => {
  const engine = new FakeEngine();
  const { id } = engine.newSandbox();
  const first = await engine.snapshotSandbox(id, { retention: { ttlSeconds: 3600 }, labels: { a: "b" } });
  const second = await engine.snapshotSandbox(id, { retention: { manual: true } });

  const ls = await cli(["snapshot", "ls"], { engine });
  assert.equal(ls.code, 0, ls.stderr);
  const [header, ...rows] = ls.stdout.trimEnd().split("\n");
  assert.match(header ?? "", /^ID +DIGEST +TIER +MEMORY +SOURCE +SIZE +CREATED +EXPIRES +LABELS$/);
  assert.equal(rows.length, 2);
  assert.match(rows[0] ?? "", new RegExp(`^${first.id} +sha256:0{12} +container +no +${id} +2\\.0 MiB .*2025-01-02T00:10:00.000Z +a=b$`));
  assert.match(rows[1] ?? "", /manual/);
  const lsJson = await cli(["--json", "snapshot", "ls"], { engine });
  assert.deepEqual(JSON.parse(lsJson.stdout), [first, second]);

  const inspect = await cli(["snapshot", "inspect", second.digest], { engine });
  assert.equal(inspect.code, 0, inspect.stderr);
  assert.match(inspect.stdout, new RegExp(`^id +${second.id}\n`));
  assert.match(inspect.stdout, /\nkept +until deleted \(manual\)\n/);
  assert.match(inspect.stdout, /\nsize work +8\.0 MiB, 2\.0 MiB stored in 4 chunks \(3 zero, not stored\)\n/);
  const inspectJson = await cli(["--json", "snapshot", "inspect", first.id], { engine });
  assert.deepEqual(JSON.parse(inspectJson.stdout), first);
  const missing = await cli(["snapshot", "inspect", "snap_cccccccccccccccccccc"], { engine });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /error: Snapshot "snap_cccccccccccccccccccc" not found/);
  const bad = await cli(["snapshot", "inspect", "latest"], { engine });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Invalid snapshot reference "latest"/);

  const rm = await cli(["--json", "snapshot", "rm", first.id, "snap_cccccccccccccccccccc", second.digest], { engine });
  assert.equal(rm.code, 1);
  assert.deepEqual(JSON.parse(rm.stdout), [
    { ref: first.id, ok: true },
    { ref: "snap_cccccccccccccccccccc", ok: false, error: { code: "NOT_FOUND", message: 'Snapshot "snap_cccccccccccccccccccc" not found' } },
    { ref: second.digest, ok: true },
  ]);
  assert.equal(engine.snapshots.size, 0);
  const rmNone = await cli(["snapshot", "rm"], { engine });
  assert.equal(rmNone.code, 2);
});

test("memory on the container tier is the engine's refusal, exit 1 with its message", async () => {
  const engine = new FakeEngine();
  const { id } = engine.newSandbox();
  const r = await cli(["snapshot", "create", "--keep", "--memory", id], { engine });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /error: Cannot snapshot memory on the container tier/);
});

test("fork -n N prints the children's ids, --json their records; a bad count is a usage error", async () => {
  const engine = new FakeEngine();
  const { id } = engine.newSandbox({ labels: { job: "x" } });
  const forked = await cli(["fork", "-n", "3", id], { engine });
  assert.equal(forked.code, 0, forked.stderr);
  const ids = forked.stdout.trimEnd().split("\n");
  assert.equal(ids.length, 3);
  assert.ok(ids.every((k) => engine.sandboxes.has(k) && k !== id));
  const one = await cli(["--json", "fork", id], { engine });
  const records = JSON.parse(one.stdout) as { id: string; labels: Record<string, string> }[];
  assert.equal(records.length, 1);
  assert.deepEqual(records[0]?.labels, { job: "x" });
  assert.deepEqual(engine.calls.filter((c) => c.startsWith("fork")), [`forkSandbox ${id} 3`, `forkSandbox ${id} 1`]);
  for (const n of ["0", "17", "two"]) {
    const r = await cli(["fork", "--count", n, id], { engine });
    assert.equal(r.code, 2, n);
    assert.match(r.stderr, new RegExp(`Invalid value "${n}" for --count`));
  }
});

test("create and run --from-snapshot put the reference in the request; it excludes --image and --backend", async () => {
  const engine = new FakeEngine();
  const ref = `sha256:${"1".repeat(64)}`;
  const created = await cli(["create", "--from-snapshot", "snap_bbbbbbbbbbbbbbbbbbba", "--ttl", "60"], { engine });
  assert.equal(created.code, 0, created.stderr);
  assert.equal(engine.lastCreate?.fromSnapshot, "snap_bbbbbbbbbbbbbbbbbbba");
  assert.equal(engine.lastCreate?.ttlSeconds, 60);
  const ran = await cli(["run", "--from-snapshot", ref, "--", "cat", "/work/state"], { engine });
  assert.equal(ran.code, 0, ran.stderr);
  assert.equal(engine.lastCreate?.fromSnapshot, ref);
  const clash = await cli(["create", "--from-snapshot", ref, "--image", "debian:bookworm", "--backend", "vm"], { engine });
  assert.equal(clash.code, 2);
  assert.match(clash.stderr, /--from-snapshot cannot be combined with --image, --backend/);
  const bad = await cli(["create", "--from-snapshot", "yesterday"], { engine });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Invalid snapshot reference "yesterday"/);
});
