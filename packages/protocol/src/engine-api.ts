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
import type { FileInfo, KillSignal, ProcessInfo, PtySize } from "./messages.js";
import type { NetworkEventsPage, SecretMeta } from "./api-responses.js";
import type { NetworkPolicyJson } from "./network-policy.js";
import type { PortSpec } from "./api-base.js";
import type { SignedPlan } from "./plan.js";
import type { ForkApiRequest, SnapshotApiRequest, SnapshotInfo } from "./snapshot-api.js";
import type { WarmPoolInfo, WarmPoolRequest } from "./pool-api.js";
import type { BundlePullInfo, BundlePushInfo, PullBundleRequest, PushBundleRequest } from "./bundle-api.js";
import type { TreeOptions, TreeWriteResult } from "./tree-api.js";
import type { LogSource, SandboxLogs } from "./logs-api.js";
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
  /**
   * For an OCI image: its manifest and config digests, the pinned reference it was pulled as, and
   * its config's user, entrypoint and cmd (see {@link imageCommand}).
   */
  oci?: { manifestDigest?: Sha256Digest; configDigest: Sha256Digest; reference?: string; user?: string; entrypoint?: string[]; cmd?: string[] };
}

/**
 * The argv an OCI image's config runs for a command line `argv`, as docker does: the entrypoint
 * followed by `argv`, or by the image's cmd when `argv` is empty. Undefined when that is empty.
 */
export function imageCommand(oci: { entrypoint?: readonly string[] | undefined; cmd?: readonly string[] | undefined } | undefined, argv: readonly string[]): string[] | undefined {
  const out = [...(oci?.entrypoint ?? []), ...(argv.length > 0 ? argv : (oci?.cmd ?? []))];
  return out.length > 0 ? out : undefined;
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
   * Sets a live sandbox's TTL to end `ttlSeconds` from now (longer or shorter than before), within
   * the bounds of a create (1 s to 7 days) and the operator policy's maxTtlSeconds. While paused
   * with the TTL frozen, `ttlSeconds` becomes the time left at resume. Recorded in the audit log
   * (`sandbox.ttl_set`).
   * @throws InvalidArgumentError out of bounds; PolicyDeniedError over the operator's maximum
   */
  setSandboxTimeout(id: string, ttlSeconds: number, options?: CallOptions): Promise<SandboxInfo>;

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

  /**
   * Packs a snapshot (with its image) or an image into a bundle at `request.destination` and
   * returns its digest and the pinned source a pull takes.
   * @throws NotFoundError when the source is not stored; InvalidArgumentError for a bad location
   */
  pushBundle(request: PushBundleRequest, options?: CallOptions): Promise<BundlePushInfo>;
  /**
   * Pulls a bundle pinned by digest: bundle.json, index, packs and chunks are each verified before
   * anything is stored; a snapshot bundle becomes a snapshot of this host (signed by its key).
   * @throws SnapshotMismatchError when anything fails verification (nothing is left behind)
   */
  pullBundle(request: PullBundleRequest, options?: CallOptions): Promise<BundlePullInfo>;

  exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted>;
  signalProcess(id: string, proc: number, signal: KillSignal, options?: CallOptions): Promise<void>;
  /** Writes to a process's stdin (it must have been started with `openStdin`); `null` closes stdin. */
  writeStdin(id: string, proc: number, data: Uint8Array | null, options?: CallOptions): Promise<void>;
  listProcesses(id: string, options?: CallOptions): Promise<ProcessInfo[]>;
  /**
   * Sets the window size of a process started with `pty`; its foreground process group gets SIGWINCH.
   * @throws NotFoundError when the process is gone; InvalidArgumentError when it has no pty
   */
  resizePty(id: string, proc: number, size: PtySize, options?: CallOptions): Promise<void>;
  /**
   * Attaches to a running process, whoever started it: `handlers` get what it printed before,
   * within its bounded backlog (`ExecApiRequest.backlogBytes`), then its live output, and `exit`
   * settles with how it ended. An attached client never slows the process: one that falls more
   * than 1 MiB behind is detached (`exit` rejects with TransportError). Aborting
   * `options.signal` detaches; the process runs on.
   * @throws NotFoundError when the sandbox has no such running process
   */
  connectProcess(id: string, proc: number, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted>;

  /**
   * Replaces the egress policy of a running sandbox. Open connections the new policy does not allow
   * are closed; the change is recorded as a network event.
   */
  setNetworkPolicy(id: string, policy: NetworkPolicyJson, options?: CallOptions): Promise<SandboxInfo>;
  /**
   * Publishes a guest port of a running sandbox on a host loopback port (`port.host`, or one the
   * kernel picks); the sandbox's `ports` then list it. Publishing a published guest port again
   * is a no-op. A new publish is recorded in the audit log (`port.published`).
   * @throws InvalidArgumentError over MAX_PUBLISHED_PORTS or when the host port is taken
   * @throws AlreadyExistsError when the guest port is published on another host port
   */
  publishPort(id: string, port: PortSpec, options?: CallOptions): Promise<SandboxInfo>;
  /**
   * The sandbox's logs: its agent's log and its workload's output (each bounded by the engine,
   * secret values replaced), the last `tail` lines (default and at most MAX_LOG_LINES), oldest first.
   * With `after` (an earlier answer's `next`), only the lines that arrived since that answer.
   */
  sandboxLogs(id: string, options?: CallOptions & { source?: LogSource; tail?: number; after?: string }): Promise<SandboxLogs>;
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
  /**
   * Unpacks a tar stream (docs/FILES.md) into the directory `path`, creating it and any parents.
   * Only regular files and directories are written; links, devices and FIFOs are counted in
   * `skipped`. Each file is audited like a writeFile.
   * @throws InvalidArgumentError for an unsafe or malformed archive, or one over the bounds
   */
  writeTree(id: string, path: string, tar: AsyncIterable<Uint8Array>, options?: TreeOptions): Promise<TreeWriteResult>;
  /**
   * The directory `path` and everything under it as a tar stream of files and directories
   * (symlinks and special files are left out), paths relative to `path`. Iterate once; a failure
   * midway ends the stream with an error, never with a complete-looking archive.
   * @throws NotFoundError when `path` does not exist; InvalidArgumentError when it is not a directory
   */
  readTree(id: string, path: string, options?: TreeOptions): Promise<AsyncIterable<Uint8Array>>;

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
   * Pulls the linux/amd64 image `REGISTRY/REPO:TAG` (or `@sha256:<hex>`) from an OCI registry
   * into the engine's store. The tag is resolved to a digest, recorded, and the image stored also
   * as `REGISTRY/REPO@sha256:<hex>`; every blob is verified by digest before it is applied.
   * Plain http only for loopback registries. Token (Bearer) auth is not supported yet.
   * @example const img = await engine.pullImage("registry.example:5000/team/app:1.0");
   */
  pullImage(reference: string, options?: CallOptions & { onProgress?: (event: ProgressEvent) => void }): Promise<ImageInfo>;
  /**
   * One stored image in full: its record, where it came from and its build provenance, whose
   * signature and image digest are checked on every call (`provenance.status`).
   * @throws NotFoundError when nothing is stored under `ref`.
   */
  inspectImage(ref: string, options?: CallOptions): Promise<ImageInspect>;

  /** Releases the client (SDK) or stops the engine and kills its sandboxes (embedded). */
  close(): Promise<void>;
}
