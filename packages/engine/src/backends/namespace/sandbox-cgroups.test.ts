import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { setTimeout as delay } from "node:timers/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TimeoutError, UnsupportedCapabilityError } from "@mvm/protocol";
import { CGROUP_CONTROLLERS, detectCgroups, type CgroupHierarchy, type CgroupSupport } from "./cgroups.js";
import { SandboxCgroups, limitWrites, planHierarchies } from "./sandbox-cgroups.js";
import { randomSandboxId } from "./_fixtures.js";

const isRoot = process.getuid?.() === 0;
const hasV1 = existsSync("/sys/fs/cgroup/memory/memory.limit_in_bytes") && existsSync("/sys/fs/cgroup/pids/cgroup.procs");
const MiB = 1024 * 1024;

test("limitWrites: the files and values each controller needs on v1 and v2", () => {
  const r = { memoryMiB: 128, pids: 64, cpus: 0.5 };
  assert.deepEqual(limitWrites(2, "memory", r), [
    { file: "memory.max", value: String(128 * MiB), optional: false },
    { file: "memory.swap.max", value: "0", optional: true },
  ]);
  assert.deepEqual(limitWrites(1, "memory", r), [
    { file: "memory.limit_in_bytes", value: String(128 * MiB), optional: false },
    { file: "memory.memsw.limit_in_bytes", value: String(128 * MiB), optional: true },
  ]);
  assert.deepEqual(limitWrites(2, "pids", r), [{ file: "pids.max", value: "64", optional: false }]);
  assert.deepEqual(limitWrites(1, "pids", r), [{ file: "pids.max", value: "64", optional: false }]);
  assert.deepEqual(limitWrites(2, "cpu", r), [{ file: "cpu.max", value: "50000 100000", optional: false }]);
  assert.deepEqual(limitWrites(1, "cpu", r), [
    { file: "cpu.cfs_period_us", value: "100000", optional: false },
    { file: "cpu.cfs_quota_us", value: "50000", optional: false },
  ]);
  assert.deepEqual(limitWrites(2, "cpu", { cpus: 0.001 }), [{ file: "cpu.max", value: "1000 100000", optional: false }], "kernel minimum quota");
  assert.deepEqual(limitWrites(2, "cpu", { cpus: 3 }), [{ file: "cpu.max", value: "300000 100000", optional: false }]);
  for (const c of CGROUP_CONTROLLERS) assert.deepEqual(limitWrites(2, c, {}), [], `${c} without a limit`);
});

test("limitWrites: the memory limit adds the tmpfs caps to memoryMiB, with swap off, on v1 and v2", () => {
  const r = { memoryMiB: 128, pids: 64 };
  const total = String(128 * MiB + 40 * MiB);
  assert.deepEqual(limitWrites(2, "memory", r, 40 * MiB), [
    { file: "memory.max", value: total, optional: false },
    { file: "memory.swap.max", value: "0", optional: true },
  ]);
  assert.deepEqual(limitWrites(1, "memory", r, 40 * MiB), [
    { file: "memory.limit_in_bytes", value: total, optional: false },
    { file: "memory.memsw.limit_in_bytes", value: total, optional: true },
  ]);
  assert.deepEqual(limitWrites(2, "pids", r, 40 * MiB), [{ file: "pids.max", value: "64", optional: false }], "only memory changes");
  assert.deepEqual(limitWrites(2, "memory", {}, 40 * MiB), [], "no memory limit asked: none written");
});

function supportWith(hierarchy: CgroupHierarchy, unenforceable: readonly string[] = []): CgroupSupport {
  const controllers = Object.fromEntries(
    CGROUP_CONTROLLERS.map((c) => [
      c,
      unenforceable.includes(c) ? { enforceable: false, reason: `no ${c} here`, hint: `enable ${c}` } : { enforceable: true, hierarchy },
    ]),
  ) as unknown as CgroupSupport["controllers"];
  return { layout: "v2", controllers, hierarchies: [hierarchy], freezer: { available: true, hierarchy } };
}

test("planHierarchies: a limit the host cannot enforce is refused with the reason and a hint", () => {
  const h: CgroupHierarchy = { version: 2, parentDir: "/cg/mvm", controllers: ["pids", "cpu"] };
  const support = supportWith(h, ["memory"]);
  assert.throws(
    () => planHierarchies(support, { memoryMiB: 64 }),
    (err: unknown) =>
      err instanceof UnsupportedCapabilityError &&
      err.message === "Cannot enforce resources.memoryMiB = 64 on the namespace backend: no memory here" &&
      err.hint === "enable memory",
  );
  assert.deepEqual(planHierarchies(support, { pids: 10 }), [h]);
  assert.deepEqual(planHierarchies(support, {}), [h], "a sandbox without limits still gets a group to track it");
  assert.deepEqual(planHierarchies({ layout: "none", controllers: support.controllers, hierarchies: [], freezer: { available: false, reason: "none", hint: "none" } }, {}), []);
});

/**
 * cgroup v2 has no controllers on the test machines, so this checks only the v2 file-writing
 * logic against a fake directory tree; the v1 tests below use the real kernel.
 */
test("v2 file-writing logic against a fake directory tree: limits, OOM counter, kill file", async () => {
  const fake = await mkdtemp(join(tmpdir(), "mvm-fake-cg2-"));
  try {
    const parentDir = join(fake, "mvm");
    await mkdir(parentDir);
    const support = supportWith({ version: 2, parentDir, controllers: ["memory", "pids", "cpu"] });
    const id = randomSandboxId();
    const groups = await SandboxCgroups.create(support, id, { memoryMiB: 64, pids: 32, cpus: 1.5 });
    const dir = join(parentDir, id);
    assert.deepEqual(groups.dirs, [dir]);
    assert.deepEqual(groups.procsFiles, [join(dir, "cgroup.procs")]);
    assert.equal(await readFile(join(dir, "memory.max"), "utf8"), String(64 * MiB));
    assert.equal(await readFile(join(dir, "pids.max"), "utf8"), "32");
    assert.equal(await readFile(join(dir, "cpu.max"), "utf8"), "150000 100000");
    assert.equal(existsSync(join(dir, "memory.swap.max")), false, "optional file not created when the kernel lacks it");

    await writeFile(join(dir, "memory.events"), "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n");
    assert.equal(await groups.oomKills(), 1);

    await writeFile(join(dir, "cgroup.kill"), "");
    await writeFile(join(dir, "cgroup.events"), "populated 0\nfrozen 0\n");
    await groups.killAll(1_000);
    assert.equal(await readFile(join(dir, "cgroup.kill"), "utf8"), "1");

    await assert.rejects(SandboxCgroups.create(support, id, {}), /Cannot create the cgroups/, "a group name is never shared");

    const withTmpfs = await SandboxCgroups.create(support, randomSandboxId(), { memoryMiB: 64 }, 24 * MiB);
    assert.equal(await readFile(join(withTmpfs.dirs[0] ?? "", "memory.max"), "utf8"), String(88 * MiB), "memoryMiB plus the tmpfs caps");
  } finally {
    await rm(fake, { recursive: true, force: true });
  }
});

const v1Skip = (!isRoot || !hasV1) && "needs root and cgroup v1 controllers";
let support: CgroupSupport | undefined;
const parentName = `mvm-test-${process.pid}`;
before(async () => {
  if (!v1Skip) support = await detectCgroups({ parentName });
});
after(async () => {
  if (!v1Skip) for (const c of [...CGROUP_CONTROLLERS, "freezer"]) await rmdir(`/sys/fs/cgroup/${c}/${parentName}`).catch(() => undefined);
});

test("v1 for real: limits are written, members are killed, groups are removed", { skip: v1Skip }, async () => {
  assert.ok(support);
  const id = randomSandboxId();
  const groups = await SandboxCgroups.create(support, id, { memoryMiB: 96, pids: 20, cpus: 0.25 }, 32 * MiB);
  assert.deepEqual(
    groups.dirs.sort(),
    ["cpu", "freezer", "memory", "pids"].map((c) => `/sys/fs/cgroup/${c}/${parentName}/${id}`),
  );
  const read = (c: string, f: string): Promise<string> => readFile(`/sys/fs/cgroup/${c}/${parentName}/${id}/${f}`, "utf8").then((s) => s.trim());
  assert.equal(await read("memory", "memory.limit_in_bytes"), String(128 * MiB), "memoryMiB plus the tmpfs caps");
  if (existsSync(`/sys/fs/cgroup/memory/${parentName}/${id}/memory.memsw.limit_in_bytes`)) {
    assert.equal(await read("memory", "memory.memsw.limit_in_bytes"), String(128 * MiB));
  }
  assert.equal(await read("pids", "pids.max"), "20");
  assert.equal(await read("cpu", "cpu.cfs_quota_us"), "25000");
  assert.equal(await read("cpu", "cpu.cfs_period_us"), "100000");
  assert.equal(await groups.oomKills(), 0);

  // A shell joins the groups the way the prelude does, then starts children that inherit them.
  const procs = groups.procsFiles.map((f) => `echo $$ > ${f}`).join("; ");
  const shell = spawn("/bin/sh", ["-c", `${procs}; for i in 1 2 3 4; do sleep 60 & done; echo joined; wait`], { stdio: ["ignore", "pipe", "inherit"] });
  await once(shell.stdout, "data");
  const members = (await read("pids", "cgroup.procs")).split("\n").map(Number);
  assert.equal(members.length, 5);
  assert.ok(members.includes(shell.pid ?? 0));

  const exited = once(shell, "exit");
  await groups.killAll(5_000);
  const [, signal] = (await exited) as [number | null, string | null];
  assert.equal(signal, "SIGKILL");
  assert.equal(await read("pids", "cgroup.procs"), "");
  await groups.remove(5_000);
  for (const dir of groups.dirs) assert.equal(existsSync(dir), false, dir);
  await groups.remove(1_000); // idempotent
});

test("v1 for real: reopening groups by directory (for reaping) kills a frozen sandbox and removes its groups", { skip: v1Skip }, async () => {
  assert.ok(support);
  const created = await SandboxCgroups.create(support, randomSandboxId(), {});
  assert.equal(created.dirs.length, 2, "one tracking group when no limit is asked for, and the freezer group");
  const joins = created.procsFiles.map((f) => `echo $$ > ${f}`).join("; ");
  const shell = spawn("/bin/sh", ["-c", `${joins}; echo joined; exec sleep 60`], { stdio: ["ignore", "pipe", "inherit"] });
  await once(shell.stdout, "data");
  await created.freeze(5_000);
  const reopened = await SandboxCgroups.open(created.dirs);
  assert.deepEqual(reopened.groups.map((g) => g.version), [1, 1]);
  const exited = once(shell, "exit");
  await reopened.killAll(5_000);
  await exited;
  await reopened.remove(5_000);
  assert.equal(existsSync(created.dirs[0] ?? ""), false);
});

test("v2 freezer logic against a fake directory tree: freeze waits for frozen 1, thaw writes 0, a stuck freeze thaws and times out", async () => {
  const fake = await mkdtemp(join(tmpdir(), "mvm-fake-cg2-"));
  try {
    const parentDir = join(fake, "mvm");
    await mkdir(parentDir);
    const groups = await SandboxCgroups.create(supportWith({ version: 2, parentDir, controllers: ["pids"] }), randomSandboxId(), {});
    const dir = groups.dirs[0] ?? "";
    assert.deepEqual(groups.dirs, [dir], "the v2 group itself freezes: no extra group");
    await writeFile(join(dir, "cgroup.freeze"), "0\n");
    await writeFile(join(dir, "cgroup.events"), "populated 1\nfrozen 0\n");
    // The fake kernel reports the group frozen once cgroup.freeze says 1.
    const freezing = groups.freeze(5_000);
    while ((await readFile(join(dir, "cgroup.freeze"), "utf8")) !== "1") await delay(5);
    await writeFile(join(dir, "cgroup.events"), "populated 1\nfrozen 1\n");
    await freezing;
    await groups.thaw();
    assert.equal(await readFile(join(dir, "cgroup.freeze"), "utf8"), "0");

    await writeFile(join(dir, "cgroup.events"), "populated 1\nfrozen 0\n");
    await assert.rejects(groups.freeze(50), (err: unknown) => err instanceof TimeoutError && /not frozen within 50 ms/.test(err.message));
    assert.equal(await readFile(join(dir, "cgroup.freeze"), "utf8"), "0", "a freeze that does not complete is undone");

    // Killing a frozen group: cgroup.kill, then thawed.
    await writeFile(join(dir, "cgroup.freeze"), "1");
    await writeFile(join(dir, "cgroup.kill"), "");
    await writeFile(join(dir, "cgroup.events"), "populated 0\nfrozen 1\n");
    await groups.killAll(1_000);
    assert.equal(await readFile(join(dir, "cgroup.kill"), "utf8"), "1");
    assert.equal(await readFile(join(dir, "cgroup.freeze"), "utf8"), "0");
  } finally {
    await rm(fake, { recursive: true, force: true });
  }
});

test("a host without a freezer refuses to pause with UnsupportedCapabilityError, never a silent no-op", async () => {
  const fake = await mkdtemp(join(tmpdir(), "mvm-fake-cg2-"));
  try {
    const h: CgroupHierarchy = { version: 2, parentDir: fake, controllers: ["pids"] };
    const support: CgroupSupport = { ...supportWith(h), freezer: { available: false, reason: "no freezer here", hint: "mount one" } };
    const groups = await SandboxCgroups.create(support, randomSandboxId(), {});
    await assert.rejects(
      groups.freeze(1_000),
      (err: unknown) => err instanceof UnsupportedCapabilityError && /Cannot pause the sandbox on this host: no freezer here/.test(err.message) && err.hint === "mount one",
    );
  } finally {
    await rm(fake, { recursive: true, force: true });
  }
});

test("v1 for real: a frozen busy loop makes no progress until thawed, and SIGKILL ends it only through the thaw killAll does", { skip: v1Skip }, async () => {
  assert.ok(support);
  assert.ok(support.freezer.available && support.freezer.hierarchy.version === 1, "this host pauses through the v1 freezer");
  const groups = await SandboxCgroups.create(support, randomSandboxId(), { pids: 16 });
  const scratch = await mkdtemp(join(tmpdir(), "mvm-freeze-"));
  const counter = join(scratch, "n");
  try {
    const joins = groups.procsFiles.map((f) => `echo $$ > ${f}`).join("; ");
    const loop = `${joins}; echo joined; n=0; while :; do n=$((n+1)); echo $n > ${counter}.tmp; mv ${counter}.tmp ${counter}; done`;
    const shell = spawn("/bin/sh", ["-c", loop], { stdio: ["ignore", "pipe", "inherit"] });
    await once(shell.stdout, "data");
    const count = async (): Promise<number> => Number(await readFile(counter, "utf8").catch(() => "0"));
    while ((await count()) < 3) await delay(5);
    await groups.freeze(5_000);
    const frozenAt = await count();
    await delay(300);
    assert.equal(await count(), frozenAt, "no progress while frozen");
    await groups.thaw();
    while ((await count()) <= frozenAt) await delay(5);

    await groups.freeze(5_000);
    const exited = once(shell, "exit");
    await groups.killAll(5_000);
    const [, signal] = (await exited) as [number | null, string | null];
    assert.equal(signal, "SIGKILL");
    await groups.remove(5_000);
    for (const dir of groups.dirs) assert.equal(existsSync(dir), false, dir);
  } finally {
    // Whatever failed above, leave no frozen task behind (it would never die).
    for (const dir of groups.dirs) await writeFile(join(dir, "freezer.state"), "THAWED", { flag: "r+" }).catch(() => undefined);
    await groups.killAll(1_000).catch(() => undefined);
    await groups.remove(1_000).catch(() => undefined);
    await rm(scratch, { recursive: true, force: true });
  }
});
