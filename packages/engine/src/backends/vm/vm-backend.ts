/**
 * The VM backend: each sandbox is a QEMU `microvm` guest with its own Linux kernel (Debian's
 * cloud kernel), booted from a busybox initramfs that mounts the image and the agent runtime as
 * read-only ext4 disks and starts the agent as an unprivileged uid. The agent channel is a
 * virtio-serial port that QEMU connects to its stdin/stdout, so protocol v1 runs unchanged.
 *
 * Tier "vm-hardware" when /dev/kvm is usable, else "vm-emulated" (TCG).
 *
 * Not yet: dm-verity on the disks, dropping QEMU's privileges (uid, mount namespace), cgroups
 * around QEMU, snapshots.
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { AbortedError, AdmissionError, InvalidArgumentError, UnsupportedCapabilityError } from "@mvm/protocol";
import { killIfSame, readProcStat, readProcStartTimeSync, waitForExit } from "../../_internal/proc.js";
import { CappedLog } from "../namespace/agent-log.js";
import { findExecutable } from "../namespace/probe.js";
import type { Backend, LaunchSpec, ProbeCheck, ProbeResult, ReapRecord } from "../types.js";
import { buildExt4Image } from "./disk.js";
import { AGENT_DISK_LABEL, ROOT_DISK_LABEL } from "./init-script.js";
import { buildInitramfs } from "./initramfs.js";
import { type GuestKernel, ensureGuestKernel, openGuestKernel } from "./kernel.js";
import { CONSOLE_FD, parseTscKhz, qemuArgs } from "./qemu.js";
import { VmSandbox } from "./vm-sandbox.js";

/** Guest memory when the sandbox sets no memory limit, MiB. */
export const DEFAULT_VM_MEMORY_MIB = 512;

/** Mount points the init script needs in the image root. */
const ROOT_MOUNT_POINTS = ["proc", "dev", "work", "tmp", ".mvm"] as const;

export interface VmBackendOptions {
  /** Directory for the kernel and initramfs caches (subdirectories kernel/, initramfs/), and disks/ unless `diskRoot` is set. */
  readonly cacheRoot: string;
  /** The QEMU binary. @default `qemu-system-x86_64` found on PATH or in the system directories */
  readonly qemuPath?: string;
  /** uid and gid of the agent in the guest. @default 1000 */
  readonly guestUid?: number;
  /** "auto" uses KVM when /dev/kvm is usable. @default "auto" */
  readonly accel?: "auto" | "kvm" | "tcg";
  /** Directory for the disk images built from image and runtime directories. @default `${cacheRoot}/disks` */
  readonly diskRoot?: string;
  /** A statically linked busybox for the initramfs. @default "/bin/busybox" */
  readonly busyboxPath?: string;
}

interface BootArtifacts {
  readonly kernel: GuestKernel;
  readonly initrdPath: string;
}

async function kvmUsable(): Promise<boolean> {
  try {
    const handle = await open("/dev/kvm", constants.O_RDWR);
    await handle.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * @example
 * const backend = new VmBackend({ cacheRoot: "/var/lib/mvm/vm" });
 * const sandbox = await backend.launch(spec);
 * const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: 60_000, label: spec.sandboxId });
 */
export class VmBackend implements Backend {
  readonly name = "vm" as const;
  private artifacts: Promise<BootArtifacts> | undefined;

  constructor(private readonly options: VmBackendOptions) {
    if (!options.cacheRoot.startsWith("/")) throw new InvalidArgumentError(`Invalid cacheRoot "${options.cacheRoot}": must be an absolute path`);
    const uid = options.guestUid ?? 1000;
    if (!Number.isInteger(uid) || uid < 1 || uid > 65_534) throw new InvalidArgumentError(`Invalid guestUid "${uid}": must be from 1 to 65534`);
  }

  /** Kernel (fetched on first use) and initramfs, found once; a failure is retried next time. */
  private boot(): Promise<BootArtifacts> {
    if (this.artifacts === undefined) {
      const pending = (async () => {
        const kernel = await ensureGuestKernel(join(this.options.cacheRoot, "kernel"));
        const initrd = await buildInitramfs({
          kernel,
          outRoot: join(this.options.cacheRoot, "initramfs"),
          ...(this.options.busyboxPath !== undefined ? { busyboxPath: this.options.busyboxPath } : {}),
        });
        return { kernel, initrdPath: initrd.path };
      })();
      this.artifacts = pending;
      pending.catch(() => {
        if (this.artifacts === pending) this.artifacts = undefined;
      });
    }
    return this.artifacts;
  }

  private async accel(): Promise<"kvm" | "tcg"> {
    const wanted = this.options.accel ?? "auto";
    if (wanted !== "auto") return wanted;
    return (await kvmUsable()) ? "kvm" : "tcg";
  }

  async probe(): Promise<ProbeResult> {
    const [qemu, mkfs, kvm, kernel] = await Promise.all([
      findExecutable("qemu-system-x86_64", this.options.qemuPath),
      findExecutable("mkfs.ext4"),
      kvmUsable(),
      this.storedKernel(),
    ]);
    const checks: ProbeCheck[] = [
      qemu !== undefined
        ? { name: "qemu", ok: true, detail: `QEMU at ${qemu}` }
        : { name: "qemu", ok: false, detail: "qemu-system-x86_64 not found", hint: "Install the qemu-system-x86 package" },
      mkfs !== undefined
        ? { name: "mkfs.ext4", ok: true, detail: `mkfs.ext4 at ${mkfs}` }
        : { name: "mkfs.ext4", ok: false, detail: "mkfs.ext4 not found", hint: "Install the e2fsprogs package" },
      kvm
        ? { name: "kvm", ok: true, detail: "/dev/kvm is usable: hardware virtualization" }
        : { name: "kvm", ok: false, detail: "/dev/kvm is not usable: guests run emulated (TCG), slowly", hint: "Enable virtualization and give the engine access to /dev/kvm" },
      kernel !== undefined
        ? { name: "kernel", ok: true, detail: `guest kernel ${kernel.version} (${kernel.digest})` }
        : { name: "kernel", ok: false, detail: "no guest kernel stored yet", hint: "The first launch fetches it with apt-get (needs the Debian mirror)" },
    ];
    return {
      backend: "vm",
      tier: kvm && this.options.accel !== "tcg" ? "vm-hardware" : "vm-emulated",
      usable: qemu !== undefined && mkfs !== undefined,
      checks,
      enforceable: { memory: true, pids: false, cpu: false },
    };
  }

  private async storedKernel(): Promise<GuestKernel | undefined> {
    const root = join(this.options.cacheRoot, "kernel");
    try {
      return await openGuestKernel(root, (await readFile(join(root, "current"), "utf8")).trim());
    } catch {
      return undefined;
    }
  }

  /**
   * Builds (or reuses) the disks and starts QEMU. Resolves once QEMU runs; the agent's hello
   * follows on `channel` when the guest has booted (seconds under TCG). Throws
   * UnsupportedCapabilityError for a pids or cpus limit, AdmissionError when QEMU is missing,
   * AbortedError when `signal` fires; nothing is left running.
   */
  async launch(spec: LaunchSpec, signal?: AbortSignal): Promise<VmSandbox> {
    if (spec.resources.pids !== undefined) throw new UnsupportedCapabilityError(`The vm backend cannot limit pids yet (asked "${spec.resources.pids}")`);
    if (spec.resources.cpus !== undefined) throw new UnsupportedCapabilityError(`The vm backend cannot limit cpus yet (asked "${spec.resources.cpus}")`);
    const qemuPath = await findExecutable("qemu-system-x86_64", this.options.qemuPath);
    if (qemuPath === undefined) throw new AdmissionError("Cannot start a VM sandbox: qemu-system-x86_64 not found");
    const checkAbort = () => {
      if (signal?.aborted) throw new AbortedError(`Launch of "${spec.sandboxId}" aborted`, { cause: signal.reason });
    };
    checkAbort();
    const disks = this.options.diskRoot ?? join(this.options.cacheRoot, "disks");
    const [boot, rootDisk, agentDisk] = await Promise.all([
      this.boot(),
      buildExt4Image({ sourceDir: spec.rootfsDir, outRoot: disks, mountPoints: ROOT_MOUNT_POINTS, label: ROOT_DISK_LABEL }),
      buildExt4Image({ sourceDir: spec.agentDir, outRoot: disks, label: AGENT_DISK_LABEL }),
    ]);
    checkAbort();
    const accel = await this.accel();
    const tscKhz = accel === "tcg" ? parseTscKhz(await readFile("/proc/cpuinfo", "utf8").catch(() => "")) : undefined;
    const args = qemuArgs({
      accel,
      ...(tscKhz !== undefined ? { tscKhz } : {}),
      kernelPath: boot.kernel.kernelPath,
      initrdPath: boot.initrdPath,
      rootDiskPath: rootDisk.path,
      agentDiskPath: agentDisk.path,
      memoryMiB: spec.resources.memoryMiB ?? DEFAULT_VM_MEMORY_MIB,
      cpus: 1,
      workMiB: spec.workMiB,
      tmpMiB: spec.tmpMiB,
      guestUid: this.options.guestUid ?? 1000,
    });
    let log: CappedLog;
    try {
      await access(spec.stateDir, constants.W_OK);
      log = await CappedLog.open(spec.agentLogPath);
    } catch (err) {
      throw new InvalidArgumentError(`Cannot write the console log "${spec.agentLogPath}" of "${spec.sandboxId}"`, { cause: err });
    }
    const child = spawn(qemuPath, args, {
      stdio: ["pipe", "pipe", "pipe", "pipe"],
      detached: true,
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    });
    const startTime = child.pid !== undefined ? readProcStartTimeSync(child.pid) : undefined;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once("exit", (code, sig) => resolve({ code, signal: sig }));
      child.once("error", () => resolve({ code: null, signal: null }));
    });
    log.follow(child.stdio[CONSOLE_FD] as Readable);
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      if (stderr.length < 4096) stderr += chunk.slice(0, 4096 - stderr.length);
    });
    const sandbox = new VmSandbox({
      sandboxId: spec.sandboxId,
      child,
      exited,
      log,
      qemuStderr: () => stderr,
      reapRecord: { backend: "vm", pid: child.pid ?? 0, pidStartTime: startTime ?? "", cgroups: [], extra: { kind: "qemu" } },
    });
    if (child.pid === undefined || startTime === undefined || signal?.aborted) {
      await sandbox.destroy();
      checkAbort();
      throw new AdmissionError(`Cannot start QEMU for "${spec.sandboxId}"`);
    }
    return sandbox;
  }

  /** Kills the recorded QEMU process when it is still the same process (same start time). */
  async reap(record: ReapRecord): Promise<void> {
    if (record.backend !== "vm" || !Number.isInteger(record.pid) || record.pid <= 0) return;
    const stat = await readProcStat(record.pid);
    if (stat === undefined || stat.startTime !== record.pidStartTime) return;
    const comm = await readFile(`/proc/${record.pid}/comm`, "utf8").catch(() => "");
    if (!comm.startsWith("qemu-system")) return;
    await killIfSame(record.pid, record.pidStartTime);
    await waitForExit(record.pid, record.pidStartTime, 5_000);
  }
}
