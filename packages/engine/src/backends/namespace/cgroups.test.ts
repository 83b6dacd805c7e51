import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, rmdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CGROUP_CONTROLLERS, detectCgroups, parseCgroupMounts, parseSelfCgroup } from "./cgroups.js";

const isRoot = process.getuid?.() === 0;
const hasV1 = existsSync("/sys/fs/cgroup/memory/memory.limit_in_bytes") && existsSync("/sys/fs/cgroup/pids/cgroup.procs");

const MOUNTINFO_HYBRID = [
  "30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755",
  "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate",
  "33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory",
  "34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct",
  "35 30 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd",
  "36 30 0:32 /sub /mnt/odd\\040dir rw - cgroup cgroup rw,pids",
  "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
].join("\n");

test("parseCgroupMounts finds v1 hierarchies with their controllers and the v2 mount", () => {
  assert.deepEqual(parseCgroupMounts(MOUNTINFO_HYBRID), [
    { version: 2, mountPoint: "/sys/fs/cgroup/unified", root: "/", controllers: [] },
    { version: 1, mountPoint: "/sys/fs/cgroup/memory", root: "/", controllers: ["memory"] },
    { version: 1, mountPoint: "/sys/fs/cgroup/cpu,cpuacct", root: "/", controllers: ["cpu", "cpuacct"] },
    { version: 1, mountPoint: "/sys/fs/cgroup/systemd", root: "/", controllers: [] },
    { version: 1, mountPoint: "/mnt/odd dir", root: "/sub", controllers: ["pids"] },
  ]);
});

test("parseSelfCgroup maps each controller (and the v2 entry) to a path", () => {
  const self = parseSelfCgroup("4:memory:/a/b\n1:cpu,cpuacct:/c\n0::/user.slice/x.scope\n");
  assert.equal(self.get("memory"), "/a/b");
  assert.equal(self.get("cpu"), "/c");
  assert.equal(self.get("cpuacct"), "/c");
  assert.equal(self.get(""), "/user.slice/x.scope");
});

test("detectCgroups on this host (cgroup v1, as root) finds memory, pids and cpu under a parent group", { skip: (!isRoot || !hasV1) && "needs root and cgroup v1 controllers" }, async () => {
  const parentName = `mvm-test-${process.pid}`;
  try {
    const support = await detectCgroups({ parentName });
    for (const controller of CGROUP_CONTROLLERS) {
      const status = support.controllers[controller];
      assert.ok(status.enforceable, `${controller}: ${status.enforceable ? "" : status.reason}`);
      assert.equal(status.hierarchy.version, 1);
      assert.equal(status.hierarchy.parentDir, `/sys/fs/cgroup/${controller}/${parentName}`);
      assert.ok(existsSync(status.hierarchy.parentDir));
    }
    assert.deepEqual(support.hierarchies[0]?.controllers, ["pids"], "pids is the tracking hierarchy");
    assert.deepEqual(
      support.freezer,
      { available: true, hierarchy: { version: 1, parentDir: `/sys/fs/cgroup/freezer/${parentName}`, controllers: [] } },
      "pause uses the v1 freezer hierarchy (v2 has no controllers here)",
    );
  } finally {
    for (const c of [...CGROUP_CONTROLLERS, "freezer"]) await rmdir(`/sys/fs/cgroup/${c}/${parentName}`).catch(() => undefined);
  }
});

test("detectCgroups as another user reports v1 controllers as not enforceable without a delegated group", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-cg-"));
  try {
    await mkdir(join(dir, "memory", "user"), { recursive: true });
    const mountinfo = `33 30 0:29 / ${dir}/memory rw - cgroup cgroup rw,memory`;
    const support = await detectCgroups({ mountinfo, selfCgroup: "4:memory:/nope\n", isRoot: false });
    assert.equal(support.layout, "v1");
    const memory = support.controllers.memory;
    assert.equal(memory.enforceable, false);
    assert.match(memory.enforceable ? "" : memory.reason, /not writable/);
    assert.match(memory.enforceable ? "" : memory.hint, /root|delegat/);
    assert.equal(support.controllers.pids.enforceable, false);
    assert.deepEqual(support.hierarchies, []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * cgroup v2 cannot be exercised for real on hosts whose v2 hierarchy has no controllers (like the
 * test machines), so these two tests check only the v2 detection logic against a fake directory
 * tree whose control files already hold what the kernel would show.
 */
test("v2 detection logic against a fake directory tree: root uses <mount>/mvm", async () => {
  const fake = await mkdtemp(join(tmpdir(), "mvm-fake-cg2-"));
  try {
    await writeFile(join(fake, "cgroup.controllers"), "cpuset cpu io memory pids\n");
    await writeFile(join(fake, "cgroup.subtree_control"), "cpu memory pids\n");
    await mkdir(join(fake, "mvm"));
    await writeFile(join(fake, "mvm", "cgroup.subtree_control"), "cpu memory pids\n");
    const mountinfo = `31 24 0:27 / ${fake} rw - cgroup2 cgroup2 rw`;
    const support = await detectCgroups({ mountinfo, selfCgroup: "0::/\n", isRoot: true });
    assert.equal(support.layout, "v2");
    for (const controller of CGROUP_CONTROLLERS) {
      const status = support.controllers[controller];
      assert.ok(status.enforceable, controller);
      assert.deepEqual(status.hierarchy, { version: 2, parentDir: join(fake, "mvm"), controllers: ["memory", "pids", "cpu"] });
    }
    assert.equal(support.hierarchies.length, 1);
    assert.equal(support.freezer.available, false, "no cgroup.freeze in the group: a kernel before 5.2");
    assert.match(support.freezer.available ? "" : support.freezer.reason, /cgroup\.freeze" is missing/);
    await writeFile(join(fake, "mvm", "cgroup.freeze"), "0\n");
    const withFreeze = await detectCgroups({ mountinfo, selfCgroup: "0::/\n", isRoot: true });
    assert.deepEqual(withFreeze.freezer, { available: true, hierarchy: withFreeze.hierarchies[0] }, "pause freezes the v2 group itself");
  } finally {
    await rm(fake, { recursive: true, force: true });
  }
});

test("v2 detection logic against a fake directory tree: another user falls back to the parent of its own group", async () => {
  const fake = await mkdtemp(join(tmpdir(), "mvm-fake-cg2-"));
  try {
    const delegated = join(fake, "user.slice", "app");
    await mkdir(join(delegated, "engine"), { recursive: true });
    await writeFile(join(fake, "cgroup.controllers"), "memory pids\n");
    for (const dir of [delegated, join(delegated, "engine")]) {
      await writeFile(join(dir, "cgroup.procs"), "");
      await writeFile(join(dir, "cgroup.controllers"), "memory pids\n");
    }
    await writeFile(join(delegated, "cgroup.subtree_control"), "memory pids\n");
    // The engine's own group holds the engine: the kernel refuses to enable controllers there,
    // which the fake file shows by not listing them after the write.
    await writeFile(join(delegated, "engine", "cgroup.subtree_control"), "");
    const mountinfo = `31 24 0:27 / ${fake} rw - cgroup2 cgroup2 rw`;
    const support = await detectCgroups({ mountinfo, selfCgroup: "0::/user.slice/app/engine\n", isRoot: false });
    assert.deepEqual(support.hierarchies, [{ version: 2, parentDir: delegated, controllers: ["memory", "pids"] }]);
    assert.equal(support.controllers.cpu.enforceable, false);
  } finally {
    await rm(fake, { recursive: true, force: true });
  }
});

test("a host with no cgroup mounts enforces nothing", async () => {
  const support = await detectCgroups({ mountinfo: "22 1 8:1 / / rw - ext4 /dev/sda1 rw", selfCgroup: "", isRoot: true });
  assert.equal(support.layout, "none");
  assert.deepEqual(support.hierarchies, []);
  for (const c of CGROUP_CONTROLLERS) assert.equal(support.controllers[c].enforceable, false);
  assert.equal(support.freezer.available, false, "and cannot pause");
});
