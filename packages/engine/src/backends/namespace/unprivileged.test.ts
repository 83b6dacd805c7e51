/**
 * The namespace backend used by an ordinary user: the test (root) starts a launcher process
 * under an unprivileged uid, with a state directory that uid owns, once in a cgroup delegated to
 * it (pids only) and once without any delegation.
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
import { buildBusyboxRootfs, buildStandInRuntime, makeTestRoot, removeTestRoot } from "./_fixtures.js";

const isRoot = process.getuid?.() === 0;
const hasPidsV1 = existsSync("/sys/fs/cgroup/pids/cgroup.procs");
const skip =
  (!existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")) ? "needs bubblewrap and busybox-static" : !isRoot ? "needs root to start a process as another uid" : false;
const TIMEOUT = { timeout: 120_000 };
const LAUNCHER_SOURCE = new URL("./_launcher.js", import.meta.url).pathname;
/** The launcher bundled into the (world-readable) test root: the checkout may not be readable by USER. */
let LAUNCHER = "";
const USER = 0x6f30_0000 + (process.pid % 1000);
const DELEGATED = `/sys/fs/cgroup/pids/mvm-delegated-${process.pid}`;

let root = "";
let input: { root: string; rootfsDir: string; agentDir: string };

before(async () => {
  if (skip) return;
  root = await makeTestRoot();
  LAUNCHER = join(root, "launcher.mjs");
  await build({
    entryPoints: [LAUNCHER_SOURCE],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    outfile: LAUNCHER,
    logLevel: "error",
  });
  await chmod(LAUNCHER, 0o644);
  await mkdir(join(root, "rootfs"), { mode: 0o755 });
  input = { root, rootfsDir: await buildBusyboxRootfs(join(root, "rootfs")), agentDir: (await buildStandInRuntime(root)).dir };
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
  usable: boolean;
  enforceable: { memory: boolean; pids: boolean; cpu: boolean };
  unsupported: string | undefined;
  hello: { uid: number };
  id: string;
  status: string;
  /** /proc/1/cmdline, a newline, /proc/1/environ (NULs as spaces), read inside the sandbox. */
  pid1: string;
  hostUids: number[];
  cgroups: string[];
  pidsMax: string | undefined;
  extra: Record<string, string>;
  leftovers: { prelude: boolean; init: boolean };
}

/** Runs the launcher's scenario as USER, first joining `cgroupProcs` when given. */
async function runScenario(pids: number | undefined, cgroupProcs?: string): Promise<Summary> {
  const inputPath = join(root, `scenario-${pids ?? "none"}.json`);
  await writeFile(inputPath, JSON.stringify({ ...input, ...(pids !== undefined ? { pids } : {}) }), { mode: 0o644 });
  const join_ = cgroupProcs !== undefined ? `echo $$ > ${cgroupProcs} && ` : "";
  const child = spawn(
    "/bin/sh",
    ["-c", `${join_}exec /usr/bin/setpriv --reuid=${USER} --regid=${USER} --clear-groups "$@"`, "run", process.execPath, LAUNCHER, "scenario", inputPath],
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

/** Live (non-zombie) processes of USER. */
async function livingProcessesOfUser(): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of await listProcessesWithId(USER)) {
    const stat = await readProcStat(pid);
    if (stat !== undefined && stat.state !== "Z") pids.push(pid);
  }
  return pids;
}

function checkCommon(summary: Summary): void {
  assert.equal(summary.uid, USER);
  assert.equal(summary.usable, true);
  assert.equal(summary.enforceable.memory, false);
  assert.equal(summary.unsupported, "UNSUPPORTED_CAPABILITY", "a memory limit the user cannot enforce is refused");
  assert.equal(summary.hello.uid, 1000);
  assert.equal(summary.id, "1000\n1000\n");
  assert.equal(summary.status.replace(/\t/g, " "), "CapEff: 0000000000000000\nNoNewPrivs: 1\nSeccomp: 2\n");
  assert.deepEqual(summary.hostUids, [USER, USER], "bubblewrap and the sandbox run as the calling user");
  assert.match(summary.pid1, /^\/usr\/bin\/bwrap --args 5 -- /, "bubblewrap's options come through a descriptor");
  assert.ok(!summary.pid1.includes(root), `a host path is visible in the sandbox's pid 1: ${summary.pid1}`);
  assert.equal(summary.extra["hostUid"], undefined);
  assert.deepEqual(summary.leftovers, { prelude: false, init: false });
}

test("as an ordinary user without a delegated cgroup: sandboxes run, limits are refused, nothing is left", { skip, ...TIMEOUT }, async () => {
  const summary = await runScenario(undefined);
  checkCommon(summary);
  assert.equal(summary.enforceable.pids, false);
  assert.deepEqual(summary.cgroups, []);
  assert.deepEqual(await livingProcessesOfUser(), []);
});

test("as an ordinary user in a delegated v1 pids cgroup: the pids limit is enforced there", { skip: skip || (!hasPidsV1 && "no cgroup v1 pids hierarchy"), ...TIMEOUT }, async () => {
  await mkdir(DELEGATED);
  for (const name of ["", "cgroup.procs", "tasks"]) await chown(join(DELEGATED, name), USER, USER);
  const summary = await runScenario(64, join(DELEGATED, "cgroup.procs"));
  checkCommon(summary);
  assert.equal(summary.enforceable.pids, true);
  assert.equal(summary.cgroups.length, 1);
  assert.match(summary.cgroups[0] ?? "", new RegExp(`^${DELEGATED}/sbx_[a-z2-7]{20}$`));
  assert.equal(summary.pidsMax, "64");
  assert.equal(existsSync(summary.cgroups[0] ?? ""), false, "the group was removed");
  assert.deepEqual(await livingProcessesOfUser(), []);
});
