/**
 * The VM backend: each sandbox is a QEMU `microvm` guest with its own Linux kernel (Debian's
 * cloud kernel), booted from a busybox initramfs that opens the image and the agent runtime as
 * dm-verity-protected read-only disks, mounts a writable per-sandbox work disk, and starts the
 * agent as an unprivileged uid under the namespace tier's seccomp filter. The agent channel is a
 * virtio-serial port that QEMU connects to its stdin/stdout, so protocol v1 runs unchanged. The
 * guest has no network device: the agent's egress relay is a second virtio-serial port on an
 * inherited socket (`relay`), and a sandbox's trust bundle reaches the guest on the init's control
 * port before the agent's hello.
 * QEMU runs jailed (jail.ts): bubblewrap namespaces, its own unprivileged host uid, no_new_privs,
 * its seccomp sandbox, and no host path but its own program files, the sandbox's guest RAM file
 * (ram-file.ts: guest RAM lives in a tmpfs file of the sandbox's own, which is what snapshots and
 * restores copy) and its save directory.
 *
 * Snapshots (vm-snapshot.ts, docs/SNAPSHOTS.md): a sandbox starts from its shape's boot snapshot
 * (booted and saved on first use; in the snapshot store when one is given) or from a user
 * snapshot (`LaunchSpec.restore`), either way on copies of its RAM and work disk.
 *
 * Tier "vm-hardware" when /dev/kvm is usable, else "vm-emulated" (TCG).
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { chown, lstat, open, readFile, readdir, rm, stat, type FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { AbortedError, AdmissionError, InvalidArgumentError, MvmError, type Sha256Digest, SnapshotMismatchError, UnsupportedCapabilityError } from "@mvm/protocol";
import { killIfSame, listProcessesWithId, readProcStat, sendSignal, waitForExit } from "../../_internal/proc.js";
import { findExecutable } from "../namespace/probe.js";
import { SANDBOX_UID_BASE, SANDBOX_UID_SPAN, SandboxUidAllocator } from "../namespace/uid.js";
import type { Backend, LaunchSpec, ProbeCheck, ProbeResult, ReapRecord } from "../types.js";
import { trustRequest, type GuestLimits } from "./control.js";
import { buildExt4Image, createWorkDisk, verifyDiskOnce } from "./disk.js";
import { AGENT_DISK_LABEL, AGENT_START_LINE, ROOT_DISK_LABEL, WORK_DISK_LABEL } from "./init-script.js";
import { buildInitramfs } from "./initramfs.js";
import { jailDeviceGroups, jailedDeviceAccess, qemuJailFiles, type JailFile } from "./jail.js";
import { STATE_FD } from "./qemu.js";
import { restoreVmState } from "./snapshot-io.js";
import { SavedVmStore, hashFile, qemuIdentity, shapeKey, type SavedVm, type VmShape } from "./snapshots.js";
import type { SnapshotShape } from "../../store/manifest.js";
import type { SnapshotStore } from "../../store/snapshot-store.js";
import { BootSnapshots, type OpenedBootSnapshot } from "./boot-snapshots.js";
import { DEFAULT_RAM_ROOT, copySparse, makeSandboxRam, removeSandboxRam, sweepSandboxRam, type SandboxRam } from "./ram-file.js";
import { backendShape, captureVm, deviceHeader, readDeviceHeader, warmUp } from "./vm-snapshot.js";
import type { VerityInfo } from "./verity/index.js";
import { VmProcess, vmQemuArgs, type SpawnVmOptions, type VmHostFiles } from "./vm-process.js";
import { buildGuestHelper } from "./guest-helper.js";
import { sandboxSeccompProgram } from "../namespace/seccomp.js";
import { type GuestKernel, ensureGuestKernel, importGuestKernel, openGuestKernel } from "./kernel.js";
import { parseTscKhz, type VerityParams } from "./qemu.js";
import { VmSandbox } from "./vm-sandbox.js";
import type { HostFacts } from "../../store/host-facts.js";

/** Memory for the sandbox's processes when it sets no limit, MiB. */
export const DEFAULT_VM_MEMORY_MIB = 512;
/** Guest RAM on top of the sandbox's memory: kernel, init, page cache of the disks, MiB. */
export const GUEST_OVERHEAD_MIB = 96;
/** How long a cold boot may take to reach a ready agent, ms (TCG on a busy host is slow). */
export const DEFAULT_BOOT_TIMEOUT_MS = 90_000;
/** How long the guest init may take to answer on its control port, ms. */
const CONTROL_TIMEOUT_MS = 15_000;
/** Deadlines for QMP's greeting, saving a VM and restoring one, ms. */
const QMP_TIMEOUT_MS = 15_000;
const SAVE_TIMEOUT_MS = 120_000;
const RESTORE_TIMEOUT_MS = 60_000;
/** How long a VM about to be saved waits for its guest to report the memory it freed, ms. */
const FREE_PAGE_REPORT_WAIT_MS = 3_000;

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
  /**
   * A guest kernel the user names instead of Debian's cloud kernel: its image and its module tree
   * (which must hold virtio-mmio, virtio-blk, virtio-console and dm-verity as modules).
   */
  readonly kernel?: { readonly path: string; readonly modulesDir: string };
  /** bubblewrap, which jails QEMU. @default `bwrap` found on PATH or in the system directories */
  readonly bwrapPath?: string;
  /**
   * Keeps the sha256 of each stored guest kernel file between engine starts, reused while the
   * file's identity is unchanged. @default none: every file is hashed at each probe and launch
   */
  readonly facts?: HostFacts;
  /** Deadline for a cold boot to reach a ready agent, ms. @default DEFAULT_BOOT_TIMEOUT_MS */
  readonly bootTimeoutMs?: number;
  /**
   * Start sandboxes by restoring a saved VM of their shape (saved on first use) instead of
   * booting each. @default true
   */
  readonly savedVms?: boolean;
  /**
   * Directory (on tmpfs) for each sandbox's guest RAM file, one subdirectory per sandbox.
   * @default DEFAULT_RAM_ROOT ("/dev/shm/mvm-vm")
   */
  readonly ramRoot?: string;
  /**
   * The engine's snapshot store. When given, each shape's boot snapshot (the saved VM) is a
   * `kind: "boot"` snapshot in it, keyed by the shape, verified (chunks, then its read-only
   * template's identity) before each use; otherwise saved VMs live under `${cacheRoot}/saved`.
   */
  readonly snapshots?: SnapshotStore;
  /**
   * Take the engine's snapshot store for boot snapshots when the engine offers it
   * (`useSnapshotStore`), as `snapshots` would. openEngine sets it when the VM cache belongs to
   * the engine's state directory (the default layout); engines sharing another cache keep saved
   * VMs under `${cacheRoot}/saved`. @default false
   */
  readonly bootSnapshotsInEngineStore?: boolean;
}

/** The verity parameters the guest needs for a disk whose hash tree follows its data. */
function verityParams(info: VerityInfo): VerityParams {
  return {
    dataBlocks: info.dataBlocks,
    hashStartBlock: info.hashOffsetBytes / info.hashBlockSizeBytes,
    rootHashHex: info.rootHashHex,
    saltHex: info.saltHex,
  };
}


/** What the snapshot store records as a boot snapshot's shape. */
function storeShape(spec: LaunchSpec, p: Prepared): SnapshotShape {
  const shape = backendShape(p.shape);
  // The image's digest when the launch names one; else a digest of the image disk's key.
  const imageDigest = /^sha256:[0-9a-f]{64}$/.test(spec.rootfsDigest ?? "") ? spec.rootfsDigest! : `sha256:${createHash("sha256").update(p.shape.rootDiskKey).digest("hex")}`;
  return {
    tier: p.config.accel === "kvm" ? "vm-hardware" : "vm-emulated",
    imageDigest: imageDigest as Sha256Digest,
    ...(shape.kernelDigest !== undefined ? { kernelDigest: shape.kernelDigest as Sha256Digest } : {}),
    ...(shape.initramfsDigest !== undefined ? { initramfsDigest: shape.initramfsDigest as Sha256Digest } : {}),
    ...(shape.qemu !== undefined ? { qemu: shape.qemu } : {}),
    cpus: p.shape.cpus,
    memoryMiB: p.shape.memoryMiB,
    workMiB: p.shape.workMiB,
  };
}

/**
 * Throws before anything starts when the trust bundle cannot be installed: InvalidArgumentError
 * for its size, AdmissionError when the image has no /run directory to mount it under.
 */
async function checkTrustBundle(spec: LaunchSpec, pem: string): Promise<void> {
  trustRequest(pem, spec.sandboxId);
  const run = await lstat(join(spec.rootfsDir, "run")).catch(() => undefined);
  if (run === undefined || !run.isDirectory()) {
    throw new AdmissionError(`Cannot start sandbox "${spec.sandboxId}": the image has no /run directory for the trust bundle`, {
      hint: "add an empty /run directory to the image",
    });
  }
}

interface Host {
  readonly qemuPath: string;
  readonly bwrapPath: string;
  readonly setprivPath?: string;
  readonly isRoot: boolean;
}

/** A sandbox's VM, ready to spawn: host tools, files, QEMU config, guest limits and shape. */
interface Prepared {
  readonly host: Host;
  readonly qemuFiles: readonly JailFile[];
  readonly files: Omit<VmHostFiles, "workDiskPath" | "ramPath" | "saveDir" | "load">;
  readonly config: SpawnVmOptions["config"];
  readonly limits: GuestLimits;
  readonly shape: VmShape;
}

/**
 * What a restore starts from, opened read-only and checked: RAM and work templates to copy and the
 * device state positioned past its header. `saved` when it is the saved VM of the shape.
 */
interface Restore {
  readonly ram: FileHandle;
  readonly device: FileHandle;
  readonly work: FileHandle;
  readonly saved?: SavedVm;
  /** A boot snapshot in the snapshot store: marked used after a launch, dropped when it does not load. */
  readonly boot?: OpenedBootSnapshot;
}

interface BootArtifacts {
  readonly kernel: GuestKernel;
  readonly initrdPath: string;
}

/** Whether KVM can run this backend's guests, and why not when it cannot. */
export interface KvmStatus {
  readonly usable: boolean;
  readonly detail: string;
  readonly hint?: string;
}

/**
 * KVM is used only when all of these hold:
 * - /dev/kvm opens read-write for the engine;
 * - it is hardware virtualization: the kvm_intel or kvm_amd module is loaded. Other KVM providers
 *   (a paravirtual one such as kvm_pvm inside a cloud VM) run only guest kernels built for them,
 *   and Debian's kernel is not; a guest booted there crashes;
 * - when the engine runs as root, QEMU runs as an unprivileged uid, which must be able to open
 *   the device too: through "other" permissions or a non-root group (0660 root:kvm, as udev sets it).
 */
export async function kvmStatus(sysModuleDir = "/sys/module", device = "/dev/kvm"): Promise<KvmStatus> {
  try {
    const handle = await open(device, constants.O_RDWR);
    await handle.close();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT"
      ? { usable: false, detail: `${device} does not exist: guests run emulated (TCG), slowly`, hint: "Enable hardware virtualization (VT-x/AMD-V) and load kvm_intel or kvm_amd" }
      : { usable: false, detail: `${device} cannot be opened (${code ?? String(err)}): guests run emulated (TCG), slowly`, hint: `Give the engine read-write access to ${device}` };
  }
  const vendor = (await Promise.all(["kvm_intel", "kvm_amd"].map((m) => stat(join(sysModuleDir, m)).then(() => m, () => undefined)))).find((m) => m !== undefined);
  if (vendor === undefined) {
    const providers = (await readdir(sysModuleDir).catch(() => [] as string[])).filter((m) => /^kvm_/.test(m));
    return {
      usable: false,
      detail: `${device} is not hardware virtualization (no kvm_intel or kvm_amd${providers.length > 0 ? `; provider: ${providers.join(", ")}` : ""}): it cannot run the stock guest kernel, so guests run emulated (TCG), slowly`,
      hint: "Run on a host (or a VM with nested virtualization) that exposes VT-x or AMD-V",
    };
  }
  if (process.geteuid?.() === 0) {
    const info = await stat(device);
    if (jailedDeviceAccess(info) === undefined) {
      return {
        usable: false,
        detail: `${device} (${vendor}) opens only for root (mode ${(info.mode & 0o777).toString(8)}, gid ${info.gid}), and QEMU runs as an unprivileged uid: guests run emulated (TCG), slowly`,
        hint: `Give ${device} to group kvm as udev does: groupadd --system kvm; chgrp kvm ${device}; chmod 0660 ${device} (scripts/setup.sh does this)`,
      };
    }
  }
  return { usable: true, detail: `${device} is usable (${vendor}): hardware virtualization` };
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
  private readonly uids = new SandboxUidAllocator();
  private readonly saved: SavedVmStore;
  private readonly ramRoot: string;
  /** Boot snapshots in the snapshot store, when the engine gave one. */
  private boots: BootSnapshots | undefined;

  constructor(private readonly options: VmBackendOptions) {
    if (!options.cacheRoot.startsWith("/")) throw new InvalidArgumentError(`Invalid cacheRoot "${options.cacheRoot}": must be an absolute path`);
    const uid = options.guestUid ?? 1000;
    if (!Number.isInteger(uid) || uid < 1 || uid > 65_534) throw new InvalidArgumentError(`Invalid guestUid "${uid}": must be from 1 to 65534`);
    this.saved = new SavedVmStore(join(options.cacheRoot, "saved"));
    this.ramRoot = options.ramRoot ?? DEFAULT_RAM_ROOT;
    this.boots = options.snapshots !== undefined ? new BootSnapshots(options.snapshots, join(options.cacheRoot, "boot-builds")) : undefined;
    if (!this.ramRoot.startsWith("/")) throw new InvalidArgumentError(`Invalid ramRoot "${this.ramRoot}": must be an absolute path`);
  }

  /** The engine's snapshot store, offered once it is open (see `bootSnapshotsInEngineStore`). */
  useSnapshotStore(store: SnapshotStore): void {
    if (this.boots === undefined && this.options.bootSnapshotsInEngineStore === true) {
      this.boots = new BootSnapshots(store, join(this.options.cacheRoot, "boot-builds"));
    }
  }

  /** Kernel (fetched on first use) and initramfs, found once; a failure is retried next time. */
  private boot(): Promise<BootArtifacts> {
    if (this.artifacts === undefined) {
      const pending = (async () => {
        const store = join(this.options.cacheRoot, "kernel");
        const named = this.options.kernel;
        const kernel = named ? await importGuestKernel(store, named.path, named.modulesDir) : await ensureGuestKernel(store, this.options.facts);
        const helper = await buildGuestHelper({ outRoot: join(this.options.cacheRoot, "guest-helper") });
        const initrd = await buildInitramfs({
          kernel,
          guestHelperPath: helper.path,
          seccompProgram: sandboxSeccompProgram(),
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
    if (wanted === "tcg") return "tcg";
    const kvm = await kvmStatus();
    if (wanted === "kvm" && !kvm.usable) {
      throw new UnsupportedCapabilityError(`The vm backend was configured for KVM, which this host cannot give it: ${kvm.detail}`, kvm.hint !== undefined ? { hint: kvm.hint } : {});
    }
    return kvm.usable ? "kvm" : "tcg";
  }

  async probe(): Promise<ProbeResult> {
    const [qemu, mkfs, kvm, kernel] = await Promise.all([
      findExecutable("qemu-system-x86_64", this.options.qemuPath),
      findExecutable("mkfs.ext4"),
      kvmStatus(),
      this.storedKernel(),
    ]);
    const checks: ProbeCheck[] = [
      qemu !== undefined
        ? { name: "qemu", ok: true, detail: `QEMU at ${qemu}` }
        : { name: "qemu", ok: false, detail: "qemu-system-x86_64 not found", hint: "Install the qemu-system-x86 package" },
      mkfs !== undefined
        ? { name: "mkfs.ext4", ok: true, detail: `mkfs.ext4 at ${mkfs}` }
        : { name: "mkfs.ext4", ok: false, detail: "mkfs.ext4 not found", hint: "Install the e2fsprogs package" },
      { name: "kvm", ok: kvm.usable, detail: kvm.detail, ...(kvm.hint !== undefined ? { hint: kvm.hint } : {}) },
      kernel !== undefined
        ? { name: "kernel", ok: true, detail: `guest kernel ${kernel.version} (${kernel.digest})` }
        : { name: "kernel", ok: false, detail: "no guest kernel stored yet", hint: "The first launch fetches it with apt-get (needs the Debian mirror)" },
    ];
    return {
      backend: "vm",
      tier: kvm.usable && this.options.accel !== "tcg" ? "vm-hardware" : "vm-emulated",
      // Configured for KVM on a host that cannot give it: refused, never run emulated instead.
      usable: qemu !== undefined && mkfs !== undefined && (this.options.accel !== "kvm" || kvm.usable),
      checks,
      enforceable: { memory: true, pids: true, cpu: true },
    };
  }

  private async storedKernel(): Promise<GuestKernel | undefined> {
    const root = join(this.options.cacheRoot, "kernel");
    try {
      return await openGuestKernel(root, (await readFile(join(root, "current"), "utf8")).trim(), this.options.facts);
    } catch {
      return undefined;
    }
  }

    /** Host pieces the launch needs; missing ones are UnsupportedCapabilityError. */
  private async host(): Promise<Host> {
    const isRoot = process.geteuid?.() === 0;
    const [qemuPath, bwrapPath, setprivPath] = await Promise.all([
      findExecutable("qemu-system-x86_64", this.options.qemuPath),
      findExecutable("bwrap", this.options.bwrapPath),
      isRoot ? findExecutable("setpriv") : Promise.resolve(undefined),
    ]);
    if (qemuPath === undefined) throw new UnsupportedCapabilityError("The vm backend needs qemu-system-x86_64, which was not found", { hint: "Install the qemu-system-x86 package" });
    if (bwrapPath === undefined) throw new UnsupportedCapabilityError("The vm backend jails QEMU with bubblewrap, which was not found", { hint: "Install the bubblewrap package" });
    if (isRoot && setprivPath === undefined) throw new UnsupportedCapabilityError("The vm backend needs setpriv when the engine runs as root", { hint: "Install util-linux" });
    return { qemuPath, bwrapPath, isRoot, ...(setprivPath !== undefined ? { setprivPath } : {}) };
  }

  /** The guest's shape for `spec`: RAM, vCPUs and the limits its init applies. */
  private shape(spec: LaunchSpec): { memoryMiB: number; cpus: number; limits: GuestLimits } {
    const { memoryMiB, pids, cpus } = spec.resources;
    const sandboxMiB = memoryMiB ?? DEFAULT_VM_MEMORY_MIB;
    // A restore runs on the RAM and vCPUs it was taken with (the engine checks they are the spec's).
    const taken = spec.restore?.shape;
    const checked = (label: string, value: number | undefined, min: number, max: number): number | undefined => {
      if (value === undefined) return undefined;
      if (!Number.isInteger(value) || value < min || value > max) throw new SnapshotMismatchError(`Cannot restore sandbox "${spec.sandboxId}": the snapshot's ${label} "${value}" is not an integer from ${min} to ${max}`);
      return value;
    };
    return {
      memoryMiB: checked("memoryMiB", taken?.memoryMiB, 128, 1024 * 1024) ?? sandboxMiB + GUEST_OVERHEAD_MIB,
      cpus: checked("cpus", taken?.cpus, 1, 256) ?? Math.max(1, Math.ceil(cpus ?? 1)),
      limits: {
        ...(memoryMiB !== undefined ? { memoryBytes: memoryMiB * 1024 * 1024 } : {}),
        ...(pids !== undefined ? { pids } : {}),
        ...(cpus !== undefined ? { cpuQuotaUs: Math.max(1000, Math.round(cpus * 100_000)) } : {}),
        tmpMiB: spec.tmpMiB,
      },
    };
  }

  /** Everything a VM of `spec` needs that is shared between sandboxes: kernel, initramfs, disks. */
  private async prepare(spec: LaunchSpec, host: Host): Promise<Prepared> {
    const disks = this.options.diskRoot ?? join(this.options.cacheRoot, "disks");
    const accel = await this.accel();
    const [boot, rootDisk, agentDisk, qemuFiles, qemu] = await Promise.all([
      this.boot(),
      buildExt4Image({
        sourceDir: spec.rootfsDir, outRoot: disks, mountPoints: ROOT_MOUNT_POINTS, label: ROOT_DISK_LABEL, verity: true,
        ...(spec.rootfsDigest !== undefined ? { contentKey: `image:${spec.rootfsDigest}` } : {}),
      }),
      buildExt4Image({
        sourceDir: spec.agentDir, outRoot: disks, label: AGENT_DISK_LABEL, verity: true,
        // The runtime directory is named by the sha256 of its manifest (runtime/agent-runtime.ts).
        ...(/^[0-9a-f]{64}$/.test(basename(spec.agentDir)) ? { contentKey: `runtime:${basename(spec.agentDir)}` } : {}),
      }),
      qemuJailFiles(host.qemuPath),
      qemuIdentity(host.qemuPath),
    ]);
    // Fails closed on a disk modified since it was built; the guest checks every block it reads too.
    await Promise.all([verifyDiskOnce(rootDisk.verity!), verifyDiskOnce(agentDisk.verity!)]);
    const tscKhz = accel === "tcg" ? parseTscKhz(await readFile("/proc/cpuinfo", "utf8").catch(() => "")) : undefined;
    const { memoryMiB, cpus, limits } = this.shape(spec);
    const guestUid = this.options.guestUid ?? 1000;
    const config: SpawnVmOptions["config"] = {
      accel,
      ...(tscKhz !== undefined ? { tscKhz } : {}),
      rootVerity: verityParams(rootDisk.verity!),
      agentVerity: verityParams(agentDisk.verity!),
      memoryMiB,
      cpus,
      guestUid,
    };
    return {
      host,
      qemuFiles,
      files: { kernelPath: boot.kernel.kernelPath, initrdPath: boot.initrdPath, rootDiskPath: rootDisk.path, agentDiskPath: agentDisk.path },
      config,
      limits,
      shape: {
        kernelDigest: boot.kernel.digest,
        initrdPath: boot.initrdPath,
        rootDiskKey: rootDisk.key,
        agentDiskKey: agentDisk.key,
        memoryMiB,
        cpus,
        workMiB: spec.workMiB,
        accel,
        ...(tscKhz !== undefined ? { tscKhz } : {}),
        guestUid,
        qemu,
        argsDigest: createHash("sha256").update(vmQemuArgs(config, false).join("\0")).digest("hex"),
      },
    };
  }

  private spawnVm(p: Prepared, label: string, uid: number | undefined, workDiskPath: string, consoleLogPath: string, ram: SandboxRam, load?: FileHandle): Promise<VmProcess> {
    return (async () =>
      VmProcess.spawn({
        label,
        qemuPath: p.host.qemuPath,
        bwrapPath: p.host.bwrapPath,
        ...(p.host.setprivPath !== undefined ? { setprivPath: p.host.setprivPath } : {}),
        ...(uid !== undefined ? { uid } : {}),
        ...(p.config.accel === "kvm" ? { devices: ["/dev/kvm"], ...(uid !== undefined ? { groups: await jailDeviceGroups(["/dev/kvm"]) } : {}) } : {}),
        qemuFiles: p.qemuFiles,
        config: p.config,
        files: { ...p.files, workDiskPath, ramPath: ram.ramPath, saveDir: ram.saveDir, ...(load !== undefined ? { load } : {}) },
        consoleLogPath,
      }))();
  }

  /**
   * Boots a VM of `p`'s shape to a ready agent and saves it into `dir` (`ram`, `device`, `work`),
   * after a warm-up and with the guest's caches dropped and freed pages reported; the VM is then
   * stopped.
   */
  private async saveVm(p: Prepared, dir: string): Promise<void> {
    const uid = p.host.isRoot ? await this.uids.allocate() : undefined;
    const work = join(dir, "work.boot");
    let vm: VmProcess | undefined;
    let ram: SandboxRam | undefined;
    try {
      await createWorkDisk(work, p.shape.workMiB, p.config.guestUid, WORK_DISK_LABEL);
      if (uid !== undefined) await chown(work, uid, uid);
      ram = await makeSandboxRam({ root: this.ramRoot, name: `saved-${basename(dir).replace(/^\./, "")}`, memoryMiB: p.config.memoryMiB, ...(uid !== undefined ? { owner: uid } : {}) });
      vm = await this.spawnVm(p, "saved-vm", uid, work, join(dir, "console.log"), ram);
      await vm.waitAgentReady(this.options.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS);
      await warmUp(vm);
      await vm.control.dropCaches(CONTROL_TIMEOUT_MS);
      // The guest reports freed memory to the host (free page reporting) about every 2 s; what it
      // has reported is punched out of the RAM file, so the saved RAM holds only what is in use.
      await new Promise((r) => setTimeout(r, FREE_PAGE_REPORT_WAIT_MS));
      const qmp = await vm.qmp(QMP_TIMEOUT_MS);
      await captureVm({ qmp, ram, workDiskPath: work, dir, header: deviceHeader(p.shape), ...(uid !== undefined ? { socketOwner: uid } : {}), resume: false, timeoutMs: SAVE_TIMEOUT_MS });
    } finally {
      const stopped = vm === undefined || (await vm.kill());
      await vm?.closeChannels().catch(() => undefined);
      if (uid !== undefined && stopped) this.uids.release(uid);
      await rm(work, { force: true });
      if (ram !== undefined) await rm(ram.dir, { recursive: true, force: true });
    }
  }

  /**
   * Starts a VM sandbox: restores `spec.restore` (a user snapshot: RAM, device state, work disk),
   * or the boot snapshot of its shape (saving one first, by a cold boot, when there is none and
   * saved VMs are on), or boots it cold. Either way the RAM file and work disk are the sandbox's
   * own copies, and the guest gets a fresh RNG seed, the host's clock and the sandbox's limits
   * before its agent says hello on `channel` (a user snapshot's guest keeps the trust bundle its
   * source had: `spec.trustBundlePem` is not installed again). Throws AdmissionError when a disk
   * fails its hash check or the VM dies while starting (with the reason its console gives),
   * SnapshotMismatchError before anything starts when a snapshot's shape or device header differs
   * from this VM's or a boot snapshot fails verification (that boot snapshot is then set aside, and
   * the next launch of its shape saves a new one), and when QEMU cannot load the state;
   * UnsupportedCapabilityError for a restore without memory; AbortedError when `signal` fires;
   * nothing is left running, on disk or in tmpfs.
   */
  async launch(spec: LaunchSpec, signal?: AbortSignal): Promise<VmSandbox> {
    const host = await this.host();
    const checkAbort = () => {
      if (signal?.aborted) throw new AbortedError(`Launch of "${spec.sandboxId}" aborted`, { cause: signal.reason });
    };
    checkAbort();
    const guestUid = this.options.guestUid ?? 1000;
    // The guest's agent uid is fixed per backend (its saved boots are shared by every sandbox of a shape).
    if (spec.user !== undefined && (spec.user.uid !== guestUid || spec.user.gid !== guestUid)) {
      throw new UnsupportedCapabilityError(`Cannot run sandbox "${spec.sandboxId}" as the image's user ${spec.user.uid}:${spec.user.gid}: the vm backend runs workloads as ${guestUid}:${guestUid} only`, {
        hint: `Use the namespace backend for this image, or an image whose user is ${guestUid}`,
      });
    }
    if (spec.trustBundlePem !== undefined && spec.restore === undefined) await checkTrustBundle(spec, spec.trustBundlePem);
    const p = await this.prepare(spec, host);
    checkAbort();
    let restore: Restore | undefined;
    if (spec.restore !== undefined) {
      restore = await this.openSnapshot(spec, p);
    } else if (this.options.savedVms !== false && this.boots !== undefined) {
      const boot = await this.boots.open(shapeKey(p.shape), deviceHeader(p.shape), async (dir) => {
        await this.saveVm(p, dir);
        return storeShape(spec, p);
      }, signal);
      restore = { ram: boot.ram, device: boot.device, work: boot.work, boot };
    } else if (this.options.savedVms !== false) {
      const saved = await this.saved.ensure(p.shape, async (dir) => {
        await this.saveVm(p, dir);
        const [ram, device, work] = await Promise.all([hashFile(join(dir, "ram")), hashFile(join(dir, "device")), hashFile(join(dir, "work"))]);
        return { ram, device, work };
      });
      checkAbort();
      // Checked before anything is made for the sandbox; QEMU gets the very descriptor checked.
      const parts = await this.saved.openVerified(saved, signal).catch(async (err: unknown) => {
        if (err instanceof SnapshotMismatchError) await this.saved.quarantine(saved).catch(() => undefined);
        throw err;
      });
      try {
        await readDeviceHeader(parts.device, deviceHeader(p.shape), `Saved VM "${saved.dir}"`);
      } catch (err) {
        await parts.close();
        if (err instanceof SnapshotMismatchError) await this.saved.quarantine(saved).catch(() => undefined);
        throw err;
      }
      restore = { ram: parts.ram, device: parts.device, work: parts.work, saved };
    }
    try {
      return await this.start(spec, p, restore, checkAbort, signal);
    } finally {
      await Promise.all([restore?.ram.close(), restore?.device.close(), restore?.work.close(), restore?.boot?.close()].map((c) => c?.catch(() => undefined)));
    }
  }

  /**
   * Opens a user snapshot's parts (engine-verified read-only templates) and checks that this VM
   * can load them: its shape (kernel, initramfs, QEMU, RAM, vCPUs) and the device header (disks,
   * QEMU arguments). Throws SnapshotMismatchError before anything starts when they differ.
   */
  private async openSnapshot(spec: LaunchSpec, p: Prepared): Promise<Restore> {
    const restore = spec.restore!;
    const what = `Cannot restore sandbox "${spec.sandboxId}"`;
    if (!restore.memory) {
      throw new UnsupportedCapabilityError(`${what}: the VM tier restores memory and disk together`, { hint: "restore a snapshot taken with memory" });
    }
    const { ram, device, work } = restore.parts;
    if (ram === undefined || device === undefined || work === undefined) throw new SnapshotMismatchError(`${what}: the snapshot lacks a ram, device or work part`);
    const mine = backendShape(p.shape);
    for (const key of ["kernelDigest", "initramfsDigest", "qemu", "cpus", "memoryMiB"] as const) {
      if (restore.shape[key] !== mine[key]) {
        throw new SnapshotMismatchError(`${what}: it was taken with ${key} "${String(restore.shape[key])}", this host has "${String(mine[key])}"`, {
          hint: "restore it with the kernel, initramfs and QEMU it was taken with, or take a new snapshot",
        });
      }
    }
    const handles: FileHandle[] = [];
    try {
      for (const path of [ram, device, work]) {
        const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: unknown) => {
          throw new SnapshotMismatchError(`${what}: cannot open its part "${path}"`, { cause: err });
        });
        handles.push(handle);
        if (!(await handle.stat()).isFile()) throw new SnapshotMismatchError(`${what}: its part "${path}" is not a regular file`);
      }
      await readDeviceHeader(handles[1]!, deviceHeader(p.shape), what);
      return { ram: handles[0]!, device: handles[1]!, work: handles[2]! };
    } catch (err) {
      await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
      throw err;
    }
  }

  /** Starts the sandbox's VM: restored from `restore` when given, else booted cold. */
  private async start(spec: LaunchSpec, p: Prepared, restore: Restore | undefined, checkAbort: () => void, signal: AbortSignal | undefined): Promise<VmSandbox> {
    const saved = restore?.saved;
    const uid = p.host.isRoot ? await this.uids.allocate() : undefined;
    const workDisk = join(spec.stateDir, "work.img");
    let vm: VmProcess | undefined;
    let ram: SandboxRam | undefined;
    try {
      ram = await makeSandboxRam({
        root: this.ramRoot, name: spec.sandboxId, memoryMiB: p.config.memoryMiB,
        ...(uid !== undefined ? { owner: uid } : {}),
        ...(restore !== undefined ? { template: restore.ram } : {}),
      });
      if (restore !== undefined) {
        await copySparse(restore.work, workDisk);
        if (uid !== undefined) await chown(workDisk, uid, uid);
        vm = await this.spawnVm(p, spec.sandboxId, uid, workDisk, spec.agentLogPath, ram, restore.device);
        await restoreVmState(await vm.qmp(QMP_TIMEOUT_MS), { fdNumber: STATE_FD, ignoreShared: true, timeoutMs: RESTORE_TIMEOUT_MS, ...(signal ? { signal } : {}) });
      } else {
        await createWorkDisk(workDisk, spec.workMiB, p.config.guestUid, WORK_DISK_LABEL);
        if (uid !== undefined) await chown(workDisk, uid, uid);
        vm = await this.spawnVm(p, spec.sandboxId, uid, workDisk, spec.agentLogPath, ram);
        await vm.waitAgentReady(this.options.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS, signal);
      }
      // A user snapshot's guest has its source's trust bundle installed already.
      await this.startAgent(vm, p.limits, spec.restore === undefined ? spec.trustBundlePem : undefined);
      checkAbort();
      if (saved !== undefined) await this.saved.touch(saved);
      if (restore?.boot !== undefined) await this.boots?.touch(restore.boot.snap);
      const sandboxUid = uid;
      return new VmSandbox({
        sandboxId: spec.sandboxId,
        vm,
        ownFiles: [workDisk, ram.dir],
        ram,
        workDiskPath: workDisk,
        header: deviceHeader(p.shape),
        shape: backendShape(p.shape),
        ...(uid !== undefined ? { uid } : {}),
        reapRecord: {
          backend: "vm",
          pid: vm.pid,
          pidStartTime: vm.pidStartTime,
          cgroups: [],
          extra: {
            kind: "qemu",
            start: spec.restore !== undefined ? "snapshot" : saved !== undefined ? "restore" : "boot",
            ramDir: ram.dir,
            ...(sandboxUid !== undefined ? { hostUid: String(sandboxUid) } : {}),
          },
        },
        release: () => {
          if (sandboxUid !== undefined) this.uids.release(sandboxUid);
        },
      });
    } catch (err) {
      const stopped = vm === undefined ? true : await vm.kill();
      const reason = vm?.deathReason();
      await vm?.closeChannels().catch(() => undefined);
      await rm(workDisk, { force: true }).catch(() => undefined);
      if (ram !== undefined) await rm(ram.dir, { recursive: true, force: true }).catch(() => undefined);
      if (uid !== undefined && stopped) this.uids.release(uid);
      if (err instanceof SnapshotMismatchError && saved !== undefined) await this.saved.quarantine(saved).catch(() => undefined);
      if (err instanceof SnapshotMismatchError && restore?.boot !== undefined) await this.boots?.drop(restore.boot.snap);
      if (err instanceof MvmError) throw err;
      if (signal?.aborted) throw new AbortedError(`Launch of "${spec.sandboxId}" aborted`, { cause: signal.reason });
      const message = err instanceof Error ? err.message : String(err);
      throw new AdmissionError(`Cannot start VM sandbox "${spec.sandboxId}": ${message}${reason !== undefined ? ` (${reason})` : ""}`, { cause: err });
    }
  }

  /** Installs the trust bundle (when given), reseeds the guest RNG, applies the limits, then lets the agent say hello. */
  private async startAgent(vm: VmProcess, limits: GuestLimits, trustBundlePem: string | undefined): Promise<void> {
    if (trustBundlePem !== undefined) await vm.control.installTrustBundle(trustBundlePem, CONTROL_TIMEOUT_MS);
    await vm.control.start(limits, CONTROL_TIMEOUT_MS);
    vm.child.stdin!.write(AGENT_START_LINE);
  }

  /**
   * Drops saved VMs unused for a week, half-built and quarantined ones and saves an engine left
   * (boot snapshots in the store go by the store's own sweep) older than an hour, and RAM
   * directories no process holds that are older than an hour.
   */
  async sweep(): Promise<string[]> {
    return [
      ...(await this.saved.sweep(60 * 60 * 1000, 7 * 24 * 60 * 60 * 1000)),
      ...(await sweepSandboxRam(this.ramRoot, 60 * 60 * 1000)),
      ...((await this.boots?.sweep(60 * 60 * 1000)) ?? []),
    ];
  }

  /**
   * Kills what a lost engine left of a VM sandbox: the jail's process group when its top process
   * is still the recorded one (same start time), and any process still running as the sandbox's
   * own host uid (QEMU, in its pid namespace); then removes its RAM directory.
   */
  async reap(record: ReapRecord): Promise<void> {
    if (record.backend !== "vm" || !Number.isInteger(record.pid) || record.pid <= 0) return;
    const stat = await readProcStat(record.pid);
    if (stat !== undefined && stat.startTime === record.pidStartTime) {
      const comm = await readFile(`/proc/${record.pid}/comm`, "utf8").catch(() => "");
      if (/^(bwrap|sh|setpriv|qemu-system)/.test(comm)) {
        sendSignal(-record.pid, "SIGKILL");
        await killIfSame(record.pid, record.pidStartTime);
        await waitForExit(record.pid, record.pidStartTime, 5_000);
      }
    }
    const uid = Number(record.extra["hostUid"]);
    if (Number.isInteger(uid) && uid >= SANDBOX_UID_BASE && uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN) {
      for (const pid of await listProcessesWithId(uid)) sendSignal(pid, "SIGKILL");
    }
    const ramDir = record.extra["ramDir"];
    if (ramDir !== undefined) await removeSandboxRam(this.ramRoot, ramDir);
  }
}
