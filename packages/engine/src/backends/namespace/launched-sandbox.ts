/**
 * A running namespace sandbox as the engine sees it: the agent channel, the egress relay, the exit
 * of bubblewrap, the OOM counter, pause (the cgroup freezer), filesystem snapshots, and teardown.
 */
import type { ChildProcess } from "node:child_process";
import type { Duplex } from "node:stream";
import { CleanupError, InternalError, UnsupportedCapabilityError } from "@mvm/protocol";
import { isSameLiveProcess, sendSignal } from "../../_internal/proc.js";
import { CleanupFailures, childChannel, settlesWithin, singleFlight } from "../_teardown.js";
import type { BackendSnapshot, LaunchedSandbox, ReapRecord, SnapshotCapture } from "../types.js";
import type { CappedLog } from "./agent-log.js";
import type { RelayListener } from "./relay-listener.js";
import type { SandboxCgroups } from "./sandbox-cgroups.js";
import { MEMORY_SNAPSHOT_UNSUPPORTED, captureTrees } from "./snapshot-capture.js";
import type { SnapshotTools } from "./snapshot-tools.js";

export type ExitStatus = { code: number | null; signal: NodeJS.Signals | null };

/** How long each teardown step may take before destroy reports a cleanup failure, ms. */
export const TEARDOWN_STEP_MS = 5_000;

export interface SandboxParts {
  readonly sandboxId: string;
  /** The prelude process: /bin/sh, then setpriv, then the outer bubblewrap (same pid, own process group). */
  readonly child: ChildProcess;
  readonly exited: Promise<ExitStatus>;
  readonly cgroups: SandboxCgroups;
  readonly log: CappedLog;
  /** The host end of the egress relay; closed (socket file and directory removed) at teardown. */
  readonly relay: RelayListener;
  readonly reapRecord: ReapRecord;
  /** bubblewrap's child: pid 1 of the sandbox's pid namespace. */
  readonly init: { readonly pid: number; readonly startTime: string } | undefined;
  /** What filesystem snapshots need: the tmpfs caps, whether the engine is root, the host tools. */
  readonly snapshots: {
    readonly workMiB: number;
    readonly tmpMiB: number;
    readonly isRoot: boolean;
    readonly tools: () => Promise<SnapshotTools>;
  };
  /** Called once after teardown (returns the sandbox uid to the pool). */
  readonly release: () => void;
}

/** True until node has reaped the child (after that its pid and process group id may be reused). */
function notReaped(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/**
 * Stops everything of a sandbox the engine spawned. First SIGKILL to the sandbox's pid 1: the
 * kernel kills and reaps the rest of the pid namespace before bubblewrap sees its child exit, so
 * once bubblewrap has exited (and the engine has reaped it) nothing of the sandbox runs and no
 * zombie is left to the host's init. Then SIGKILL through the cgroups for anything else, and to
 * the prelude's process group if bubblewrap does not exit. Resolves once the cgroups are empty
 * and removed; throws CleanupError listing what failed.
 */
export async function stopSandbox(parts: Omit<SandboxParts, "log" | "relay" | "release" | "reapRecord" | "snapshots">): Promise<void> {
  const failures = new CleanupFailures();
  const { child, cgroups, init } = parts;
  // No pid: the spawn itself failed, so there is no process to stop.
  if (notReaped(child) && child.pid !== undefined) {
    const initAlive = init !== undefined && (await isSameLiveProcess(init.pid, init.startTime));
    if (initAlive) {
      sendSignal(init.pid, "SIGKILL");
      // A paused sandbox's pid 1 dies of the pending SIGKILL only once thawed (v1 freezer).
      await failures.attempt(() => cgroups.thaw());
    }
    if (!initAlive || !(await settlesWithin(parts.exited, TEARDOWN_STEP_MS))) {
      if (cgroups.groups.length > 0) await failures.attempt(() => cgroups.killAll(TEARDOWN_STEP_MS));
      if (notReaped(child)) sendSignal(-child.pid, "SIGKILL");
      if (!(await settlesWithin(parts.exited, TEARDOWN_STEP_MS))) {
        failures.add(new CleanupError(`Cannot stop sandbox "${parts.sandboxId}": bubblewrap (pid ${child.pid}) did not exit`));
      }
    }
  }
  if (cgroups.groups.length > 0) {
    await failures.attempt(() => cgroups.killAll(TEARDOWN_STEP_MS));
    await failures.attempt(() => cgroups.remove(TEARDOWN_STEP_MS));
  }
  failures.throwIfAny(`Cannot release sandbox "${parts.sandboxId}"`);
}

export class NamespaceSandbox implements LaunchedSandbox {
  readonly channel: Duplex;
  readonly relay: Promise<Duplex>;
  readonly reapRecord: ReapRecord;
  readonly exited: Promise<ExitStatus>;
  /** Single-flight; after a failed teardown the next call tries again. */
  readonly destroy: () => Promise<void>;

  constructor(private readonly parts: SandboxParts) {
    this.channel = childChannel(parts.child, "the sandbox process");
    this.relay = parts.relay.connection;
    this.destroy = singleFlight(() => this.teardown());
    this.reapRecord = parts.reapRecord;
    this.exited = parts.exited;
  }

  oomKills(): Promise<number> {
    return this.parts.cgroups.oomKills();
  }

  /** Freezes the sandbox's cgroup (v2 `cgroup.freeze`, v1 `freezer.state`). */
  pause(): Promise<void> {
    return this.serial(() => this.parts.cgroups.freeze(TEARDOWN_STEP_MS));
  }

  /** Thaws the sandbox; waits for a capture in progress, which must see it frozen throughout. */
  resume(): Promise<void> {
    return this.serial(() => this.parts.cgroups.thaw());
  }

  /**
   * Captures /work and /tmp (see snapshot-capture.ts) with every process of the sandbox frozen,
   * and leaves it as it was: a paused sandbox stays paused, a running one runs again. Refuses
   * `memory` (UnsupportedCapabilityError, never a filesystem-only capture in its place), and a
   * host without a cgroup freezer for the sandbox.
   */
  snapshot(capture: SnapshotCapture): Promise<BackendSnapshot> {
    const id = this.parts.sandboxId;
    if (capture.memory) {
      return Promise.reject(
        new UnsupportedCapabilityError(`Cannot snapshot the memory of sandbox "${id}": ${MEMORY_SNAPSHOT_UNSUPPORTED.reason}`, {
          hint: MEMORY_SNAPSHOT_UNSUPPORTED.hint,
        }),
      );
    }
    return this.serial(async () => {
      const { init, cgroups, snapshots } = this.parts;
      if (init === undefined) throw new InternalError(`Cannot snapshot sandbox "${id}": its first process was not found at launch`);
      const tools = await snapshots.tools();
      let wasPaused: boolean;
      try {
        wasPaused = await cgroups.freezeRequested();
      } catch (err) {
        if (!(err instanceof UnsupportedCapabilityError)) throw err;
        throw new UnsupportedCapabilityError(`Cannot snapshot sandbox "${id}": a consistent capture needs the cgroup freezer, and ${err.message}`, {
          cause: err,
          ...(err.hint !== undefined ? { hint: err.hint } : {}),
        });
      }
      // Also when paused: freeze waits until every task is frozen (a paused group is already).
      await cgroups.freeze(TEARDOWN_STEP_MS);
      try {
        const parts = await captureTrees({ sandboxId: id, init, workMiB: snapshots.workMiB, tmpMiB: snapshots.tmpMiB, isRoot: snapshots.isRoot }, tools, capture.dir, capture.signal);
        return { parts, shape: {} };
      } finally {
        if (!wasPaused) await cgroups.thaw();
      }
    });
  }

  /** Runs pause, resume and snapshot one at a time, in call order. */
  private serial<T>(step: () => Promise<T>): Promise<T> {
    const run = this.queue.then(step, step);
    this.queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private queue: Promise<void> = Promise.resolve();

  private async teardown(): Promise<void> {
    try {
      await stopSandbox(this.parts);
    } finally {
      this.channel.destroy();
      await this.parts.relay.close();
      await this.parts.log.close(1_000);
      this.parts.release();
    }
  }
}
