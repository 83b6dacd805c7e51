/**
 * A running VM sandbox as the engine sees it: the agent channel (QEMU's stdin/stdout, joined to
 * the guest's virtio-serial port), QEMU's exit, and teardown.
 */
import type { ChildProcess } from "node:child_process";
import type { Duplex } from "node:stream";
import { CleanupError } from "@mvm/protocol";
import { sendSignal } from "../../_internal/proc.js";
import type { CappedLog } from "../namespace/agent-log.js";
import { childChannel, settlesWithin, singleFlight } from "../_teardown.js";
import type { LaunchedSandbox, ReapRecord } from "../types.js";

export type ExitStatus = { code: number | null; signal: NodeJS.Signals | null };

/** How long QEMU may take to exit after SIGKILL before destroy reports a cleanup failure, ms. */
export const QEMU_EXIT_MS = 5_000;

export interface VmSandboxParts {
  readonly sandboxId: string;
  /** The QEMU process, leader of its own process group. */
  readonly child: ChildProcess;
  readonly exited: Promise<ExitStatus>;
  /** The guest's serial console (kernel messages, init and agent stderr). */
  readonly log: CappedLog;
  /** The first bytes QEMU wrote to its stderr. */
  readonly qemuStderr: () => string;
  readonly reapRecord: ReapRecord;
}

export class VmSandbox implements LaunchedSandbox {
  readonly channel: Duplex;
  readonly reapRecord: ReapRecord;
  readonly exited: Promise<ExitStatus>;
  /** Single-flight; after a failed teardown the next call tries again. */
  readonly destroy: () => Promise<void>;

  constructor(private readonly parts: VmSandboxParts) {
    this.channel = childChannel(parts.child, "the QEMU process");
    this.destroy = singleFlight(() => this.teardown());
    this.reapRecord = parts.reapRecord;
    this.exited = parts.exited;
  }

  /** The guest kernel reports OOM kills only on its console; not counted yet. */
  oomKills(): Promise<number> {
    return Promise.resolve(0);
  }

  /** What QEMU printed on stderr (its own errors), at most 4 KiB. */
  qemuStderr(): string {
    return this.parts.qemuStderr();
  }

  private async teardown(): Promise<void> {
    const { child } = this.parts;
    try {
      // Until node reaps QEMU, its pid (and process group id) cannot be reused.
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        sendSignal(-child.pid, "SIGKILL");
        if (!(await settlesWithin(this.parts.exited, QEMU_EXIT_MS))) {
          throw new CleanupError(`Cannot stop sandbox "${this.parts.sandboxId}": QEMU (pid ${child.pid}) did not exit`);
        }
      }
    } finally {
      this.channel.destroy();
      child.stdio[3]?.destroy();
      await this.parts.log.close(1_000);
    }
  }
}
