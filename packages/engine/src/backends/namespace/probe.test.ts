import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CgroupSupport } from "./cgroups.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { findExecutable, parseBwrapVersion, probeNamespaceHost, versionAtLeast, type ProbeInputs } from "./probe.js";

const isRoot = process.getuid?.() === 0;
let dir = "";
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-probe-test-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("parseBwrapVersion and versionAtLeast", () => {
  assert.deepEqual(parseBwrapVersion("bubblewrap 0.8.0\n"), [0, 8, 0]);
  assert.deepEqual(parseBwrapVersion("bubblewrap 0.11.1"), [0, 11, 1]);
  assert.deepEqual(parseBwrapVersion("bubblewrap 1.2"), [1, 2, 0]);
  assert.equal(parseBwrapVersion("bwrap: unknown option"), undefined);
  assert.equal(versionAtLeast([0, 8, 0], [0, 8, 0]), true);
  assert.equal(versionAtLeast([0, 11, 1], [0, 8, 0]), true);
  assert.equal(versionAtLeast([1, 0, 0], [0, 8, 0]), true);
  assert.equal(versionAtLeast([0, 7, 9], [0, 8, 0]), false);
});

test("findExecutable searches PATH and the system directories, or checks an explicit path", async () => {
  assert.match((await findExecutable("sh")) ?? "", /\/sh$/);
  assert.equal(await findExecutable("mvm-no-such-tool-here"), undefined);
  const notExecutable = join(dir, "plain");
  await writeFile(notExecutable, "");
  assert.equal(await findExecutable("plain", notExecutable), undefined);
});

const fullCgroups: CgroupSupport = {
  layout: "v2",
  controllers: {
    memory: { enforceable: true, hierarchy: { version: 2, parentDir: "/cg/mvm", controllers: ["memory", "pids", "cpu"] } },
    pids: { enforceable: true, hierarchy: { version: 2, parentDir: "/cg/mvm", controllers: ["memory", "pids", "cpu"] } },
    cpu: { enforceable: false, reason: "cpu is not delegated", hint: "delegate cpu" },
  },
  hierarchies: [{ version: 2, parentDir: "/cg/mvm", controllers: ["memory", "pids"] }],
  freezer: { available: true, hierarchy: { version: 2, parentDir: "/cg/mvm", controllers: ["memory", "pids"] } },
};

async function fakeBwrap(version: string): Promise<string> {
  const path = join(dir, `bwrap-${version}`);
  await writeFile(path, `#!/bin/sh\necho "bubblewrap ${version}"\n`);
  await chmod(path, 0o755);
  return path;
}

function inputs(overrides: Partial<ProbeInputs>): ProbeInputs {
  return {
    isRoot: false,
    bwrapPath: undefined,
    setprivPath: undefined,
    cgroups: fullCgroups,
    trySandbox: async () => ({ code: 0, output: "" }),
    ...overrides,
  };
}

test("probe: a missing or too old bubblewrap makes the backend unusable, with a hint", async () => {
  const missing = await probeNamespaceHost(inputs({}));
  assert.equal(missing.usable, false);
  assert.equal(missing.tier, "container");
  assert.match(missing.checks.find((c) => c.name === "bwrap")?.hint ?? "", /install bubblewrap 0\.8/);

  const old = await probeNamespaceHost(inputs({ bwrapPath: await fakeBwrap("0.7.0") }));
  assert.equal(old.usable, false);
  const check = old.checks.find((c) => c.name === "bwrap");
  assert.equal(check?.ok, false);
  assert.match(check?.detail ?? "", /bubblewrap 0\.7\.0/);
  assert.match(check?.hint ?? "", /--disable-userns/);
});

test("probe: a failing trial sandbox, or a missing setpriv as root, makes the backend unusable", async () => {
  const bwrapPath = await fakeBwrap("0.9.0");
  const failing = await probeNamespaceHost(inputs({ bwrapPath, trySandbox: async () => ({ code: 1, output: "bwrap: setting up uid map: Permission denied" }) }));
  assert.equal(failing.usable, false);
  const userns = failing.checks.find((c) => c.name === "userns");
  assert.equal(userns?.ok, false);
  assert.match(userns?.detail ?? "", /uid map: Permission denied/);
  assert.ok(userns?.hint);

  const noSetpriv = await probeNamespaceHost(inputs({ bwrapPath, isRoot: true }));
  assert.equal(noSetpriv.usable, false);
  assert.match(noSetpriv.checks.find((c) => c.name === "setpriv")?.hint ?? "", /util-linux/);
});

test("probe: limits the host cannot enforce are reported but do not make the backend unusable", async () => {
  const result = await probeNamespaceHost(inputs({ bwrapPath: await fakeBwrap("0.9.0") }));
  assert.equal(result.usable, true);
  assert.deepEqual(result.enforceable, { memory: true, pids: true, cpu: false });
  const cgroup = result.checks.find((c) => c.name === "cgroup");
  assert.equal(cgroup?.ok, false);
  assert.match(cgroup?.detail ?? "", /cpu: not enforceable \(cpu is not delegated\)/);
  assert.equal(cgroup?.hint, "delegate cpu");
});

test("probe on this host: bubblewrap, user namespaces, seccomp and cgroups", { skip: !existsSync("/usr/bin/bwrap") && "bubblewrap is not installed" }, async () => {
  const result = await new NamespaceBackend().probe();
  const byName = new Map(result.checks.map((c) => [c.name, c]));
  assert.equal(result.backend, "namespace");
  assert.equal(result.tier, "container");
  assert.equal(result.usable, true, JSON.stringify(result.checks));
  assert.match(byName.get("bwrap")?.detail ?? "", /^bubblewrap \d+\.\d+\.\d+ at \//);
  assert.equal(byName.get("userns")?.ok, true);
  assert.equal(byName.get("seccomp")?.ok, true);
  if (isRoot) assert.equal(byName.get("setpriv")?.ok, true);
  assert.match(byName.get("cgroup")?.detail ?? "", /^cgroup (v1|v2|hybrid|none)/);
  assert.match(byName.get("snapshot")?.detail ?? "", /memory snapshots are not available on this tier/);
});

test("probe: the snapshot check says what works (filesystem capture needs the freezer) and that memory snapshots do not", async () => {
  const bwrapPath = await fakeBwrap("0.9.0");
  const tools = { tar: "/usr/bin/tar", tarLoader: "/lib64/ld-linux-x86-64.so.2", tarLibraries: [], busybox: "/bin/busybox", unshare: undefined };
  const ok = await probeNamespaceHost(inputs({ bwrapPath, snapshotTools: async () => tools }));
  const check = ok.checks.find((c) => c.name === "snapshot");
  assert.equal(check?.ok, true);
  assert.match(check?.detail ?? "", /^filesystem snapshots of \/work and \/tmp \(GNU tar at \/usr\/bin\/tar, busybox at \/bin\/busybox\); memory snapshots are not available/);

  const noFreezer = await probeNamespaceHost(
    inputs({ bwrapPath, snapshotTools: async () => tools, cgroups: { ...fullCgroups, freezer: { available: false, reason: "no freezer here", hint: "delegate one" } } }),
  );
  const partial = noFreezer.checks.find((c) => c.name === "snapshot");
  assert.equal(partial?.ok, false);
  assert.match(partial?.detail ?? "", /restore from filesystem snapshots works .*capture needs the freezer: no freezer here/);
  assert.equal(partial?.hint, "delegate one");
  assert.equal(noFreezer.usable, true, "snapshots are optional");

  const missing = await probeNamespaceHost(
    inputs({ bwrapPath, snapshotTools: async () => Promise.reject(Object.assign(new Error("tar was not found"), { hint: "install tar" })) }),
  );
  const none = missing.checks.find((c) => c.name === "snapshot");
  assert.equal(none?.ok, false);
  assert.match(none?.detail ?? "", /filesystem snapshots are not available: tar was not found/);
  assert.equal(none?.hint, "install tar");
  assert.equal(missing.usable, true);
});
