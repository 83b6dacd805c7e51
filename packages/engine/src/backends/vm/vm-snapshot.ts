/**
 * Capturing a running VM sandbox's state, and checking a captured state against the VM about to
 * load it.
 *
 * A capture is three files: `ram` (a sparse copy of the guest RAM file), `device` (QEMU's device
 * state, saved with x-ignore-shared so no RAM is in it, after a one-line header) and `work` (a
 * sparse copy of the work disk). The guest is stopped from just before the device state is saved
 * until both copies are made, so the three agree; QEMU has flushed the disk when its migration
 * completes. A VM that was running is then resumed (QEMU re-activates its disks on `cont`).
 *
 * The device part starts with a header line the engine writes and reads back before QEMU does:
 *
 *   mvm-vm-device v1 {"argsDigest":"<hex>","rootDiskKey":"…","agentDiskKey":"…",…}\n
 *   <QEMU migration stream>
 *
 * It names everything the saved guest depends on that the engine's shape does not carry (the
 * image and agent disks, whose blocks the guest has cached; QEMU's whole command line, which
 * holds the disks' verity roots), so a restore onto other disks or another machine layout is
 * refused with SnapshotMismatchError before QEMU starts. QEMU's descriptor is left positioned
 * just past the header.
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { AdmissionError, InternalError, SnapshotMismatchError, parseJsonStrict } from "@mvm/protocol";
import { AgentClient } from "../../agent/client.js";
import { childChannel } from "../_teardown.js";
import type { BackendSnapshot } from "../types.js";
import { AGENT_START_LINE } from "./init-script.js";
import type { VmShape } from "./snapshots.js";
import { z } from "zod";
import type { QmpClient } from "./qmp.js";
import { copySparse, type SandboxRam } from "./ram-file.js";
import { saveVmState } from "./snapshot-io.js";
import { SAVE_SOCKET_DIR, type VmProcess } from "./vm-process.js";

const HEADER_MAGIC = "mvm-vm-device v1 ";
const MAX_HEADER_BYTES = 4096;
/** Largest device state accepted (no RAM in it), bytes. */
const MAX_DEVICE_BYTES = 64 * 1024 * 1024;

/** What a device state's header records: the guest's dependencies outside the engine's shape. */
export interface DeviceHeader {
  /** sha256 of QEMU's arguments (machine, devices, RAM, vCPUs, kernel command line). */
  readonly argsDigest: string;
  readonly rootDiskKey: string;
  readonly agentDiskKey: string;
  readonly guestUid: number;
  readonly accel: "kvm" | "tcg";
}

const HeaderSchema = z.strictObject({
  argsDigest: z.string().regex(/^[0-9a-f]{64}$/),
  rootDiskKey: z.string().min(1).max(256),
  agentDiskKey: z.string().min(1).max(256),
  guestUid: z.int().min(1).max(65_534),
  accel: z.enum(["kvm", "tcg"]),
});

export function encodeDeviceHeader(header: DeviceHeader): Buffer {
  const { argsDigest, rootDiskKey, agentDiskKey, guestUid, accel } = header;
  const line = Buffer.from(`${HEADER_MAGIC}${JSON.stringify({ argsDigest, rootDiskKey, agentDiskKey, guestUid, accel })}\n`);
  if (line.length > MAX_HEADER_BYTES) throw new InternalError(`A device state header of ${line.length} bytes exceeds ${MAX_HEADER_BYTES}`);
  return line;
}

/**
 * Reads the header at the start of the device state open on `handle`, checks it names `expected`
 * exactly, and leaves the descriptor's offset just past it (where QEMU's stream starts). Throws
 * SnapshotMismatchError for a missing or malformed header or any difference.
 */
export async function readDeviceHeader(handle: FileHandle, expected: DeviceHeader, what: string): Promise<void> {
  const buffer = Buffer.alloc(MAX_HEADER_BYTES);
  const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
  const end = buffer.subarray(0, bytesRead).indexOf(0x0a);
  const line = end < 0 ? "" : buffer.subarray(0, end).toString("utf8");
  if (!line.startsWith(HEADER_MAGIC)) throw new SnapshotMismatchError(`${what}: its device state has no mvm header`);
  let parsed: DeviceHeader;
  try {
    parsed = HeaderSchema.parse(parseJsonStrict(line.slice(HEADER_MAGIC.length)));
  } catch (cause) {
    throw new SnapshotMismatchError(`${what}: its device state header is malformed`, { cause });
  }
  for (const key of ["argsDigest", "rootDiskKey", "agentDiskKey", "guestUid", "accel"] as const) {
    if (parsed[key] !== expected[key]) {
      throw new SnapshotMismatchError(`${what}: it was taken of a VM with another ${key} ("${parsed[key]}", this VM has "${expected[key]}")`, {
        hint: "restore it with the same image, agent runtime, kernel, QEMU and resources it was taken with",
      });
    }
  }
  // Advance the descriptor's own offset past the header: QEMU reads from there.
  let skipped = 0;
  while (skipped < end + 1) {
    const { bytesRead: n } = await handle.read(buffer, 0, end + 1 - skipped, null);
    if (n === 0) throw new SnapshotMismatchError(`${what}: its device state ends inside its header`);
    skipped += n;
  }
}

export interface CaptureOptions {
  readonly qmp: QmpClient;
  readonly ram: SandboxRam;
  readonly workDiskPath: string;
  /** Where the part files go (`ram`, `device`, `work`), an existing directory. */
  readonly dir: string;
  readonly header: DeviceHeader;
  /** QEMU's uid, which must reach the save socket. */
  readonly socketOwner?: number;
  /** Resume the guest afterwards when it was running. */
  readonly resume: boolean;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

export interface CapturedParts {
  readonly ram: string;
  readonly device: string;
  readonly work: string;
  /** Whether the guest was running when the capture began. */
  readonly wasRunning: boolean;
}

const statusSchema = z.object({ status: z.string().max(64), running: z.boolean() });

/**
 * Stops the guest, saves its device state into `dir/device`, copies its RAM file to `dir/ram` and
 * its work disk to `dir/work` (sparse), then resumes it when it was running and `resume` is set.
 * On failure the guest is still resumed when it was running (and `resume` is set) and the error is
 * thrown; the caller removes `dir`.
 */
export async function captureVm(options: CaptureOptions): Promise<CapturedParts> {
  const { qmp } = options;
  const status = statusSchema.parse(await qmp.execute("query-status", undefined, { timeoutMs: options.timeoutMs }));
  const wasRunning = status.running;
  if (wasRunning) await qmp.execute("stop", undefined, { timeoutMs: options.timeoutMs });
  const parts = { ram: join(options.dir, "ram"), device: join(options.dir, "device"), work: join(options.dir, "work") };
  let failed: unknown;
  try {
    await saveVmState(qmp, {
      path: parts.device,
      timeoutMs: options.timeoutMs,
      ...(options.signal !== undefined ? { signal: options.signal } : {}),
      ignoreShared: true,
      maxBytes: MAX_DEVICE_BYTES,
      header: encodeDeviceHeader(options.header),
      socketParentDir: options.ram.saveDir,
      qemuSocketParentDir: SAVE_SOCKET_DIR,
      ...(options.socketOwner !== undefined ? { socketOwner: { uid: options.socketOwner, gid: options.socketOwner } } : {}),
    });
    for (const [from, to] of [[options.ram.ramPath, parts.ram], [options.workDiskPath, parts.work]] as const) {
      const source = await open(from, constants.O_RDONLY | constants.O_NOFOLLOW);
      try {
        await copySparse(source, to);
      } finally {
        await source.close();
      }
    }
  } catch (err) {
    failed = err;
  }
  if (wasRunning && options.resume) {
    // From `postmigrate` (or `paused` when the save failed early): `cont` re-activates the disks.
    try {
      await qmp.execute("cont", undefined, { timeoutMs: options.timeoutMs });
    } catch (err) {
      failed ??= err;
    }
  }
  if (failed !== undefined) throw failed;
  return { ...parts, wasRunning };
}

/** Execs run in a VM about to be saved, so their code paths are warm in every restore. */
const WARM_UP_EXECS = 2;
const WARM_UP_TIMEOUT_MS = 60_000;

/**
 * Runs the agent's exec path once in a VM about to be saved, then quiesces the agent: the code a
 * first exec runs (the agent's handlers, compiled by the guest's JavaScript engine; the guest
 * kernel's paths for fork, exec and the pipes) is then warm in every restore's memory. A restore
 * sends the start line, and the agent drops this session and says hello on the new channel.
 */
export async function warmUp(vm: VmProcess): Promise<void> {
  vm.child.stdin!.write(AGENT_START_LINE);
  const client = await AgentClient.connect(childChannel(vm.child, "the saved VM's QEMU"), { helloTimeoutMs: WARM_UP_TIMEOUT_MS, requestTimeoutMs: WARM_UP_TIMEOUT_MS, label: vm.label });
  client.closed.catch(() => undefined);
  for (let i = 0; i < WARM_UP_EXECS; i++) {
    const proc = await client.exec(
      { argv: ["/bin/sh", "-c", "echo warm"], env: { PATH: "/usr/bin:/bin" }, cwd: "/work", timeoutMs: WARM_UP_TIMEOUT_MS, killGraceMs: 1_000, maxOutputBytes: 1024 },
      { openStdin: false, output: { onStdout: () => undefined, onStderr: () => undefined } },
    );
    const exit = await proc.exit;
    if (exit.exitCode !== 0) throw new AdmissionError(`The saved VM's warm-up exec exited with ${exit.exitCode}`);
  }
  await client.quiesce(WARM_UP_TIMEOUT_MS);
}

/** What a device state of a VM of `shape` records. */
export function deviceHeader(shape: VmShape): DeviceHeader {
  return { argsDigest: shape.argsDigest, rootDiskKey: shape.rootDiskKey, agentDiskKey: shape.agentDiskKey, guestUid: shape.guestUid, accel: shape.accel };
}

/** The shape a snapshot of a VM of `shape` records, and a restore must match. */
export function backendShape(shape: VmShape): BackendSnapshot["shape"] {
  const initramfs = /^([0-9a-f]{64})\.cpio\.gz$/.exec(basename(shape.initrdPath))?.[1];
  return {
    kernelDigest: /^[0-9a-f]{64}$/.test(shape.kernelDigest) ? `sha256:${shape.kernelDigest}` : shape.kernelDigest,
    initramfsDigest: initramfs !== undefined ? `sha256:${initramfs}` : shape.initrdPath,
    // QEMU's identity (path, size, mtime) as a short label.
    qemu: createHash("sha256").update(shape.qemu).digest("hex"),
    cpus: shape.cpus,
    memoryMiB: shape.memoryMiB,
  };
}
