/**
 * Releasing a namespace sandbox from its ReapRecord alone, after the engine that launched it
 * died. Nothing is killed on the strength of a pid alone: pids are checked against their
 * recorded start times, cgroup paths must name a sandbox group under a cgroup mount, and a
 * sandbox uid must lie in the sandbox range.
 */
import { readFile } from "node:fs/promises";
import { basename, normalize } from "node:path";
import { CleanupError, InvalidArgumentError, SandboxIdSchema } from "@mvm/protocol";
import { isSameLiveProcess, listProcessesWithId, sendSignal, waitForExit } from "../../_internal/proc.js";
import type { ReapRecord } from "../types.js";
import { parseCgroupMounts } from "./cgroups.js";
import { TEARDOWN_STEP_MS } from "./launched-sandbox.js";
import { SandboxCgroups } from "./sandbox-cgroups.js";
import { CleanupFailures } from "../_teardown.js";
import { isRelayDir, removeRelayDir } from "./relay-listener.js";
import { SANDBOX_UID_BASE, SANDBOX_UID_SPAN } from "./uid.js";

/** Keys of `ReapRecord.extra` the namespace backend writes. */
export const ReapExtra = {
  /** Host uid the sandbox ran as (root engines only). */
  hostUid: "hostUid",
  /** pid and start time of the sandbox's pid 1 (bubblewrap's child). */
  initPid: "initPid",
  initStartTime: "initStartTime",
  /** The directory of the egress relay's socket (see relay-listener.ts). */
  relayDir: "relayDir",
} as const;

async function checkCgroupDirs(dirs: readonly string[]): Promise<void> {
  const mounts = parseCgroupMounts(await readFile("/proc/self/mountinfo", "utf8"));
  for (const dir of dirs) {
    const underMount = mounts.some((m) => dir.startsWith(`${m.mountPoint}/`));
    if (!dir.startsWith("/") || normalize(dir) !== dir || !underMount || !SandboxIdSchema.safeParse(basename(dir)).success) {
      throw new InvalidArgumentError(`Invalid reap record: "${dir}" is not a sandbox cgroup`);
    }
  }
}

/** The record's relay directory, when it names one; only a directory RelayListener could have made. */
function relayDir(record: ReapRecord): string | undefined {
  const dir = record.extra[ReapExtra.relayDir];
  if (dir === undefined) return undefined;
  if (!isRelayDir(dir)) throw new InvalidArgumentError(`Invalid reap record: "${dir}" is not a relay directory`);
  return dir;
}

function sandboxUid(record: ReapRecord): number | undefined {
  const raw = record.extra[ReapExtra.hostUid];
  if (raw === undefined) return undefined;
  const uid = Number(raw);
  if (!Number.isInteger(uid) || uid < SANDBOX_UID_BASE || uid >= SANDBOX_UID_BASE + SANDBOX_UID_SPAN) {
    throw new InvalidArgumentError(`Invalid reap record: host uid "${raw}" is not a sandbox uid`);
  }
  return uid;
}

/** Kills whatever is left of the sandbox and removes its cgroups. Idempotent. */
export async function reapNamespaceSandbox(record: ReapRecord): Promise<void> {
  if (record.backend !== "namespace") {
    throw new InvalidArgumentError(`Invalid reap record: backend "${record.backend}" is not "namespace"`);
  }
  await checkCgroupDirs(record.cgroups);
  const uid = sandboxUid(record);
  const relay = relayDir(record);
  const cgroups = await SandboxCgroups.open(record.cgroups);
  const initPid = Number(record.extra[ReapExtra.initPid] ?? 0);
  const initStart = record.extra[ReapExtra.initStartTime] ?? "";

  const failures = new CleanupFailures();

  // pid 1 of the sandbox first: the kernel then kills and reaps the rest of its pid namespace.
  if (initPid > 0 && (await isSameLiveProcess(initPid, initStart))) {
    sendSignal(initPid, "SIGKILL");
    // A paused sandbox's pid 1 dies of the pending SIGKILL only once thawed (v1 freezer).
    await cgroups.thaw().catch(() => undefined);
    await waitForExit(initPid, initStart, TEARDOWN_STEP_MS);
  }
  await failures.attempt(() => cgroups.killAll(TEARDOWN_STEP_MS));
  if (await isSameLiveProcess(record.pid, record.pidStartTime)) {
    sendSignal(-record.pid, "SIGKILL"); // the prelude leads its own process group
    sendSignal(record.pid, "SIGKILL");
  }
  if (uid !== undefined && process.geteuid?.() === 0) {
    for (const pid of await listProcessesWithId(uid)) sendSignal(pid, "SIGKILL");
  }
  await failures.attempt(async () => {
    const gone = await waitForExit(record.pid, record.pidStartTime, TEARDOWN_STEP_MS);
    const initGone = initPid <= 0 || (await waitForExit(initPid, initStart, TEARDOWN_STEP_MS));
    if (!gone || !initGone) throw new CleanupError(`Cannot reap sandbox process ${gone ? initPid : record.pid}: it did not exit`);
  });
  await failures.attempt(() => cgroups.killAll(TEARDOWN_STEP_MS));
  await failures.attempt(() => cgroups.remove(TEARDOWN_STEP_MS));
  if (relay !== undefined) await failures.attempt(() => removeRelayDir(relay));
  failures.throwIfAny("Cannot reap sandbox");
}
