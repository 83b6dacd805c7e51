/**
 * A running VM sandbox as the engine sees it: the agent channel, the egress relay channel, the
 * guest's OOM-kill count (from the init's control port), pause (QMP `stop` / `cont`), snapshots
 * (vm-snapshot.ts), why the VM died, and teardown.
 */
import { rm } from "node:fs/promises";
import type { Duplex } from "node:stream";
import { CleanupError, UnsupportedCapabilityError } from "@mvm/protocol";
import { childChannel, CleanupFailures, singleFlight } from "../_teardown.js";
import type { BackendSnapshot, LaunchedSandbox, ReapRecord, SnapshotCapture } from "../types.js";
import type { SandboxRam } from "./ram-file.js";
import { z } from "zod";
import type { ExitStatus, VmProcess } from "./vm-process.js";
import { captureVm, type DeviceHeader } from "./vm-snapshot.js";

/** How long the guest may take to report its OOM-kill count, ms. */
const STATS_TIMEOUT_MS = 10_000;
/** How long QEMU may take to answer `stop` / `cont` on its monitor, ms. */
const QMP_TIMEOUT_MS = 10_000;
const runStateSchema = z.object({ status: z.string().max(64), running: z.boolean() });

/** Deadline for a whole snapshot (device state saved, RAM and work disk copied), ms. */
const SNAPSHOT_TIMEOUT_MS = 120_000;

export interface VmSandboxParts {
  readonly sandboxId: string;
  readonly vm: VmProcess;
  /** Files and directories of this sandbox only (work disk, RAM directory), removed at teardown. */
  readonly ownFiles: readonly string[];
  /** The guest RAM file and save directory. */
  readonly ram: SandboxRam;
  readonly workDiskPath: string;
  /** What a snapshot's device header records, and the shape a restore must match. */
  readonly header: DeviceHeader;
  readonly shape: BackendSnapshot["shape"];
  /** QEMU's host uid (root engines). */
  readonly uid?: number;
  readonly reapRecord: ReapRecord;
  /** Gives back the host uid QEMU ran as. */
  readonly release: () => void;
}

export class VmSandbox implements LaunchedSandbox {
  readonly channel: Duplex;
  /**
   * The host's end of the relay port, at once: the port exists from boot, and the guest's agent
   * opens its end after its hello. Destroyed with the sandbox.
   */
  readonly relay: Promise<Duplex>;
  readonly reapRecord: ReapRecord;
  readonly exited: Promise<ExitStatus>;
  /** Single-flight; after a failed teardown the next call tries again. */
  readonly destroy: () => Promise<void>;
  #released = false;

  constructor(private readonly parts: VmSandboxParts) {
    this.channel = childChannel(parts.vm.child, "the QEMU process");
    this.relay = Promise.resolve(parts.vm.relay);
    this.destroy = singleFlight(() => this.teardown());
    this.reapRecord = parts.reapRecord;
    this.exited = parts.vm.exited;
  }

  /** OOM kills in the guest's sandbox cgroup; 0 once the guest is gone. */
  async oomKills(): Promise<number> {
    if (!this.parts.vm.running()) return 0;
    return this.parts.vm.control.oomKills(STATS_TIMEOUT_MS);
  }

  /** Stops the guest's vCPUs (QMP `stop`); QEMU keeps the guest's memory and devices. */
  async pause(): Promise<void> {
    const qmp = await this.parts.vm.qmp(QMP_TIMEOUT_MS);
    await qmp.execute("stop", undefined, { timeoutMs: QMP_TIMEOUT_MS });
  }

  /** Starts the guest's vCPUs again (QMP `cont`). */
  async resume(): Promise<void> {
    const qmp = await this.parts.vm.qmp(QMP_TIMEOUT_MS);
    await qmp.execute("cont", undefined, { timeoutMs: QMP_TIMEOUT_MS });
  }

  /**
   * Captures guest RAM, device state and the work disk together into `capture.dir` (see
   * vm-snapshot.ts) and leaves the VM running or paused as it was. A disk-only capture
   * (`memory: false`) is UnsupportedCapabilityError: the booted guest has the work disk mounted,
   * so a disk alone cannot be put under another guest.
   */
  async snapshot(capture: SnapshotCapture): Promise<BackendSnapshot> {
    if (!capture.memory) {
      throw new UnsupportedCapabilityError(`Cannot snapshot VM sandbox "${this.parts.sandboxId}" without its memory: the VM tier captures memory and disk together`, {
        hint: "take the snapshot with memory (the default on the VM tier)",
      });
    }
    const qmp = await this.parts.vm.qmp(QMP_TIMEOUT_MS);
    const parts = await captureVm({
      qmp,
      ram: this.parts.ram,
      workDiskPath: this.parts.workDiskPath,
      dir: capture.dir,
      header: this.parts.header,
      ...(this.parts.uid !== undefined ? { socketOwner: this.parts.uid } : {}),
      resume: true,
      timeoutMs: SNAPSHOT_TIMEOUT_MS,
      ...(capture.signal !== undefined ? { signal: capture.signal } : {}),
    });
    return { parts: { ram: parts.ram, device: parts.device, work: parts.work }, shape: this.parts.shape };
  }

  /** Why the VM died (kernel panic, tampered disk, init failure, QEMU error), when known. */
  failure(): string | undefined {
    return this.parts.vm.deathReason();
  }

  /** What QEMU printed on stderr (its own errors), at most 4 KiB. */
  qemuStderr(): string {
    return this.parts.vm.stderr();
  }

  /**
   * QEMU's run state (QMP `query-status`): `running`, `paused`, or `postmigrate` for a VM paused
   * when a snapshot was taken (a resume runs it again).
   */
  async runState(): Promise<{ status: string; running: boolean }> {
    const qmp = await this.parts.vm.qmp(QMP_TIMEOUT_MS);
    return runStateSchema.parse(await qmp.execute("query-status", undefined, { timeoutMs: QMP_TIMEOUT_MS }));
  }

  /** pid of the jail's top process (the prelude, then setpriv, then bubblewrap). */
  get pid(): number {
    return this.parts.vm.pid;
  }

  private async teardown(): Promise<void> {
    const failures = new CleanupFailures();
    const { vm } = this.parts;
    if (!(await vm.kill())) failures.add(new CleanupError(`QEMU of "${this.parts.sandboxId}" (pid ${vm.pid}) did not exit`));
    this.channel.destroy();
    await failures.attempt(() => vm.closeChannels());
    for (const file of this.parts.ownFiles) await failures.attempt(() => rm(file, { recursive: true, force: true }));
    if (!this.#released && !vm.running()) {
      this.#released = true;
      this.parts.release();
    }
    failures.throwIfAny(`Cannot stop sandbox "${this.parts.sandboxId}"`);
  }
}
