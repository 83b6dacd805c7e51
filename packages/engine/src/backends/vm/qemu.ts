/**
 * The QEMU command line for a sandbox VM: a `microvm` machine with no default devices, the
 * kernel and initramfs, two read-only verity-protected virtio-blk disks (image root, agent
 * runtime) and the writable work disk, three virtio-serial ports (the agent channel on QEMU's
 * stdin/stdout, the init's control port and the agent's egress relay on inherited sockets), the
 * serial console and the QMP monitor on inherited sockets, and QEMU's seccomp sandbox. There is
 * no network device. The disks and files are named by
 * their paths inside QEMU's jail, so every sandbox of one image has the same command line, which
 * restoring a saved VM needs.
 */
import { InvalidArgumentError } from "@mvm/protocol";
import { AGENT_PORT_NAME, CONTROL_PORT_NAME, RELAY_PORT_NAME } from "./init-script.js";

/**
 * Inherited fds of the QEMU process (node "pipe" stdio entries are connected stream sockets):
 *
 *   0, 1  the agent channel (stdin, stdout)     7-13  files opened by vm-process.ts (kernel,
 *   2     QEMU's stderr                               initrd, disks, save directory)
 *   3     serial console                        14    the egress relay port
 *   4     control port
 *   5     QMP monitor
 *   6     saved state (restores only)         15    the guest RAM file (bound at /vm/ram)
 */
export const CONSOLE_FD = 3;
/** The guest init's control port. */
export const CONTROL_FD = 4;
/** The QMP monitor. */
export const QMP_FD = 5;
/** The saved-state file: written by a save, read by `-incoming`. */
export const STATE_FD = 6;
/** The agent's egress relay port (RelayMux frames). */
export const RELAY_FD = 14;

/** dm-verity parameters of a read-only disk whose hash tree follows the data. */
export interface VerityParams {
  readonly dataBlocks: number;
  readonly hashStartBlock: number;
  readonly rootHashHex: string;
  readonly saltHex: string;
}

export interface QemuVmConfig {
  readonly accel: "kvm" | "tcg";
  readonly kernelPath: string;
  readonly initrdPath: string;
  /** Image root filesystem disk with its hash tree appended. */
  readonly rootDiskPath: string;
  readonly rootVerity: VerityParams;
  /** Agent runtime disk with its hash tree appended. */
  readonly agentDiskPath: string;
  readonly agentVerity: VerityParams;
  /** The writable per-sandbox disk mounted at /work. */
  readonly workDiskPath: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  /** The uid (and gid) the agent runs as in the guest; never 0. */
  readonly guestUid: number;
  /**
   * The TSC frequency the guest kernel should assume, kHz. Under TCG the guest reads the host's
   * TSC, and on a busy host its own calibration against the emulated PIT can fail and hang the
   * boot; passing the rate skips that calibration.
   */
  readonly tscKhz?: number;
  /**
   * Guest RAM backed by this file (`memory-backend-file`). `shared`: guest writes go to the file
   * (the vm backend's choice: each sandbox has a file of its own, ram-file.ts); otherwise a
   * private copy-on-write mapping of it.
   */
  readonly ramFile?: { readonly path: string; readonly shared: boolean };
  /** Start paused, loading state from STATE_FD once QMP says so (`-incoming defer`). */
  readonly incoming?: boolean;
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

function verityWord(label: string, v: VerityParams): string {
  checkInt(`${label} data blocks`, v.dataBlocks, 1, 2 ** 40);
  checkInt(`${label} hash start block`, v.hashStartBlock, 1, 2 ** 40);
  if (!/^[0-9a-f]{64}$/.test(v.rootHashHex)) throw new InvalidArgumentError(`Invalid ${label} root hash "${v.rootHashHex}"`);
  if (!/^(?:[0-9a-f]{2}){1,256}$/.test(v.saltHex)) throw new InvalidArgumentError(`Invalid ${label} salt "${v.saltHex}"`);
  return `${v.dataBlocks}:${v.hashStartBlock}:${v.rootHashHex}:${v.saltHex}`;
}

/** The kernel command line. */
export function kernelCommandLine(config: Pick<QemuVmConfig, "guestUid" | "tscKhz" | "rootVerity" | "agentVerity">): string {
  return [
    "console=ttyS0",
    ...(config.tscKhz !== undefined ? [`tsc_early_khz=${config.tscKhz}`] : []),
    "quiet",
    "panic=-1",
    "reboot=t",
    `mvm.uid=${config.guestUid}`,
    `mvm.verity_root=${verityWord("root disk", config.rootVerity)}`,
    `mvm.verity_agent=${verityWord("agent disk", config.agentVerity)}`,
  ].join(" ");
}

/** The argv after the QEMU binary. Throws InvalidArgumentError for an unsafe path or number. */
export function qemuArgs(config: QemuVmConfig): string[] {
  checkPath("kernelPath", config.kernelPath);
  checkPath("initrdPath", config.initrdPath);
  checkPath("rootDiskPath", config.rootDiskPath);
  checkPath("agentDiskPath", config.agentDiskPath);
  checkPath("workDiskPath", config.workDiskPath);
  if (config.ramFile) checkPath("ramFile", config.ramFile.path);
  checkInt("memoryMiB", config.memoryMiB, 128, 1024 * 1024);
  checkInt("cpus", config.cpus, 1, 256);
  checkInt("guestUid", config.guestUid, 1, 65_534);
  if (config.tscKhz !== undefined) checkInt("tscKhz", config.tscKhz, 100_000, 20_000_000);
  const memory = config.ramFile
    ? ["-object", `memory-backend-file,id=ram,size=${config.memoryMiB}M,mem-path=${config.ramFile.path},share=${config.ramFile.shared ? "on" : "off"}`]
    : [];
  return [
    "-M", `microvm,x-option-roms=off${config.ramFile ? ",memory-backend=ram" : ""}`,
    "-accel", config.accel,
    // Under TCG the default CPU model: with "max" the guest kernel can hang calibrating its TSC.
    ...(config.accel === "kvm" ? ["-cpu", "host"] : []),
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-m", String(config.memoryMiB),
    ...memory,
    "-smp", String(config.cpus),
    "-kernel", config.kernelPath,
    "-initrd", config.initrdPath,
    "-append", kernelCommandLine(config),
    "-drive", `id=root,file=${config.rootDiskPath},format=raw,if=none,readonly=on,file.locking=off`,
    "-device", "virtio-blk-device,drive=root",
    "-drive", `id=agent,file=${config.agentDiskPath},format=raw,if=none,readonly=on,file.locking=off`,
    "-device", "virtio-blk-device,drive=agent",
    "-drive", `id=work,file=${config.workDiskPath},format=raw,if=none,discard=unmap,file.locking=off`,
    "-device", "virtio-blk-device,drive=work",
    // Free page reporting: pages the guest frees are handed back to the host, so an idle VM holds
    // about what its guest uses, and a saved VM's stream skips them. No inflation: deflate-on-oom.
    "-device", "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on",
    // Port 0 is reserved for a console; the three named ports are 1 to 3.
    "-device", "virtio-serial-device,max_ports=4",
    "-chardev", "stdio,id=agentch,signal=off",
    "-device", `virtserialport,chardev=agentch,name=${AGENT_PORT_NAME}`,
    "-chardev", `socket,id=ctl,fd=${CONTROL_FD}`,
    "-device", `virtserialport,chardev=ctl,name=${CONTROL_PORT_NAME}`,
    "-chardev", `socket,id=relay,fd=${RELAY_FD}`,
    "-device", `virtserialport,chardev=relay,name=${RELAY_PORT_NAME}`,
    "-chardev", `socket,id=con,fd=${CONSOLE_FD}`,
    "-serial", "chardev:con",
    "-chardev", `socket,id=qmp,fd=${QMP_FD}`,
    "-mon", "chardev=qmp,mode=control",
    ...(config.incoming ? ["-incoming", "defer"] : []),
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
  ];
}
