/**
 * Filesystem snapshots with an engine that is not root: the test (root) runs the launcher's
 * snapshot scenario under an unprivileged uid, once without any delegated cgroup (capture is
 * refused: no freezer; restore still works) and once in a delegated cgroup v1 freezer group
 * (capture works, mode-000 files included, through a user namespace of the capture's own).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { chmod, chown, mkdir, readdir, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { listProcessesWithId, readProcStat } from "../../_internal/proc.js";
import { tarArchive } from "./_tar.js";
import { buildBusyboxRootfs, buildStandInRuntime, makeTestRoot, removeTestRoot } from "./_fixtures.js";

const isRoot = process.getuid?.() === 0;
const hasFreezerV1 = existsSync("/sys/fs/cgroup/freezer/cgroup.procs");
const skip =
  (!existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")) ? "needs bubblewrap and busybox-static" : !isRoot ? "needs root to start a process as another uid" : false;
const TIMEOUT = { timeout: 180_000 };
const LAUNCHER_SOURCE = new URL("./_launcher.js", import.meta.url).pathname;
const USER = 0x6f40_0000 + (process.pid % 1000);
const DELEGATED = `/sys/fs/cgroup/freezer/mvm-snap-delegated-${process.pid}`;

let root = "";
let launcher = "";
let input: { root: string; rootfsDir: string; agentDir: string; archive: string };

before(async () => {
  if (skip) return;
  root = await makeTestRoot("mvm-snap-user-");
  launcher = join(root, "launcher.mjs");
  await build({ entryPoints: [LAUNCHER_SOURCE], bundle: true, platform: "node", format: "esm", target: "node20", outfile: launcher, logLevel: "error" });
  await chmod(launcher, 0o644);
  await mkdir(join(root, "rootfs"), { mode: 0o755 });
  const archive = join(root, "given.tar");
  await writeFile(archive, tarArchive([{ name: "from-archive", type: "0", data: Buffer.from("given\n") }]), { mode: 0o400 });
  await chown(archive, USER, USER);
  input = { root, rootfsDir: await buildBusyboxRootfs(join(root, "rootfs")), agentDir: (await buildStandInRuntime(root)).dir, archive };
  await mkdir(join(root, "state"), { mode: 0o700 });
  await chown(join(root, "state"), USER, USER);
});
after(async () => {
  if (root !== "") await removeTestRoot(root);
  for (const name of await readdir(DELEGATED).catch(() => [])) {
    if (name.startsWith("sbx_")) await rmdir(join(DELEGATED, name)).catch(() => undefined);
  }
  await rmdir(DELEGATED).catch(() => undefined);
});

interface Summary {
  uid: number;
  refused?: { code: string; message: string };
  captured: boolean;
  stillRuns: string;
  restored: string;
}

async function runSnapshotScenario(name: string, cgroupProcs?: string): Promise<Summary> {
  const inputPath = join(root, `snapshot-${name}.json`);
  await writeFile(inputPath, JSON.stringify(input), { mode: 0o644 });
  const joinGroup = cgroupProcs !== undefined ? `echo $$ > ${cgroupProcs} && ` : "";
  const child = spawn(
    "/bin/sh",
    ["-c", `${joinGroup}exec /usr/bin/setpriv --reuid=${USER} --regid=${USER} --clear-groups "$@"`, "run", process.execPath, launcher, "snapshot", inputPath],
    { stdio: ["ignore", "pipe", "pipe"], cwd: "/" },
  );
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
  child.stderr.setEncoding("utf8").on("data", (s: string) => (err += s));
  const [code] = (await once(child, "close")) as [number | null];
  assert.equal(code, 0, err);
  return JSON.parse(out) as Summary;
}

async function livingProcessesOfUser(): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of await listProcessesWithId(USER)) {
    const stat = await readProcStat(pid);
    if (stat !== undefined && stat.state !== "Z") pids.push(pid);
  }
  return pids;
}

test("as an ordinary user without a freezer: capture is refused saying why, restore still works", { skip, ...TIMEOUT }, async () => {
  const summary = await runSnapshotScenario("plain");
  assert.equal(summary.uid, USER);
  assert.equal(summary.refused?.code, "UNSUPPORTED_CAPABILITY");
  assert.match(summary.refused?.message ?? "", /a consistent capture needs the cgroup freezer/);
  assert.equal(summary.captured, false);
  assert.equal(summary.stillRuns, "alive");
  assert.equal(summary.restored, "from-archive\n", "the given archive was restored by the unprivileged engine");
  assert.deepEqual(await livingProcessesOfUser(), []);
});

test("as an ordinary user in a delegated v1 freezer group: capture and restore work, mode-000 files included", { skip: skip || (!hasFreezerV1 && "no cgroup v1 freezer hierarchy"), ...TIMEOUT }, async () => {
  await mkdir(DELEGATED);
  for (const name of ["", "cgroup.procs", "tasks"]) await chown(join(DELEGATED, name), USER, USER);
  const summary = await runSnapshotScenario("freezer", join(DELEGATED, "cgroup.procs"));
  assert.equal(summary.refused, undefined, JSON.stringify(summary.refused));
  assert.equal(summary.captured, true);
  assert.equal(summary.stillRuns, "alive");
  assert.equal(summary.restored, "secret\nin-tmp\nd\n");
  assert.deepEqual(await livingProcessesOfUser(), []);
});
