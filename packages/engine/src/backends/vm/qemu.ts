/**
 * The QEMU command line for a sandbox VM: a `microvm` machine with no default devices, the
 * kernel and initramfs, two read-only virtio-blk disks (image root, agent runtime), one
 * virtio-serial port carrying the agent channel on QEMU's stdin/stdout, the serial console
 * written to the connected socket QEMU inherits as fd 3 (node's "pipe" stdio is a socketpair),
 * and QEMU's seccomp sandbox.
 */
import { InvalidArgumentError } from "@mvm/protocol";
import { AGENT_PORT_NAME } from "./init-script.js";


/** The fd (a connected stream socket) of the QEMU process the serial console is written to. */
export const CONSOLE_FD = 3;

export interface QemuVmConfig {
  readonly accel: "kvm" | "tcg";
  readonly kernelPath: string;
  readonly initrdPath: string;
  /** Image root filesystem disk (guest /dev/vda). */
  readonly rootDiskPath: string;
  /** Agent runtime disk (guest /dev/vdb). */
  readonly agentDiskPath: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly workMiB: number;
  readonly tmpMiB: number;
  /** The uid (and gid) the agent runs as in the guest; never 0. */
  readonly guestUid: number;
  /**
   * The TSC frequency the guest kernel should assume, kHz. Under TCG the guest reads the host's
   * TSC, and on a busy host its own calibration against the emulated PIT can fail and hang the
   * boot; passing the rate skips that calibration.
   */
  readonly tscKhz?: number;
}

/**
 * The host's TSC rate in kHz from /proc/cpuinfo ("cpu MHz" of a CPU with constant_tsc), or
 * undefined when the text does not say.
 */
export function parseTscKhz(cpuinfo: string): number | undefined {
  const first = cpuinfo.split(/\n\s*\n/)[0] ?? "";
  const flags = /^flags\s*:(.*)$/m.exec(first)?.[1]?.split(/\s+/) ?? [];
  if (!flags.includes("constant_tsc")) return undefined;
  const mhz = Number(/^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$/m.exec(first)?.[1]);
  if (!Number.isFinite(mhz) || mhz < 100 || mhz > 20_000) return undefined;
  return Math.round(mhz * 1000);
}

function checkPath(label: string, path: string): void {
  // QEMU option values are comma-separated: a comma in a path would inject options.
  if (!path.startsWith("/") || path.includes(",") || /[\0\n]/.test(path)) {
    throw new InvalidArgumentError(`Invalid ${label} "${path}": must be an absolute path without commas`);
  }
}

function checkInt(label: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`Invalid ${label} "${value}": must be an integer from ${min} to ${max}`);
  }
}

/** The kernel command line. */
export function kernelCommandLine(config: Pick<QemuVmConfig, "workMiB" | "tmpMiB" | "guestUid" | "tscKhz">): string {
  return [
    "console=ttyS0",
    ...(config.tscKhz !== undefined ? [`tsc_early_khz=${config.tscKhz}`] : []),
    "quiet",
    "panic=-1",
    "reboot=t",
    `mvm.work_mib=${config.workMiB}`,
    `mvm.tmp_mib=${config.tmpMiB}`,
    `mvm.uid=${config.guestUid}`,
  ].join(" ");
}

/** The argv after the QEMU binary. Throws InvalidArgumentError for an unsafe path or number. */
export function qemuArgs(config: QemuVmConfig): string[] {
  checkPath("kernelPath", config.kernelPath);
  checkPath("initrdPath", config.initrdPath);
  checkPath("rootDiskPath", config.rootDiskPath);
  checkPath("agentDiskPath", config.agentDiskPath);
  checkInt("memoryMiB", config.memoryMiB, 128, 1024 * 1024);
  checkInt("cpus", config.cpus, 1, 256);
  checkInt("workMiB", config.workMiB, 1, 1024 * 1024);
  checkInt("tmpMiB", config.tmpMiB, 1, 1024 * 1024);
  checkInt("guestUid", config.guestUid, 1, 65_534);
  if (config.tscKhz !== undefined) checkInt("tscKhz", config.tscKhz, 100_000, 20_000_000);
  return [
    "-M", "microvm,x-option-roms=off",
    "-accel", config.accel,
    // Under TCG the default CPU model: with "max" the guest kernel can hang calibrating its TSC.
    ...(config.accel === "kvm" ? ["-cpu", "host"] : []),
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-m", String(config.memoryMiB),
    "-smp", String(config.cpus),
    "-kernel", config.kernelPath,
    "-initrd", config.initrdPath,
    "-append", kernelCommandLine(config),
    "-drive", `id=root,file=${config.rootDiskPath},format=raw,if=none,readonly=on`,
    "-device", "virtio-blk-device,drive=root",
    "-drive", `id=agent,file=${config.agentDiskPath},format=raw,if=none,readonly=on`,
    "-device", "virtio-blk-device,drive=agent",
    "-device", "virtio-serial-device,max_ports=2",
    "-chardev", "stdio,id=agentch,signal=off",
    "-device", `virtserialport,chardev=agentch,name=${AGENT_PORT_NAME}`,
    "-chardev", `socket,id=con,fd=${CONSOLE_FD}`,
    "-serial", "chardev:con",
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
  ];
}
