/**
 * The cgroups of one sandbox: one group per hierarchy used, named by the sandbox id, with the
 * requested limits written before any sandbox process joins. Also counts OOM kills, freezes and
 * thaws the sandbox (pause), kills every member, and removes the groups.
 */
import { readFileSync } from "node:fs";
import { access, mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { CleanupError, InternalError, TimeoutError, UnsupportedCapabilityError, type Resources } from "@mvm/protocol";
import { pollBackoffMs, sendSignal } from "../../_internal/proc.js";
import type { CgroupController, CgroupHierarchy, CgroupSupport, FreezerStatus } from "./cgroups.js";

/** One group of a sandbox. */
export interface CgroupGroup {
  readonly dir: string;
  readonly version: 1 | 2;
  /** Controllers whose files this group has (empty when unknown, e.g. when reopened for reaping). */
  readonly controllers: readonly CgroupController[];
}

/** One file write that applies a limit. */
export interface LimitWrite {
  readonly file: string;
  readonly value: string;
  /** Skip the write when the kernel does not offer the file (e.g. swap accounting is off). */
  readonly optional: boolean;
}

/** The CFS period used for cpu quotas, in microseconds. */
export const CPU_PERIOD_US = 100_000;
/** The smallest quota the kernel accepts, in microseconds. */
const CPU_MIN_QUOTA_US = 1_000;

const LIMIT_FIELD: Record<CgroupController, keyof Resources> = { memory: "memoryMiB", pids: "pids", cpu: "cpus" };

/**
 * The file writes that enforce `resources` for `controller` in a group of cgroup `version`.
 * `tmpfsBytes` is the sum of the size caps of the sandbox's tmpfs mounts: their pages are charged
 * to the group's memory, so the memory limit is `memoryMiB` plus that sum. A full tmpfs is then
 * ENOSPC for its writer, never an OOM kill, and the processes keep `memoryMiB` whatever the
 * tmpfs mounts hold.
 */
export function limitWrites(version: 1 | 2, controller: CgroupController, resources: Resources, tmpfsBytes = 0): LimitWrite[] {
  const w = (file: string, value: number | string, optional = false): LimitWrite => ({ file, value: String(value), optional });
  switch (controller) {
    case "memory": {
      if (resources.memoryMiB === undefined) return [];
      const bytes = resources.memoryMiB * 1024 * 1024 + tmpfsBytes;
      return version === 2
        ? [w("memory.max", bytes), w("memory.swap.max", 0, true)]
        : [w("memory.limit_in_bytes", bytes), w("memory.memsw.limit_in_bytes", bytes, true)];
    }
    case "pids":
      return resources.pids === undefined ? [] : [w("pids.max", resources.pids)];
    case "cpu": {
      if (resources.cpus === undefined) return [];
      const quota = Math.max(CPU_MIN_QUOTA_US, Math.round(resources.cpus * CPU_PERIOD_US));
      return version === 2
        ? [w("cpu.max", `${quota} ${CPU_PERIOD_US}`)]
        : [w("cpu.cfs_period_us", CPU_PERIOD_US), w("cpu.cfs_quota_us", quota)];
    }
  }
}

/**
 * The hierarchies a sandbox needs: one per requested limit, plus the first usable hierarchy so
 * every sandbox has a group to find its processes by. Throws UnsupportedCapabilityError for a
 * requested limit the host cannot enforce.
 */
export function planHierarchies(support: CgroupSupport, resources: Resources): CgroupHierarchy[] {
  const needed = new Set<CgroupHierarchy>();
  for (const controller of ["memory", "pids", "cpu"] as const) {
    const value = resources[LIMIT_FIELD[controller]];
    if (value === undefined) continue;
    const status = support.controllers[controller];
    if (!status.enforceable) {
      throw new UnsupportedCapabilityError(
        `Cannot enforce resources.${LIMIT_FIELD[controller]} = ${value} on the namespace backend: ${status.reason}`,
        { hint: status.hint },
      );
    }
    needed.add(status.hierarchy);
  }
  const first = support.hierarchies[0];
  if (needed.size === 0 && first !== undefined) needed.add(first);
  return [...needed];
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** The file that freezes a group, and what it reads when frozen, thawed or on the way. */
function freezerFile(group: CgroupGroup): { file: string; frozen: string; thawed: string } {
  return group.version === 2
    ? { file: join(group.dir, "cgroup.freeze"), frozen: "1", thawed: "0" }
    : { file: join(group.dir, "freezer.state"), frozen: "FROZEN", thawed: "THAWED" };
}

/** Whether a group's tasks are all frozen: v2 `frozen 1` in cgroup.events, v1 freezer.state `FROZEN`. */
async function isFrozen(group: CgroupGroup): Promise<boolean> {
  if (group.version === 2) return /^frozen 1$/m.test(await readFile(join(group.dir, "cgroup.events"), "utf8"));
  return (await readFile(join(group.dir, "freezer.state"), "utf8")).trim() === "FROZEN";
}

export class SandboxCgroups {
  private lastOomKills = 0;

  /**
   * `freezer`: the group that freezes the sandbox, or why none can (pause is then refused with
   * UnsupportedCapabilityError).
   */
  private constructor(
    readonly groups: readonly CgroupGroup[],
    private readonly freezer: CgroupGroup | { readonly reason: string; readonly hint: string } = {
      reason: "the sandbox has no freezer group",
      hint: "check `mvmctl doctor`",
    },
  ) {}

  /**
   * Creates the sandbox's groups and writes its limits; removes what it made if anything fails.
   * `tmpfsBytes`: the summed size caps of the sandbox's tmpfs mounts, added to the memory limit
   * (see limitWrites).
   */
  static async create(support: CgroupSupport, sandboxId: string, resources: Resources, tmpfsBytes = 0): Promise<SandboxCgroups> {
    const plan = planHierarchies(support, resources);
    const freezerStatus: FreezerStatus = support.freezer;
    if (freezerStatus.available && !plan.includes(freezerStatus.hierarchy)) plan.push(freezerStatus.hierarchy);
    const created: CgroupGroup[] = [];
    try {
      for (const hierarchy of plan) {
        const dir = join(hierarchy.parentDir, sandboxId);
        await mkdir(dir, { mode: 0o755 });
        const group: CgroupGroup = { dir, version: hierarchy.version, controllers: hierarchy.controllers };
        created.push(group);
        for (const controller of hierarchy.controllers) {
          for (const write of limitWrites(hierarchy.version, controller, resources, tmpfsBytes)) {
            const file = join(dir, write.file);
            if (write.optional && !(await exists(file))) continue;
            await writeFile(file, write.value, { flag: "w" }).catch((err: unknown) => {
              throw new InternalError(`Cannot write "${write.value}" to "${file}"`, { cause: err });
            });
          }
        }
      }
    } catch (err) {
      await new SandboxCgroups(created).remove(2_000).catch(() => undefined);
      if (err instanceof InternalError || err instanceof UnsupportedCapabilityError) throw err;
      throw new InternalError(`Cannot create the cgroups of sandbox "${sandboxId}"`, { cause: err });
    }
    const freezer = freezerStatus.available
      ? created[plan.indexOf(freezerStatus.hierarchy)]!
      : { reason: freezerStatus.reason, hint: freezerStatus.hint };
    return new SandboxCgroups(created, freezer);
  }

  /**
   * Freezes every process of the sandbox and waits until the kernel reports the group frozen,
   * bounded by `timeoutMs` (past it, the group is thawed again and TimeoutError thrown).
   * Idempotent. Throws UnsupportedCapabilityError when the host has no freezer for the sandbox.
   */
  async freeze(timeoutMs: number): Promise<void> {
    const group = this.freezerGroup();
    const { file, frozen, thawed } = freezerFile(group);
    const v1 = file.endsWith("freezer.state");
    await writeFile(file, frozen, { flag: "w" });
    const deadline = Date.now() + timeoutMs;
    for (let attempt = 1; !(await isFrozen(group)); attempt++) {
      if (Date.now() >= deadline) {
        await this.thaw().catch(() => undefined);
        throw new TimeoutError(`Cannot freeze cgroup "${group.dir}": not frozen within ${timeoutMs} ms`);
      }
      // The v1 freezer freezes the tasks present when FROZEN is written: a child forked during
      // that pass keeps the group FREEZING until FROZEN is written again, and a task caught in
      // some kernel waits (vfork) until the group is thawed once and frozen anew.
      if (v1 && attempt % 50 === 0) {
        await writeFile(file, thawed, { flag: "r+" });
        await delay(10);
      }
      if (v1) await writeFile(file, frozen, { flag: "r+" });
      await delay(attempt < 20 ? 1 : 5);
    }
  }

  /**
   * Thaws every group that has a freezer file (the sandbox's freezer group, or for groups reopened
   * for reaping, any of them). Idempotent; a group already gone is skipped.
   */
  async thaw(): Promise<void> {
    for (const group of this.groups) {
      const { file, thawed } = freezerFile(group);
      await writeFile(file, thawed, { flag: "r+" }).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      });
    }
  }

  /**
   * True when the sandbox's freezer group is asked to be frozen (paused, or on the way), read from
   * the kernel. Throws UnsupportedCapabilityError when the host has no freezer for the sandbox.
   */
  async freezeRequested(): Promise<boolean> {
    const group = this.freezerGroup();
    const { file, thawed } = freezerFile(group);
    return (await readFile(file, "utf8")).trim() !== thawed;
  }

  private freezerGroup(): CgroupGroup {
    if ("dir" in this.freezer) return this.freezer;
    throw new UnsupportedCapabilityError(`Cannot pause the sandbox on this host: ${this.freezer.reason}`, { hint: this.freezer.hint });
  }

  /** Reopens groups from their directories (for reaping after an engine crash). */
  static async open(dirs: readonly string[]): Promise<SandboxCgroups> {
    const groups = await Promise.all(
      dirs.map(async (dir): Promise<CgroupGroup> => ({ dir, version: (await exists(join(dir, "cgroup.controllers"))) ? 2 : 1, controllers: [] })),
    );
    return new SandboxCgroups(groups);
  }

  get dirs(): string[] {
    return this.groups.map((g) => g.dir);
  }

  /** The cgroup.procs files a process writes its pid to so that it and its children join. */
  get procsFiles(): string[] {
    return this.groups.map((g) => join(g.dir, "cgroup.procs"));
  }

  /** OOM kills counted by the memory controller so far (0 when memory is not controlled). */
  async oomKills(): Promise<number> {
    const group = this.groups.find((g) => g.controllers.includes("memory"));
    if (group === undefined) return 0;
    const file = join(group.dir, group.version === 2 ? "memory.events" : "memory.oom_control");
    try {
      // Synchronous on purpose: a cgroup file is in memory, and this runs on every exec's exit.
      const match = /^oom_kill (\d+)$/m.exec(readFileSync(file, "utf8"));
      if (match?.[1] !== undefined) this.lastOomKills = Number(match[1]);
    } catch {
      // The group is gone (destroyed): the last count read stands.
    }
    return this.lastOomKills;
  }

  /** Pids in a group; empty when the group is gone. */
  private async members(group: CgroupGroup): Promise<number[]> {
    try {
      return (await readFile(join(group.dir, "cgroup.procs"), "utf8")).split("\n").filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  private async isEmpty(group: CgroupGroup): Promise<boolean> {
    if (group.version === 2) {
      try {
        return /^populated 0$/m.test(await readFile(join(group.dir, "cgroup.events"), "utf8"));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT" && !(await exists(group.dir))) return true;
      }
    }
    return (await this.members(group)).length === 0;
  }

  /**
   * SIGKILLs every process in every group until the groups are empty, thawing a frozen sandbox once
   * the signals are pending. v2 uses cgroup.kill when
   * the kernel has it; otherwise (and on v1, which has no kill file or empty notification) it
   * signals each listed pid and reads the list again, bounded by `timeoutMs`.
   */
  async killAll(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const group of this.groups) {
      const killFile = join(group.dir, "cgroup.kill");
      const useKillFile = group.version === 2 && (await exists(killFile));
      let attempt = 0;
      for (;;) {
        if (useKillFile) {
          await writeFile(killFile, "1", { flag: "w" }).catch((err: unknown) => {
            if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
          });
        } else {
          for (const pid of await this.members(group)) sendSignal(pid, "SIGKILL");
        }
        // A task frozen by the v1 freezer does not die of SIGKILL until thawed; the signal is pending first.
        await this.thaw().catch(() => undefined);
        if (await this.isEmpty(group)) break;
        if (Date.now() >= deadline) {
          throw new CleanupError(`Cannot empty cgroup "${group.dir}": processes ${JSON.stringify(await this.members(group))} remain`);
        }
        await delay(pollBackoffMs(attempt++));
      }
    }
  }

  /** Removes every group, retrying while exiting processes still hold it, bounded by `timeoutMs`. */
  async remove(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const group of this.groups) {
      for (let attempt = 0; ; attempt++) {
        try {
          await rmdir(group.dir);
          break;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          if (code !== "EBUSY" || Date.now() >= deadline) {
            throw new CleanupError(`Cannot remove cgroup "${group.dir}"`, { cause: err });
          }
          await delay(pollBackoffMs(attempt));
        }
      }
    }
  }
}
