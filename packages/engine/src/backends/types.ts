/**
 * The backend interface: how the engine starts an isolated agent and tears it down.
 * Every backend passes the same conformance suite.
 */
import type { Duplex } from "node:stream";
import type { BackendName, Resources, Tier } from "@mvm/protocol";
import type { SnapshotStore } from "../store/snapshot-store.js";

export interface ProbeCheck {
  /** Short id, e.g. "bwrap", "userns", "cgroup", "seccomp", "kvm". */
  readonly name: string;
  readonly ok: boolean;
  /** What was found, e.g. "bubblewrap 0.8.0 at /usr/bin/bwrap". */
  readonly detail: string;
  /** What to do when not ok. */
  readonly hint?: string;
}

export interface ProbeResult {
  readonly backend: BackendName;
  readonly tier: Tier;
  /** True when the backend can start sandboxes on this host. */
  readonly usable: boolean;
  readonly checks: readonly ProbeCheck[];
  /** Resource kinds this host can enforce for this backend. */
  readonly enforceable: { readonly memory: boolean; readonly pids: boolean; readonly cpu: boolean };
  /** Present when this host cannot pause this backend's sandboxes: why, and what to do. */
  readonly pauseUnsupported?: { readonly reason: string; readonly hint: string };
}

export interface LaunchSpec {
  readonly sandboxId: string;
  /** Host directory holding the image's root filesystem; mounted read-only as /. */
  readonly rootfsDir: string;
  /** The image's digest when the directory is an image-store tree (immutable, content-addressed). */
  readonly rootfsDigest?: string;
  /** Host directory holding the agent runtime (node, libs, agent.js); mounted read-only at /.mvm. */
  readonly agentDir: string;
  /** Per-sandbox host directory owned by the engine (0700). The backend may keep files here. */
  readonly stateDir: string;
  /** Size cap of the writable /work, MiB. */
  readonly workMiB: number;
  /** Size cap of the writable /tmp, MiB. */
  readonly tmpMiB: number;
  /** Limits to enforce. Each present field must be enforced or launch throws UnsupportedCapabilityError. */
  readonly resources: Resources;
  /** Where the backend writes the agent's own stderr (diagnostics), size-capped by the backend. */
  readonly agentLogPath: string;
  /**
   * PEM certificates the workload's TLS clients must trust (the image's system bundle plus the
   * sandbox's own CA), present when the sandbox has mediated secrets. The backend makes it readable
   * at TRUST_BUNDLE_PATH, and over SYSTEM_TRUST_BUNDLE_PATH when the image has that file.
   */
  readonly trustBundlePem?: string;
  /**
   * The uid and gid (inside the sandbox, never 0) the agent and workloads run as, from the image's
   * config; absent: the backend's default sandbox user. A backend that cannot run as this identity
   * throws UnsupportedCapabilityError.
   */
  readonly user?: { readonly uid: number; readonly gid: number };
  /**
   * Start from a snapshot instead of a fresh image state. The engine has checked the snapshot's
   * shape against this spec and verified every part; the paths are engine-owned read-only
   * templates that the backend copies (never writes, never hands to the guest writable).
   */
  readonly restore?: RestoreSpec;
}

/** The files of one captured sandbox state, one per part (all optional: a tier writes what it has). */
export interface SnapshotParts {
  /** vm: guest RAM as a flat file (a memory-backend-file image). */
  readonly ram?: string;
  /** vm: QEMU's device state stream (saved with x-ignore-shared: RAM not in it). */
  readonly device?: string;
  /** vm: the work disk image; container: a tar archive of /work. */
  readonly work?: string;
  /** container: a tar archive of /tmp. */
  readonly tmp?: string;
}

/** What `LaunchedSandbox.snapshot` is asked for. */
export interface SnapshotCapture {
  /** Capture process memory (vm only; the container tier throws UnsupportedCapabilityError). */
  readonly memory: boolean;
  /** An empty engine-owned directory (0700) for the part files; the engine removes it afterwards. */
  readonly dir: string;
  readonly signal?: AbortSignal;
}

/** What a backend captured: the part files (inside `SnapshotCapture.dir`) and the shape a restore needs. */
export interface BackendSnapshot {
  readonly parts: SnapshotParts;
  /** Backend facts a restore must match exactly (vm: kernel, initramfs, QEMU identity, vCPUs, RAM). */
  readonly shape: {
    readonly kernelDigest?: string;
    readonly initramfsDigest?: string;
    readonly qemu?: string;
    readonly cpus?: number;
    readonly memoryMiB?: number;
  };
}

export interface RestoreSpec {
  readonly memory: boolean;
  readonly parts: SnapshotParts;
  readonly shape: BackendSnapshot["shape"];
}

/** What the engine records (in the sandbox's state file) so a later engine can reap it after a crash. */
export interface ReapRecord {
  readonly backend: BackendName;
  /** Host pid of the backend's top process and its start time (from /proc/PID/stat), to avoid pid reuse. */
  readonly pid: number;
  readonly pidStartTime: string;
  /** cgroup directories created for the sandbox (absolute paths). */
  readonly cgroups: readonly string[];
  /** Anything else the backend needs to find its resources. */
  readonly extra: Readonly<Record<string, string>>;
}

export interface LaunchedSandbox {
  /** The byte channel to the agent (protocol v1 frames both ways). */
  readonly channel: Duplex;
  /**
   * The egress relay channel to the agent (RelayMux frames both ways, see @mvm/protocol's
   * relay-mux): resolves once the agent is connected, rejects when it never connects.
   */
  readonly relay: Promise<Duplex>;
  readonly reapRecord: ReapRecord;
  /** Settles when the sandbox's top process has exited (for any reason). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Number of OOM kills in the sandbox so far (0 when memory is not limited). */
  oomKills(): Promise<number>;
  /**
   * Stops every process of the sandbox from running (no CPU; memory, files, connections kept) and
   * resolves once they are stopped. Idempotent. Throws UnsupportedCapabilityError when the host
   * cannot (no cgroup freezer), never returning without having paused.
   */
  pause(): Promise<void>;
  /** Lets a paused sandbox run again. Idempotent. */
  resume(): Promise<void>;
  /**
   * Captures the sandbox's state into `capture.dir` and leaves the sandbox as it was (running or
   * paused). With `memory`, the engine has already quiesced the agent channel (the agent is
   * waiting for a start or resume line) and resumes it afterwards. Throws
   * UnsupportedCapabilityError for a capture this backend cannot make; absent: no snapshots.
   */
  snapshot?(capture: SnapshotCapture): Promise<BackendSnapshot>;
  /** Kills every process of the sandbox and releases every resource, paused or not. Idempotent. */
  destroy(): Promise<void>;
  /** Why the sandbox died (e.g. "the guest kernel panicked: ..."), when the backend can tell. */
  failure?(): string | undefined;
}

export interface Backend {
  readonly name: BackendName;
  /** Checks the host; cheap enough to call at every engine start. */
  probe(): Promise<ProbeResult>;
  /** Starts a sandbox whose agent is about to say hello on `channel`. */
  launch(spec: LaunchSpec, signal?: AbortSignal): Promise<LaunchedSandbox>;
  /** Releases whatever a crashed engine left behind for this record. Idempotent, never throws for "already gone". */
  reap(record: ReapRecord): Promise<void>;
  /**
   * Releases resources that no record names (an engine that died between creating them and
   * writing its record). Must only touch resources that are idle and older than a launch takes.
   */
  sweep?(): Promise<string[]>;
  /** The engine's snapshot store, offered once the engine has opened it (the VM backend keeps its boot snapshots there). */
  useSnapshotStore?(store: SnapshotStore): void;
}
