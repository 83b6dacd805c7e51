/**
 * Starting one namespace sandbox: checks, cgroups, uid, the egress relay's socket, the trust
 * bundle, the prelude and bubblewrap, and the wait for bubblewrap to report its child. Every
 * failure releases what was set up so far.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { type FileHandle, lstat, open, stat, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import type { Readable } from "node:stream";
import { z } from "zod";
import {
  AbortedError,
  AdmissionError,
  InvalidArgumentError,
  MvmError,
  NAMESPACE_RELAY_PATH,
  Resources,
  SYSTEM_TRUST_BUNDLE_PATH,
  SandboxIdSchema,
  TimeoutError,
  TransportError,
  UnsupportedCapabilityError,
} from "@mvm/protocol";
import { readProcStartTime, readProcStartTimeSync } from "../../_internal/proc.js";
import { agentRuntimeCommand } from "../../runtime/agent-runtime.js";
import { LOADER_NAME } from "../../runtime/shared-libs.js";
import type { LaunchSpec } from "../types.js";
import { CappedLog } from "./agent-log.js";
import { REQUIRED_MOUNT_POINTS, bwrapArgsThroughFd, launchArgv, tmpfsCapBytes } from "./bwrap-args.js";
import type { CgroupSupport } from "./cgroups.js";
import { type ExitStatus, NamespaceSandbox, TEARDOWN_STEP_MS, stopSandbox } from "./launched-sandbox.js";
import { settlesWithin } from "../_teardown.js";
import { ReapExtra } from "./reap.js";
import { RelayListener } from "./relay-listener.js";
import { SandboxCgroups } from "./sandbox-cgroups.js";
import { sandboxSeccompProgram } from "./seccomp.js";
import {
  RESTORE_SHELL_FD,
  RESTORE_STATUS_FD,
  type RestoreFiles,
  type RestoreOutcome,
  openRestoreFiles,
  readRestoreOutcome,
  restoreCommand,
  restoreFailure,
} from "./snapshot-restore.js";
import type { SnapshotTools } from "./snapshot-tools.js";
import type { SandboxUidAllocator } from "./uid.js";
import { imageHasHome, prepareIdentity } from "./identity.js";

/** What the backend found on the host, resolved once. */
export interface HostSetup {
  readonly isRoot: boolean;
  readonly bwrapPath: string | undefined;
  readonly setprivPath: string | undefined;
  readonly cgroups: CgroupSupport;
}

/** fds of the extra pipes and files in the prelude (and bwrap). */
const SECCOMP_FD = 3;
const STATUS_FD = 4;
const ARGS_FD = 5;
const TRUST_BUNDLE_FD = 6;
const SYSTEM_TRUST_BUNDLE_FD = 7;
/** Largest trust bundle accepted, bytes (a full system bundle is about 200 KiB). */
const MAX_TRUST_BUNDLE_BYTES = 4 * 1024 * 1024;
const MAX_STATUS_LINE = 4096;
const MAX_CAP_MIB = 1024 * 1024;
/** How long the restore step may take to extract a snapshot's archives, ms (bounded by their size). */
const RESTORE_TIMEOUT_MS = 300_000;

const BwrapStatus = z.object({ "child-pid": z.number().int().min(1) });

function aborted(spec: LaunchSpec, signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(`Launch of sandbox "${spec.sandboxId}" was aborted`, { cause: signal.reason });
}

function validateSpec(spec: LaunchSpec): void {
  if (!SandboxIdSchema.safeParse(spec.sandboxId).success) throw new InvalidArgumentError(`Invalid sandbox id "${spec.sandboxId}"`);
  for (const key of ["rootfsDir", "agentDir", "stateDir", "agentLogPath"] as const) {
    if (!isAbsolute(spec[key])) throw new InvalidArgumentError(`Invalid ${key} "${spec[key]}": must be an absolute path`);
  }
  for (const key of ["workMiB", "tmpMiB"] as const) {
    if (!Number.isInteger(spec[key]) || spec[key] < 1 || spec[key] > MAX_CAP_MIB) {
      throw new InvalidArgumentError(`Invalid ${key} ${spec[key]}: must be an integer from 1 to ${MAX_CAP_MIB}`);
    }
  }
  const resources = Resources.safeParse(spec.resources);
  if (!resources.success) throw new InvalidArgumentError(`Invalid resources ${JSON.stringify(spec.resources)}`, { cause: resources.error });
  if (spec.trustBundlePem !== undefined && Buffer.byteLength(spec.trustBundlePem) > MAX_TRUST_BUNDLE_BYTES) {
    throw new InvalidArgumentError(`Invalid trustBundlePem: more than ${MAX_TRUST_BUNDLE_BYTES} bytes`);
  }
}

/** Every directory from `path` up to / must let other users through: bwrap runs as a sandbox uid. */
async function checkReachable(spec: LaunchSpec, path: string): Promise<void> {
  for (let dir = path; ; dir = dirname(dir)) {
    const mode = (await stat(dir)).mode;
    if ((mode & 0o001) === 0) {
      throw new AdmissionError(
        `Cannot start sandbox "${spec.sandboxId}": "${dir}" (mode ${(mode & 0o777).toString(8)}) is not searchable by the sandbox's uid`,
        { hint: `make "${dir}" searchable by other users (chmod o+x), or keep images and the agent runtime elsewhere` },
      );
    }
    if (dir === "/") return;
  }
}

/** What launch needs to know about the image. */
interface ImageFacts {
  /** The image has a regular file at SYSTEM_TRUST_BUNDLE_PATH. */
  readonly systemTrustBundle: boolean;
}

async function checkImage(spec: LaunchSpec, isRoot: boolean, relayParent: string): Promise<ImageFacts> {
  for (const name of REQUIRED_MOUNT_POINTS) {
    const path = join(spec.rootfsDir, name);
    const st = await lstat(path).catch(() => undefined);
    if (st === undefined || !st.isDirectory()) {
      throw new AdmissionError(`Cannot start sandbox "${spec.sandboxId}": the image has no directory "/${name}"`, {
        hint: "the image's root filesystem must provide /proc, /dev, /work, /tmp and /.mvm as directories",
      });
    }
  }
  const loader = await lstat(join(spec.agentDir, "bin", LOADER_NAME)).catch(() => undefined);
  if (loader === undefined || !loader.isFile()) {
    throw new AdmissionError(`Cannot start sandbox "${spec.sandboxId}": "${spec.agentDir}" is not an agent runtime`);
  }
  if (isRoot) {
    await checkReachable(spec, spec.rootfsDir);
    await checkReachable(spec, spec.agentDir);
    await checkReachable(spec, relayParent);
  }
  if (spec.trustBundlePem === undefined) return { systemTrustBundle: false };
  const run = await lstat(join(spec.rootfsDir, "run")).catch(() => undefined);
  if (run === undefined || !run.isDirectory()) {
    throw new AdmissionError(`Cannot start sandbox "${spec.sandboxId}": the image has no /run directory for the trust bundle`, {
      hint: "add an empty /run directory to the image",
    });
  }
  const system = await lstat(join(spec.rootfsDir, SYSTEM_TRUST_BUNDLE_PATH)).catch(() => undefined);
  return { systemTrustBundle: system?.isFile() ?? false };
}

/**
 * `data` as `copies` read handles (each is read to its end) of a 0600 file at `path`, which is
 * unlinked once open.
 */
async function openUnlinked(path: string, data: string | Buffer, copies: number): Promise<FileHandle[]> {
  const handles: FileHandle[] = [];
  try {
    await writeFile(path, data, { mode: 0o600, flag: "w" });
    for (let i = 0; i < copies; i++) handles.push(await open(path, "r"));
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  } finally {
    await unlink(path).catch(() => undefined);
  }
  return handles;
}

/** The trust bundle as files bubblewrap copies from: one handle per destination. */
async function openTrustBundle(spec: LaunchSpec, copies: number): Promise<FileHandle[]> {
  if (spec.trustBundlePem === undefined) return [];
  return openUnlinked(join(spec.stateDir, "trust-bundle.pem"), spec.trustBundlePem, copies);
}

function parseStatusLine(line: string): number | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  const parsed = BwrapStatus.safeParse(value);
  return parsed.success ? parsed.data["child-pid"] : undefined;
}

/** Resolves with the pid bubblewrap reports for its child; rejects when the status pipe closes first. */
function readInitPid(stream: Readable, signal: AbortSignal | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    let buffered = "";
    let settled = false;
    const finish = (action: () => void): void => {
      if (settled) return;
      settled = true;
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("close", onEnd);
      stream.off("error", onEnd);
      signal?.removeEventListener("abort", onAbort);
      stream.resume(); // later status lines are not needed
      action();
    };
    const onData = (chunk: Buffer): void => {
      buffered += chunk.toString("utf8");
      const newline = buffered.indexOf("\n");
      if (newline < 0) {
        if (buffered.length > MAX_STATUS_LINE) finish(() => reject(new Error("bubblewrap's status line is too long")));
        return;
      }
      const pid = parseStatusLine(buffered.slice(0, newline));
      finish(() => (pid !== undefined ? resolve(pid) : reject(new Error(`unexpected bubblewrap status ${JSON.stringify(buffered.slice(0, 200))}`))));
    };
    const onEnd = (): void => finish(() => reject(new Error("bubblewrap exited before starting the sandbox")));
    const onAbort = (): void => finish(() => reject(signal?.reason ?? new Error("aborted")));
    if (signal?.aborted) {
      onAbort();
      return;
    }
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("close", onEnd);
    stream.once("error", onEnd);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function whenSpawned(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", reject);
  });
}

/** Starts the sandbox described by `spec`; see NamespaceBackend.launch. */
export async function launchNamespaceSandbox(
  spec: LaunchSpec,
  host: HostSetup,
  uids: SandboxUidAllocator,
  signal: AbortSignal | undefined,
  snapshotTools: () => Promise<SnapshotTools>,
): Promise<NamespaceSandbox> {
  aborted(spec, signal);
  validateSpec(spec);
  let restore: RestoreFiles | undefined;
  if (spec.restore !== undefined) restore = await openRestoreFiles(spec, spec.restore, await snapshotTools());
  try {
    return await launchSandbox(spec, host, uids, signal, restore, snapshotTools);
  } finally {
    await Promise.all(restore?.handles.map((h) => h.close()) ?? []);
  }
}

async function launchSandbox(
  spec: LaunchSpec,
  host: HostSetup,
  uids: SandboxUidAllocator,
  signal: AbortSignal | undefined,
  restore: RestoreFiles | undefined,
  snapshotTools: () => Promise<SnapshotTools>,
): Promise<NamespaceSandbox> {
  const bwrapPath = host.bwrapPath;
  if (bwrapPath === undefined) {
    throw new UnsupportedCapabilityError("The namespace backend needs bubblewrap, which was not found", { hint: "install bubblewrap 0.8 or newer" });
  }
  if (host.isRoot && host.setprivPath === undefined) {
    throw new UnsupportedCapabilityError("The namespace backend needs setpriv when the engine runs as root, which was not found", { hint: "install util-linux" });
  }
  const relayParent = tmpdir();
  const image = await checkImage(spec, host.isRoot, relayParent);
  aborted(spec, signal);

  const home = await imageHasHome(spec.rootfsDir);
  const tmpfsBytes = tmpfsCapBytes({ workMiB: spec.workMiB, tmpMiB: spec.tmpMiB, trustBundle: spec.trustBundlePem !== undefined, home });
  const cgroups = await SandboxCgroups.create(host.cgroups, spec.sandboxId, spec.resources, tmpfsBytes);
  let uid: number | undefined;
  let relay: RelayListener | undefined;
  let log: CappedLog | undefined;
  let child: ChildProcess | undefined;
  let exited: Promise<ExitStatus> | undefined;
  let spawned: Promise<void> = Promise.resolve();
  let initPidReport: Promise<number> = Promise.reject(new Error("bubblewrap was not started"));
  initPidReport.catch(() => undefined);
  let restoreReport: Promise<RestoreOutcome> = Promise.resolve({ ok: true });
  let pidStartTime = "";
  try {
    uid = host.isRoot ? await uids.allocate() : undefined;
    aborted(spec, signal);
    relay = await RelayListener.open({ sandboxId: spec.sandboxId, parentDir: relayParent, ...(uid !== undefined ? { hostUid: uid } : {}) });
    log = await CappedLog.open(spec.agentLogPath);
    const identity = await prepareIdentity(spec.rootfsDir, relay.dir, spec.user);
    const seccompPath = join(spec.stateDir, "seccomp.bpf");
    await writeFile(seccompPath, sandboxSeccompProgram(), { mode: 0o600 });
    const systemTrustBundle = image.systemTrustBundle && spec.trustBundlePem !== undefined;
    const bwrap = bwrapArgsThroughFd(
      {
        ...spec,
        seccompFd: SECCOMP_FD,
        statusFd: STATUS_FD,
        relaySocketPath: relay.path,
        identity,
        ...(spec.trustBundlePem !== undefined
          ? { trustBundle: { fd: TRUST_BUNDLE_FD, ...(systemTrustBundle ? { systemFd: SYSTEM_TRUST_BUNDLE_FD } : {}) } }
          : {}),
        ...(restore !== undefined
          ? { restoreShellFd: RESTORE_SHELL_FD, command: restoreCommand(restore, agentRuntimeCommand({ relayPath: NAMESPACE_RELAY_PATH })) }
          : {}),
      },
      ARGS_FD,
    );
    // The fds bwrap gets from SECCOMP_FD on, in order (STATUS_FD is a pipe, placed by spawn).
    const files: FileHandle[] = [];
    try {
      files.push(await open(seccompPath, "r"));
      files.push(...(await openUnlinked(join(spec.stateDir, "bwrap-args"), bwrap.data, 1)));
      files.push(...(await openTrustBundle(spec, systemTrustBundle ? 2 : 1)));
    } catch (err) {
      await Promise.all(files.map((h) => h.close()));
      throw err;
    }
    try {
      const [seccompFd, argsFd, ...trustFds] = files.map((h) => h.fd);
      const argv = launchArgv({
        procsFiles: cgroups.procsFiles,
        bwrapPath,
        bwrapArgs: bwrap.argv,
        ...(uid !== undefined && host.setprivPath !== undefined ? { switchUser: { uid, setprivPath: host.setprivPath } } : {}),
      });
      // bubblewrap forks the sandbox's pid 1, which keeps bubblewrap's command line and
      // environment for the workload to read: it starts with no variables, in /.
      // A restore adds its status pipe at RESTORE_STATUS_FD and its files from RESTORE_SHELL_FD on.
      const restoreStdio: Array<number | "ignore" | "pipe"> =
        restore === undefined ? [] : [trustFds[0] ?? "ignore", trustFds[1] ?? "ignore", "pipe", ...restore.handles.map((h) => h.fd)];
      child = spawn(argv[0] ?? "/bin/sh", argv.slice(1), {
        stdio: ["pipe", "pipe", "pipe", seccompFd, "pipe", argsFd, ...(restore === undefined ? trustFds : restoreStdio)],
        detached: true,
        cwd: "/",
        env: {},
      });
      // Everything that listens to the child starts before the first await: "spawn" fires on
      // the next tick, and a short-lived child can exit and close its pipes soon after.
      const proc = child;
      spawned = whenSpawned(proc);
      exited = new Promise((resolve) => proc.once("exit", (code, sig) => resolve({ code, signal: sig })));
      const relayListener = relay;
      void exited.then(() =>
        relayListener.abandon(new TransportError(`Sandbox "${spec.sandboxId}" exited before its agent connected the egress relay`)),
      );
      if (proc.stderr) log.follow(proc.stderr);
      initPidReport = readInitPid(proc.stdio[STATUS_FD] as Readable, signal);
      initPidReport.catch(() => undefined);
      if (restore !== undefined) {
        const deadline = AbortSignal.timeout(RESTORE_TIMEOUT_MS);
        const stream = (proc.stdio as unknown as Readable[])[RESTORE_STATUS_FD] as Readable;
        restoreReport = readRestoreOutcome(stream, signal !== undefined ? AbortSignal.any([signal, deadline]) : deadline).catch((err: unknown) => {
          if (!deadline.aborted || signal?.aborted) throw err;
          throw new TimeoutError(`Cannot restore sandbox "${spec.sandboxId}": extracting its archives took more than ${RESTORE_TIMEOUT_MS} ms`, { cause: err });
        });
        restoreReport.catch(() => undefined);
      }
      pidStartTime = readProcStartTimeSync(proc.pid ?? 0) ?? "";
    } finally {
      await Promise.all(files.map((h) => h.close()));
    }
    const proc = child;
    await spawned;
    const pid = proc.pid ?? 0;

    let initPid: number;
    try {
      initPid = await initPidReport;
    } catch (err) {
      aborted(spec, signal);
      const code = (await settlesWithin(exited, TEARDOWN_STEP_MS)) ? String((await exited).code) : "unknown";
      await log.close(1_000);
      const said = log.headText().trim().slice(0, 600);
      throw new AdmissionError(
        `Cannot start sandbox "${spec.sandboxId}": bubblewrap exited (code ${code})${said ? `: ${JSON.stringify(said)}` : ""}`,
        { cause: err, hint: "run `mvmctl doctor` to check the host" },
      );
    }
    const initStartTime = (await readProcStartTime(initPid)) ?? "";
    // A restoring sandbox runs its agent only after the archives are in place.
    const restored = await restoreReport;
    if (!restored.ok) throw await restoreFailure(spec, restored, log, exited);
    const sandboxUid = uid;
    return new NamespaceSandbox({
      sandboxId: spec.sandboxId,
      child: proc,
      exited,
      cgroups,
      log,
      relay,
      init: initStartTime === "" ? undefined : { pid: initPid, startTime: initStartTime },
      snapshots: { workMiB: spec.workMiB, tmpMiB: spec.tmpMiB, isRoot: host.isRoot, tools: snapshotTools },
      reapRecord: {
        backend: "namespace",
        pid,
        pidStartTime,
        cgroups: cgroups.dirs,
        extra: {
          ...(sandboxUid !== undefined ? { [ReapExtra.hostUid]: String(sandboxUid) } : {}),
          [ReapExtra.initPid]: String(initPid),
          [ReapExtra.initStartTime]: initStartTime,
          [ReapExtra.relayDir]: relay.dir,
        },
      },
      release: () => {
        if (sandboxUid !== undefined) uids.release(sandboxUid);
      },
    });
  } catch (err) {
    if (child !== undefined && exited !== undefined) {
      await stopSandbox({ sandboxId: spec.sandboxId, child, exited, cgroups, init: undefined }).catch(() => undefined);
    } else {
      await cgroups.remove(2_000).catch(() => undefined);
    }
    await log?.close(1_000);
    await relay?.close().catch(() => undefined);
    if (uid !== undefined) uids.release(uid);
    if (err instanceof MvmError) throw err;
    if (signal?.aborted) throw new AbortedError(`Launch of sandbox "${spec.sandboxId}" was aborted`, { cause: signal.reason });
    throw new AdmissionError(`Cannot start sandbox "${spec.sandboxId}": ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
