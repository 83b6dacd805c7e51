/**
 * The engine's programmatic surface. The in-process engine implements it; so does the SDK's
 * daemon client (HTTP+JSON over a Unix socket), so the SDK speaks to either the same way.
 * Types only: no I/O here.
 */
import type {
  AuditReceiptRef,
  CreateSandboxRequest,
  ExecApiRequest,
  ExitInfo,
  PauseApiRequest,
  SandboxInfo,
  BackendName,
  Tier,
  Sha256Digest,
} from "./api.js";
import type { FileInfo, KillSignal, ProcessInfo } from "./messages.js";
import type { NetworkEventsPage, SecretMeta } from "./api-responses.js";
import type { NetworkPolicyJson } from "./network-policy.js";
import type { SignedPlan } from "./plan.js";
import type { ForkApiRequest, SnapshotApiRequest, SnapshotInfo } from "./snapshot-api.js";
import type { WarmPoolInfo, WarmPoolRequest } from "./pool-api.js";
import type { ImageInspect } from "./image-provenance.js";

export interface CallOptions {
  /** Cancels the call. Aborting an exec that is not `background` kills the process. */
  signal?: AbortSignal;
  /** Deadline for the call itself, in milliseconds. */
  timeoutMs?: number;
}

export interface ProgressEvent {
  /** e.g. "resolve", "download", "unpack", "hash", "boot". */
  phase: string;
  message: string;
  /** 0..1 when known. */
  fraction?: number;
}

/**
 * Where an exec's output goes. Each stream's chunks arrive in order, one call at a time. A handler
 * that returns a promise is the back-pressure: the engine hands over that stream's next chunk only
 * once the promise settles, and grants the agent no new credit meanwhile, so the workload blocks in
 * write(2) and at most one credit window per stream waits on the host. A handler that throws (or
 * rejects) ends the exec: a process that is not `background` is killed and `exit` rejects with
 * what it threw.
 *
 * @example
 * await engine.exec(id, { argv: ["cat", "/big"] }, {
 *   onStdout: (chunk) => (file.write(chunk) ? undefined : once(file, "drain").then(() => {})),
 * });
 */
export interface ExecHandlers {
  /** Takes a chunk of stdout; may return a promise (see above). Any other return value is ignored. */
  onStdout?(chunk: Uint8Array): unknown;
  /** Takes a chunk of stderr, like `onStdout`. */
  onStderr?(chunk: Uint8Array): unknown;
}

export interface ExecStarted {
  /** The agent's handle for the process (stable for the sandbox's life). */
  proc: number;
  /** pid inside the sandbox. */
  pid: number;
  /** Settles when the process has ended and its output has been delivered. */
  exit: Promise<ExitInfo>;
}

export interface FileReadStream {
  size: number;
  /** The file's bytes; iterate exactly once. */
  body: AsyncIterable<Uint8Array>;
}

export interface WriteFileOptions extends CallOptions {
  /** Permission bits of a new file. @default 0o644 */
  mode?: number;
  /** Create missing parent directories. @default true */
  createParents?: boolean;
}

export interface DirListingResult {
  entries: FileInfo[];
  truncated: boolean;
}

export interface ImageInfo {
  digest: Sha256Digest;
  refs: string[];
  sizeBytes: number;
  createdAt: string;
}

export interface BackendReport {
  backend: BackendName;
  tier: Tier;
  usable: boolean;
  checks: { name: string; ok: boolean; detail: string; hint?: string }[];
  enforceable: { memory: boolean; pids: boolean; cpu: boolean };
}

export interface HealthInfo {
  version: string;
  /** The backend a create without `backend` would use, or null when none works. */
  defaultBackend: BackendName | null;
  /** Why that backend is the default (or why there is none), in plain words. */
  defaultReason?: string;
  backends: BackendReport[];
}

export interface EngineApi {
  health(options?: CallOptions): Promise<HealthInfo>;

  createSandbox(
    request: CreateSandboxRequest,
    options?: CallOptions & { onProgress?: (event: ProgressEvent) => void },
  ): Promise<SandboxInfo>;
  /**
   * Plan mode: the signed execution plan a create with this request would be admitted through,
   * for review. Boots nothing; the plan can later be passed as `request.plan` (once).
   */
  planSandbox(
    request: CreateSandboxRequest,
    options?: CallOptions & { validForSeconds?: number; onProgress?: (event: ProgressEvent) => void },
  ): Promise<SignedPlan>;
  getSandbox(id: string, options?: CallOptions): Promise<SandboxInfo>;
  listSandboxes(options?: CallOptions): Promise<SandboxInfo[]>;
  killSandbox(id: string, options?: CallOptions): Promise<SandboxInfo>;
  /**
   * Freezes every process of the sandbox (no CPU; memory, files and connections kept). While paused,
   * exec, file and process calls fail with SandboxPausedError. Pausing a paused sandbox is a no-op.
   */
  pauseSandbox(id: string, request?: PauseApiRequest, options?: CallOptions): Promise<SandboxInfo>;
  /** Thaws a paused sandbox; resuming a running one is a no-op. */
  resumeSandbox(id: string, options?: CallOptions): Promise<SandboxInfo>;

  /**
   * Captures the sandbox's state into the host's snapshot store (the sandbox keeps running).
   * VM tier: memory, devices and /work (`memory: true`, the default). Container tier: /work and
   * /tmp (`memory: false`, the default; memory is UnsupportedCapabilityError there).
   */
  snapshotSandbox(id: string, request: SnapshotApiRequest, options?: CallOptions): Promise<SnapshotInfo>;
  /** Starts `count` sandboxes from the sandbox's current state; each gets a fresh identity. */
  forkSandbox(id: string, request?: ForkApiRequest, options?: CallOptions): Promise<SandboxInfo[]>;
  listSnapshots(options?: CallOptions): Promise<SnapshotInfo[]>;
  /** A snapshot by id or digest; NotFoundError when there is none. */
  getSnapshot(ref: string, options?: CallOptions): Promise<SnapshotInfo>;
  /** Deletes a snapshot (its chunks go once no other snapshot uses them); NotFoundError when there is none. */
  deleteSnapshot(ref: string, options?: CallOptions): Promise<void>;

  /**
   * Keeps `size` sandboxes like `request.sandbox` started ahead of demand (size 0 removes the
   * pool); a later create of the same workload claims one, under its own plan. Each pooled
   * sandbox serves one create and is never reused.
   * @throws InvalidArgumentError for a request that cannot be pooled (secrets, ports, a plan, a snapshot)
   */
  setWarmPool(request: WarmPoolRequest, options?: CallOptions): Promise<WarmPoolInfo>;
  listWarmPools(options?: CallOptions): Promise<WarmPoolInfo[]>;

  exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted>;
  signalProcess(id: string, proc: number, signal: KillSignal, options?: CallOptions): Promise<void>;
  /** Writes to a process's stdin (it must have been started with `openStdin`); `null` closes stdin. */
  writeStdin(id: string, proc: number, data: Uint8Array | null, options?: CallOptions): Promise<void>;
  listProcesses(id: string, options?: CallOptions): Promise<ProcessInfo[]>;

  /**
   * Replaces the egress policy of a running sandbox. Open connections the new policy does not allow
   * are closed; the change is recorded as a network event.
   */
  setNetworkPolicy(id: string, policy: NetworkPolicyJson, options?: CallOptions): Promise<SandboxInfo>;
  /** Network events after sequence number `after` (default 0), at most `limit` (default and max 1000). */
  networkEvents(id: string, options?: CallOptions & { after?: number; limit?: number }): Promise<NetworkEventsPage>;

  /** The host's stored secrets (names and bindings, never values). */
  listSecrets(options?: CallOptions): Promise<SecretMeta[]>;
  /** Stores (or replaces) a secret on the host, bound to `hosts` (patterns like api.example.com, *.example.com). */
  setSecret(name: string, value: string, options?: CallOptions & { hosts?: readonly string[] }): Promise<SecretMeta>;
  /** Deletes a stored secret; NotFoundError when there is none of that name. */
  removeSecret(name: string, options?: CallOptions): Promise<void>;

  readFile(id: string, path: string, options?: CallOptions): Promise<FileReadStream>;
  writeFile(
    id: string,
    path: string,
    data: Uint8Array | AsyncIterable<Uint8Array>,
    options?: WriteFileOptions,
  ): Promise<{ bytes: number; receipt?: AuditReceiptRef }>;
  listDir(id: string, path: string, options?: CallOptions): Promise<DirListingResult>;
  stat(id: string, path: string, options?: CallOptions): Promise<FileInfo>;
  mkdir(id: string, path: string, recursive: boolean, options?: CallOptions): Promise<void>;
  remove(id: string, path: string, recursive: boolean, options?: CallOptions): Promise<void>;
  rename(id: string, from: string, to: string, options?: CallOptions): Promise<void>;

  listImages(options?: CallOptions): Promise<ImageInfo[]>;
  buildImage(
    ref: string,
    options?: CallOptions & { force?: boolean; onProgress?: (event: ProgressEvent) => void },
  ): Promise<ImageInfo>;
  /**
   * Imports a directory or a tar archive (plain or gzip) on the engine's host as an image named
   * `name`. Extraction is path-safe: absolute paths, `..` and escaping links are refused, device
   * nodes dropped, setuid/setgid bits cleared. The path is read with the engine's privileges.
   */
  importImage(
    path: string,
    name: string,
    options?: CallOptions & { onProgress?: (event: ProgressEvent) => void },
  ): Promise<ImageInfo>;
  removeImage(ref: string, options?: CallOptions): Promise<void>;
  /**
   * One stored image in full: its record, where it came from and its build provenance, whose
   * signature and image digest are checked on every call (`provenance.status`).
   * @throws NotFoundError when nothing is stored under `ref`.
   */
  inspectImage(ref: string, options?: CallOptions): Promise<ImageInspect>;

  /** Releases the client (SDK) or stops the engine and kills its sandboxes (embedded). */
  close(): Promise<void>;
}
