/**
 * One QEMU process in its jail, and the host's ends of its channels: the agent channel (QEMU's
 * stdin/stdout), the guest init's control port, the agent's egress relay port, the QMP monitor and
 * the serial console.
 *
 * Every file QEMU reads or writes is opened here, by the engine, and handed down as a descriptor:
 * the kernel and initramfs are bound into the jail from their descriptors (so the jail needs no
 * path to them), the disks reach QEMU as fd sets (`-add-fd`, `/dev/fdset/N`), the saved state as
 * a descriptor too. The guest RAM file (ram-file.ts) is bound into the jail from its descriptor
 * at RAM_JAIL_PATH, writable (QEMU 7.2 opens `mem-path` itself, read-write, and has no fd set for
 * it), and the sandbox's save directory read-only at SAVE_SOCKET_DIR (QEMU only connects to the
 * engine's socket there). QEMU itself never opens a host path but these and its own program files.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import type { Duplex, Readable } from "node:stream";
import { AdmissionError, TransportError } from "@mvm/protocol";
import { readProcStartTimeSync, sendSignal } from "../../_internal/proc.js";
import { CappedLog } from "../namespace/agent-log.js";
import { settlesWithin } from "../_teardown.js";
import { ControlPort } from "./control.js";
import { AGENT_READY_LINE } from "./init-script.js";
import { jailArgv, type JailFile } from "./jail.js";
import { CONSOLE_FD, CONTROL_FD, QMP_FD, RELAY_FD, STATE_FD, qemuArgs, type QemuVmConfig } from "./qemu.js";
import { QmpClient } from "./qmp.js";

export type ExitStatus = { code: number | null; signal: NodeJS.Signals | null };

/** Descriptor numbers, in QEMU, of the files it gets (the table of every fd is in qemu.ts). */
const KERNEL_FD = 7;
const INITRD_FD = 8;
const DISK_FDS = { root: 9, agent: 10, work: 11 } as const;
/** The work disk opened read-only as well: QEMU opens a writable drive read-only first to probe it. */
const WORK_RO_FD = 12;
/** The directory of the save socket. */
const SAVE_DIR_FD = 13;
/** The guest RAM file. */
const RAM_FD = 15;
/** Where the guest RAM file appears in the jail. */
export const RAM_JAIL_PATH = "/vm/ram";
/** Where the save socket's directory appears in the jail. */
export const SAVE_SOCKET_DIR = "/vm/save";
/** How long QEMU may take to exit after SIGKILL, ms. */
export const QEMU_EXIT_MS = 5_000;
/** Console bytes kept from the end, for error messages. */
const CONSOLE_TAIL_BYTES = 8 * 1024;

export interface VmHostFiles {
  readonly kernelPath: string;
  readonly initrdPath: string;
  readonly rootDiskPath: string;
  readonly agentDiskPath: string;
  readonly workDiskPath: string;
  /** The guest RAM file (the sandbox's own, of exactly the VM's RAM size). */
  readonly ramPath: string;
  /**
   * The sandbox's save directory, bound read-only at SAVE_SOCKET_DIR: QEMU connects to the
   * engine's socket there to stream its device state (QEMU 7.2 saves only to a socket or a process).
   */
  readonly saveDir: string;
  /**
   * Restore the device state QEMU reads from `handle` (opened read-only and checked by the caller,
   * who keeps it open until `spawn` returns, positioned where the QEMU stream starts).
   */
  readonly load?: FileHandle;
}

export interface SpawnVmOptions {
  readonly label: string;
  readonly qemuPath: string;
  readonly bwrapPath: string;
  readonly setprivPath?: string;
  /** The unprivileged host uid QEMU runs as (root engines). */
  readonly uid?: number;
  readonly groups?: readonly number[];
  readonly devices?: readonly string[];
  readonly qemuFiles: readonly JailFile[];
  readonly config: Omit<QemuVmConfig, "kernelPath" | "initrdPath" | "rootDiskPath" | "agentDiskPath" | "workDiskPath" | "incoming" | "ramFile">;
  readonly files: VmHostFiles;
  readonly consoleLogPath: string;
}

/**
 * QEMU's arguments for a VM of `config`: every file named by its jail path or fd set, so they are
 * the same for every sandbox of one shape (saving and restoring need that).
 */
export function vmQemuArgs(config: SpawnVmOptions["config"], incoming: boolean): string[] {
  return [
    ...Object.entries(DISK_FDS).flatMap(([name, fd], i) => ["-add-fd", `fd=${fd},set=${i + 1},opaque=${name}`]),
    "-add-fd", `fd=${WORK_RO_FD},set=3,opaque=work-ro`,
    ...qemuArgs({
      ...config,
      ramFile: { path: RAM_JAIL_PATH, shared: true },
      kernelPath: "/vm/vmlinuz",
      initrdPath: "/vm/initrd",
      rootDiskPath: "/dev/fdset/1",
      agentDiskPath: "/dev/fdset/2",
      workDiskPath: "/dev/fdset/3",
      incoming,
    }),
  ];
}

export class VmProcess {
  readonly exited: Promise<ExitStatus>;
  #consoleTail = Buffer.alloc(0);
  #stderr = "";
  #control: ControlPort | undefined;
  #qmp: Promise<QmpClient> | undefined;

  private constructor(
    readonly label: string,
    readonly child: ChildProcess,
    readonly pidStartTime: string,
    readonly log: CappedLog,
  ) {
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, sig) => resolve({ code, signal: sig }));
      child.once("error", () => resolve({ code: null, signal: null }));
    });
    const console = child.stdio[CONSOLE_FD] as Readable;
    log.follow(console);
    console.on("data", (chunk: Buffer) => {
      this.#consoleTail = Buffer.concat([this.#consoleTail, chunk]).subarray(-CONSOLE_TAIL_BYTES);
    });
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      if (this.#stderr.length < 4096) this.#stderr += chunk.slice(0, 4096 - this.#stderr.length);
    });
  }

  /** Opens the files, starts the jailed QEMU. Nothing is left open or running when it throws. */
  static async spawn(options: SpawnVmOptions): Promise<VmProcess> {
    const handles: FileHandle[] = [];
    const openFile = async (path: string, flags: number): Promise<number> => {
      // Node opens files close-on-exec; spawn dups the listed descriptors into the child.
      const handle = await open(path, flags);
      handles.push(handle);
      return handle.fd;
    };
    let log: CappedLog | undefined;
    try {
      const { files } = options;
      const kernelFd = await openFile(files.kernelPath, constants.O_RDONLY);
      const initrdFd = await openFile(files.initrdPath, constants.O_RDONLY);
      const rootFd = await openFile(files.rootDiskPath, constants.O_RDONLY);
      const agentFd = await openFile(files.agentDiskPath, constants.O_RDONLY);
      const workFd = await openFile(files.workDiskPath, constants.O_RDWR);
      const workReadFd = await openFile(files.workDiskPath, constants.O_RDONLY);
      const saveDirFd = await openFile(files.saveDir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
      const ramFd = await openFile(files.ramPath, constants.O_RDWR | constants.O_NOFOLLOW);
      const stateFd: number | "ignore" = files.load !== undefined ? files.load.fd : "ignore";
      const args = vmQemuArgs(options.config, files.load !== undefined);
      const argv = jailArgv({
        bwrapPath: options.bwrapPath,
        ...(options.setprivPath !== undefined ? { setprivPath: options.setprivPath } : {}),
        ...(options.uid !== undefined ? { uid: options.uid } : {}),
        ...(options.groups !== undefined ? { groups: options.groups } : {}),
        ...(options.devices !== undefined ? { devices: options.devices } : {}),
        qemuPath: options.qemuPath,
        qemuArgs: args,
        files: [
          ...options.qemuFiles,
          { hostPath: files.kernelPath, fd: KERNEL_FD, jailPath: "/vm/vmlinuz" },
          { hostPath: files.initrdPath, fd: INITRD_FD, jailPath: "/vm/initrd" },
          { hostPath: files.saveDir, fd: SAVE_DIR_FD, jailPath: SAVE_SOCKET_DIR },
          { hostPath: files.ramPath, fd: RAM_FD, jailPath: RAM_JAIL_PATH, writable: true },
        ],
      });
      log = await CappedLog.open(options.consoleLogPath);
      const child = spawn(argv[0]!, argv.slice(1), {
        stdio: ["pipe", "pipe", "pipe", "pipe", "pipe", "pipe", stateFd, kernelFd, initrdFd, rootFd, agentFd, workFd, workReadFd, saveDirFd, "pipe", ramFd],
        detached: true,
        env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
      });
      const startTime = child.pid !== undefined ? readProcStartTimeSync(child.pid) : undefined;
      const vm = new VmProcess(options.label, child, startTime ?? "", log);
      if (child.pid === undefined || startTime === undefined) {
        await vm.kill();
        throw new AdmissionError(`Cannot start QEMU for "${options.label}": ${vm.stderr() || "spawn failed"}`);
      }
      return vm;
    } catch (err) {
      await log?.close(1_000);
      throw err;
    } finally {
      // The child holds its own copies.
      await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
    }
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  /** The agent's channel ends: QEMU's stdout (agent → host) and stdin. */
  get agentOut(): Readable {
    return this.child.stdout!;
  }

  get control(): ControlPort {
    this.#control ??= new ControlPort(this.stdio(CONTROL_FD), this.label);
    return this.#control;
  }

  /**
   * The host's end of the agent's egress relay port. A VM restored from a saved one has a new
   * socket here; the guest's agent opens the port only after its start line, so nothing it sent
   * is lost with the saved VM's socket.
   */
  get relay(): Duplex {
    return this.stdio(RELAY_FD);
  }

  qmp(timeoutMs: number): Promise<QmpClient> {
    this.#qmp ??= QmpClient.connect(this.stdio(QMP_FD), { timeoutMs, label: this.label });
    return this.#qmp;
  }

  private stdio(fd: number): Duplex {
    return (this.child.stdio as unknown as Array<Duplex | null>)[fd]!;
  }

  /** The last bytes of the serial console (kernel messages, init lines), as text. */
  consoleTail(): string {
    return this.#consoleTail.toString("utf8");
  }

  stderr(): string {
    return this.#stderr;
  }

  /**
   * Why the VM died, from what QEMU and the guest printed: a kernel panic (with its reason line),
   * a failed init step, or QEMU's own error. Undefined when nothing says.
   */
  deathReason(): string | undefined {
    const tail = this.consoleTail();
    const verity = /device-mapper: verity: [^\n]*corrupted[^\n]*/.exec(tail)?.[0];
    if (verity !== undefined) return `the guest kernel found a tampered disk block (${verity.trim()})`;
    const panic = /Kernel panic - not syncing: [^\n]*/.exec(tail)?.[0];
    if (panic !== undefined) return `the guest kernel panicked: ${panic.trim()}`;
    const init = [...tail.matchAll(/mvm-init: [^\n]*/g)].pop()?.[0];
    if (init !== undefined) return init.trim();
    const { exitCode, signalCode } = this.child;
    if (signalCode !== null) return `QEMU's jail was killed by ${signalCode}`;
    // bubblewrap exits with its child's status, 128 + N when the child died of signal N.
    if (exitCode !== null && exitCode > 128) return `QEMU died of signal ${exitCode - 128}`;
    const qemu = this.#stderr.trim().split("\n").pop();
    if (qemu) return `QEMU: ${qemu}`;
    if (exitCode !== null) return `QEMU exited with status ${exitCode}`;
    return undefined;
  }

  /**
   * Waits for the agent's ready line (the first bytes it sends), at most `timeoutMs`. Throws
   * AdmissionError naming the reason when the VM dies or says something else first.
   */
  async waitAgentReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const out = this.agentOut;
    const want = Buffer.from(AGENT_READY_LINE);
    let got = Buffer.alloc(0);
    let onData: (chunk: Buffer) => void = () => undefined;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: () => void = () => undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        onData = (chunk: Buffer) => {
          got = Buffer.concat([got, chunk]);
          const n = Math.min(got.length, want.length);
          if (!got.subarray(0, n).equals(want.subarray(0, n))) reject(new TransportError(`Agent of "${this.label}" sent unexpected bytes before it was ready`));
          else if (got.length === want.length) resolve();
          else if (got.length > want.length) reject(new TransportError(`Agent of "${this.label}" sent bytes after its ready line`));
        };
        out.on("data", onData);
        timer = setTimeout(() => reject(new AdmissionError(`The VM of "${this.label}" did not get ready within ${timeoutMs} ms${this.#why()}`)), timeoutMs);
        onAbort = () => reject(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
        signal?.addEventListener("abort", onAbort, { once: true });
        void this.exited.then(() => reject(new AdmissionError(`The VM of "${this.label}" stopped while booting${this.#why()}`)));
      });
    } finally {
      out.off("data", onData);
      out.pause();
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  #why(): string {
    const reason = this.deathReason();
    return reason === undefined ? "" : `: ${reason}`;
  }

  /** True while QEMU has not exited. */
  running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** SIGKILLs the jail's process group and waits for QEMU's exit; false when it did not exit in time. */
  async kill(): Promise<boolean> {
    if (this.child.pid !== undefined && this.running()) {
      // The prelude, setpriv and bubblewrap share one process group; bubblewrap's children die
      // with it (--die-with-parent), and QEMU is pid 1 of its pid namespace.
      sendSignal(-this.child.pid, "SIGKILL");
      if (!(await settlesWithin(this.exited, QEMU_EXIT_MS))) return false;
    }
    return true;
  }

  /** Closes the host's ends of every channel and the console log. */
  async closeChannels(): Promise<void> {
    this.#control?.close();
    if (this.#qmp) void this.#qmp.then((q) => q.close(), () => undefined);
    for (const s of this.child.stdio) s?.destroy();
    await this.log.close(1_000);
  }
}
