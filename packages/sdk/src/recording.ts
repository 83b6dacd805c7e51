/**
 * Record mode: an engine transport that boots nothing. Every call a script makes is checked as
 * the real engine would check it, recorded, and answered with an empty success (an exec exits 0
 * with no output, a read returns no bytes), so the script runs to its end and the recording says
 * which sandboxes it would create and what it would run in them. Nothing on the host changes.
 *
 * `mvmctl plan --mode record app.mjs` runs the script with `MVM_RECORD_FILE` set: every SDK entry
 * point then uses one process-wide RecordingEngine, whose recording is written to that file when
 * the process exits. `Sandbox.create({ mode: "record" })` asks for one explicitly.
 */
import { randomBytes } from "node:crypto";
import { renameSync, writeFileSync } from "node:fs";
import { readBoundedText } from "./_internal/bounded-file.js";
import { dirname, isAbsolute, join } from "node:path";
import { z } from "zod";
import {
  CreateSandboxRequest,
  ExecApiRequest,
  InvalidArgumentError,
  NetworkPolicySchema,
  NotFoundError,
  UnsupportedCapabilityError,
  readTar,
  tarEnd,
  MAX_TTL_SECONDS,
  SetTimeoutApiRequest,
  treeLimits,
  type TreeOptions,
  type SandboxLogs,
  type TreeWriteResult,
  type CallOptions,
  type DirListingResult,
  type EngineApi,
  type ExecHandlers,
  type ExecStarted,
  type ExitInfo,
  type FileInfo,
  type FileReadStream,
  type HealthInfo,
  type ImageInfo,
  type ImageInspect,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type ProcessInfo,
  type SandboxInfo,
  type SecretMeta,
  type SignedPlan,
  type SnapshotInfo,
  type ForkApiRequest,
  ForkApiRequest as ForkApiRequestSchema,
  SnapshotApiRequest,
  SnapshotIdSchema,
  WarmPoolRequest,
  type WarmPoolInfo,
  type BundlePullInfo,
  type BundlePushInfo,
} from "@mvm/protocol";

/** The environment variable naming the file a recording is written to at exit. */
export const RECORD_FILE_ENV = "MVM_RECORD_FILE";
/** Largest recording `readRecording` reads, in bytes. */
export const MAX_RECORDING_BYTES = 16 * 1024 * 1024;

export const RecordedCommandSchema = z.strictObject({
  argv: z.array(z.string().max(128 * 1024)).min(1).max(4096),
  cwd: z.string().max(4096).optional(),
  /** Names of the variables the command was given; never their values. */
  envNames: z.array(z.string().max(128)).max(1024),
});
export type RecordedCommand = z.infer<typeof RecordedCommandSchema>;

const RecordedSandboxId = z.string().regex(/^sbx_[a-z2-7]{20}$/);

/** A snapshot the script took of a recorded sandbox (nothing was captured). */
export const RecordedSnapshotSchema = z.strictObject({
  /** The id record mode answered with; it names nothing outside this recording. */
  snapshotId: SnapshotIdSchema,
  request: SnapshotApiRequest,
  deleted: z.boolean(),
});
export type RecordedSnapshot = z.infer<typeof RecordedSnapshotSchema>;

/**
 * Where a recorded sandbox's state would come from when it is not a fresh create: a fork of
 * another recorded sandbox, or a snapshot the script took while recording. Such a workload cannot
 * be planned ahead: what it starts from exists only once the script runs.
 */
export const RecordedOriginSchema = z.union([
  z.strictObject({ forkOf: RecordedSandboxId }),
  z.strictObject({ snapshotId: SnapshotIdSchema, takenFrom: RecordedSandboxId }),
]);
export type RecordedOrigin = z.infer<typeof RecordedOriginSchema>;

export const RecordedWorkloadSchema = z.strictObject({
  sandboxId: RecordedSandboxId,
  request: CreateSandboxRequest,
  origin: RecordedOriginSchema.optional(),
  snapshots: z.array(RecordedSnapshotSchema).max(10_000).optional(),
  commands: z.array(RecordedCommandSchema).max(100_000),
  files: z.array(z.strictObject({ path: z.string().max(4096), bytes: z.number().int().min(0) })).max(100_000),
  networkPolicies: z.array(NetworkPolicySchema).max(10_000),
  killed: z.boolean(),
});
export type RecordedWorkload = z.infer<typeof RecordedWorkloadSchema>;

export const RecordingSchema = z.strictObject({ version: z.literal(1), workloads: z.array(RecordedWorkloadSchema).max(10_000) });
export type Recording = z.infer<typeof RecordingSchema>;

const ZERO_DIGEST = `sha256:${"0".repeat(64)}` as const;
const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";
const REFUSED = "Record mode changes nothing on the host";

function recordedId(prefix: "sbx_" | "snap_" = "sbx_"): string {
  let id = prefix;
  for (const b of randomBytes(20)) id += ALPHABET[b & 31];
  return id;
}

function check<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new InvalidArgumentError(`Invalid ${what}: ${issue?.path.length ? `${issue.path.join(".")}: ` : ""}${issue?.message ?? "invalid"}`);
  }
  return r.data;
}

interface Entry {
  workload: RecordedWorkload;
  info: SandboxInfo;
  procs: number;
}

/**
 * An EngineApi that records and boots nothing.
 *
 * @example
 * const rec = new RecordingEngine();
 * const sb = await Sandbox.create({ engine: rec, image: "debian:bookworm" });
 * await sb.commands.run(["make", "test"]);   // exit 0, no output
 * console.log(rec.recording().workloads[0].commands);
 */
export class RecordingEngine implements EngineApi {
  readonly transport = "record" as const;
  readonly #sandboxes = new Map<string, Entry>();
  /** Snapshots taken while recording, by id, with the sandbox each was taken from. */
  readonly #snapshots = new Map<string, { info: SnapshotInfo; takenFrom: Entry; recorded: RecordedSnapshot }>();

  /** What was recorded so far, in creation order. */
  recording(): Recording {
    return { version: 1, workloads: [...this.#sandboxes.values()].map((e) => structuredClone(e.workload)) };
  }

  #get(id: string): Entry {
    const entry = this.#sandboxes.get(id);
    if (!entry) throw new NotFoundError(`Sandbox "${id}" not found`);
    return entry;
  }

  async health(): Promise<HealthInfo> {
    return { version: "record", defaultBackend: null, defaultReason: "record mode boots nothing", backends: [] };
  }

  async createSandbox(request: CreateSandboxRequest): Promise<SandboxInfo> {
    const req = check(CreateSandboxRequest, request, "sandbox options");
    const taken = req.fromSnapshot === undefined ? undefined : this.#takenSnapshot(req.fromSnapshot);
    if (taken !== undefined) {
      // Started from a snapshot this script took: the source's workload, restored.
      const { fromSnapshot: _from, ...rest } = req;
      const source = taken.takenFrom.workload.request;
      return this.#add({ ...source, ...rest }, { snapshotId: taken.info.id, takenFrom: taken.takenFrom.workload.sandboxId });
    }
    return this.#add(req);
  }

  /** Records a sandbox and answers as the engine would. */
  #add(req: CreateSandboxRequest, origin?: RecordedOrigin): SandboxInfo {
    const id = recordedId();
    const now = Date.now();
    const backend = req.backend ?? "namespace";
    const info: SandboxInfo = {
      id,
      state: "running",
      backend,
      tier: backend === "vm" ? "vm-emulated" : "container",
      image: { ref: req.image ?? "default", digest: ZERO_DIGEST },
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + (req.ttlSeconds ?? 600) * 1000).toISOString(),
      resources: { ...req.resources },
      workMiB: req.workMiB ?? 1024,
      labels: { ...req.labels },
    };
    const { plan: _plan, ...recorded } = req;
    this.#sandboxes.set(id, {
      workload: { sandboxId: id, request: recorded, ...(origin ? { origin } : {}), commands: [], files: [], networkPolicies: [], killed: false },
      info,
      procs: 0,
    });
    return info;
  }

  /** A snapshot taken while recording, by id or digest; undefined for any other reference. */
  #takenSnapshot(ref: string): { info: SnapshotInfo; takenFrom: Entry; recorded: RecordedSnapshot } | undefined {
    for (const s of this.#snapshots.values()) if (s.info.id === ref || s.info.digest === ref) return s;
    return undefined;
  }

  async planSandbox(): Promise<SignedPlan> {
    throw new UnsupportedCapabilityError("Record mode signs no plans", { hint: "Run `mvmctl plan --mode record FILE` to plan what a script records" });
  }

  async getSandbox(id: string): Promise<SandboxInfo> {
    return this.#get(id).info;
  }

  async listSandboxes(): Promise<SandboxInfo[]> {
    return [...this.#sandboxes.values()].filter((e) => e.info.state !== "stopped").map((e) => e.info);
  }

  /** Record mode runs nothing, so a pause only changes the reported state. */
  async pauseSandbox(id: string): Promise<SandboxInfo> {
    const entry = this.#get(id);
    if (entry.info.state === "running") entry.info = { ...entry.info, state: "paused" };
    return entry.info;
  }

  async setSandboxTimeout(id: string, ttlSeconds: number): Promise<SandboxInfo> {
    const entry = this.#get(id);
    const req = SetTimeoutApiRequest.safeParse({ ttlSeconds });
    if (!req.success) throw new InvalidArgumentError(`Invalid TTL: ${JSON.stringify(ttlSeconds)} (1 to ${MAX_TTL_SECONDS} seconds)`);
    entry.info = { ...entry.info, expiresAt: new Date(Date.now() + req.data.ttlSeconds * 1000).toISOString() };
    return entry.info;
  }

  async resumeSandbox(id: string): Promise<SandboxInfo> {
    const entry = this.#get(id);
    if (entry.info.state === "paused") entry.info = { ...entry.info, state: "running" };
    return entry.info;
  }

  /**
   * Records the snapshot on the sandbox's workload and answers with a snapshot that exists only
   * in this recording: a sandbox created from it (or a fork) is recorded with its origin.
   */
  async snapshotSandbox(id: string, request: SnapshotApiRequest): Promise<SnapshotInfo> {
    const entry = this.#get(id);
    const req = check(SnapshotApiRequest, request, "snapshot options");
    if (entry.info.state === "stopped") throw new NotFoundError(`Sandbox "${id}" is stopped`);
    const snapshotId = recordedId("snap_");
    const now = Date.now();
    const info: SnapshotInfo = {
      id: snapshotId,
      digest: ZERO_DIGEST,
      createdAt: new Date(now).toISOString(),
      ...("ttlSeconds" in req.retention ? { expiresAt: new Date(now + req.retention.ttlSeconds * 1000).toISOString() } : {}),
      retention: req.retention,
      tier: entry.info.tier,
      memory: req.memory ?? entry.info.tier !== "container",
      source: id,
      image: { digest: ZERO_DIGEST },
      sizes: {},
      labels: { ...req.labels },
    };
    const recorded: RecordedSnapshot = { snapshotId, request: req, deleted: false };
    (entry.workload.snapshots ??= []).push(recorded);
    this.#snapshots.set(snapshotId, { info, takenFrom: entry, recorded });
    return info;
  }

  /** Records `count` sandboxes whose origin is a fork of `id`, each with the parent's request. */
  async forkSandbox(id: string, request: ForkApiRequest = {}): Promise<SandboxInfo[]> {
    const entry = this.#get(id);
    const req = check(ForkApiRequestSchema, request, "fork options");
    if (entry.info.state !== "running") throw new NotFoundError(`Sandbox "${id}" is not running`);
    return Array.from({ length: req.count ?? 1 }, () => this.#add(entry.workload.request, { forkOf: id }));
  }

  /**
   * Record mode keeps no sandboxes warm: the request is checked and the pool answered as set,
   * with nothing ready or starting (a create is recorded the same with or without a pool).
   */
  async setWarmPool(request: WarmPoolRequest): Promise<WarmPoolInfo> {
    const req = check(WarmPoolRequest, request, "warm pool");
    const id = `pool_${randomBytes(8).toString("hex")}`;
    const info: WarmPoolInfo = {
      id,
      size: req.size,
      ready: 0,
      starting: 0,
      claimed: 0,
      backend: req.sandbox.backend ?? "namespace",
      tier: req.sandbox.backend === "vm" ? "vm-emulated" : "container",
      image: { ref: req.sandbox.image ?? "default", digest: ZERO_DIGEST },
      resources: { ...req.sandbox.resources },
      workMiB: req.sandbox.workMiB ?? 1024,
    };
    return info;
  }

  async listWarmPools(): Promise<WarmPoolInfo[]> {
    return [];
  }

  /** The snapshots taken while recording and not deleted; record mode sees no others. */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    return [...this.#snapshots.values()].filter((s) => !s.recorded.deleted).map((s) => s.info);
  }

  async getSnapshot(ref: string): Promise<SnapshotInfo> {
    const taken = this.#takenSnapshot(ref);
    if (taken === undefined || taken.recorded.deleted) throw new NotFoundError(`Snapshot "${ref}" not found (record mode knows only the snapshots this script took)`);
    return taken.info;
  }

  /** Marks a snapshot taken while recording as deleted; any other is NotFoundError (nothing on the host changes). */
  async deleteSnapshot(ref: string): Promise<void> {
    const taken = this.#takenSnapshot(ref);
    if (taken === undefined || taken.recorded.deleted) throw new NotFoundError(`Snapshot "${ref}" not found (record mode knows only the snapshots this script took)`);
    taken.recorded.deleted = true;
  }

  async killSandbox(id: string): Promise<SandboxInfo> {
    const entry = this.#get(id);
    entry.workload.killed = true;
    entry.info = { ...entry.info, state: "stopped", endReason: "killed" };
    return entry.info;
  }

  async exec(id: string, request: ExecApiRequest, _handlers: ExecHandlers, _options?: CallOptions): Promise<ExecStarted> {
    const entry = this.#get(id);
    const req = check(ExecApiRequest, request, "exec request");
    entry.workload.commands.push({ argv: [...req.argv], ...(req.cwd !== undefined ? { cwd: req.cwd } : {}), envNames: Object.keys(req.env ?? {}).sort() });
    const proc = ++entry.procs;
    const at = new Date().toISOString();
    const exit: ExitInfo = {
      exitCode: 0,
      signal: null,
      timedOut: false,
      oomKilled: false,
      durationMs: 0,
      stdoutBytes: 0,
      stderrBytes: 0,
      stdoutTruncated: false,
      stderrTruncated: false,
      receipt: { sandboxId: id, proc, imageDigest: ZERO_DIGEST, backend: entry.info.backend, startedAt: at, finishedAt: at },
    };
    return { proc, pid: 1, exit: Promise.resolve(exit) };
  }

  async signalProcess(id: string): Promise<void> {
    this.#get(id);
  }

  async writeStdin(id: string): Promise<void> {
    this.#get(id);
  }

  async resizePty(id: string): Promise<void> {
    this.#get(id);
  }

  async connectProcess(id: string, proc: number): Promise<ExecStarted> {
    this.#get(id);
    throw new NotFoundError(`Process ${proc} not found in sandbox "${id}": record mode runs no processes`);
  }

  async listProcesses(id: string): Promise<ProcessInfo[]> {
    this.#get(id);
    return [];
  }

  async setNetworkPolicy(id: string, policy: NetworkPolicyJson): Promise<SandboxInfo> {
    const entry = this.#get(id);
    entry.workload.networkPolicies.push(check(NetworkPolicySchema, policy, "network policy"));
    return entry.info;
  }

  async sandboxLogs(id: string): Promise<SandboxLogs> {
    this.#get(id);
    return { lines: [], truncated: false };
  }

  async publishPort(id: string): Promise<SandboxInfo> {
    this.#get(id);
    throw new UnsupportedCapabilityError(`${REFUSED}: no port is published`);
  }

  async networkEvents(id: string): Promise<NetworkEventsPage> {
    this.#get(id);
    return { events: [], next: 0, dropped: 0 };
  }

  async listSecrets(): Promise<SecretMeta[]> {
    return [];
  }

  async setSecret(): Promise<SecretMeta> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no secret is stored`);
  }

  async removeSecret(): Promise<void> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no secret is removed`);
  }

  async readFile(id: string): Promise<FileReadStream> {
    this.#get(id);
    return { size: 0, body: (async function* () {})() };
  }

  async writeFile(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>): Promise<{ bytes: number }> {
    const entry = this.#get(id);
    let bytes = 0;
    if (data instanceof Uint8Array) bytes = data.byteLength;
    else for await (const chunk of data) bytes += chunk.byteLength;
    entry.workload.files.push({ path, bytes });
    return { bytes };
  }

  async writeTree(id: string, path: string, tar: AsyncIterable<Uint8Array>, options?: TreeOptions): Promise<TreeWriteResult> {
    const entry = this.#get(id);
    const result: TreeWriteResult = { files: 0, dirs: 0, bytes: 0, skipped: 0 };
    for await (const { entry: e, body } of readTar(tar, treeLimits(options))) {
      if (e.type === "file") {
        let bytes = 0;
        for await (const chunk of body) bytes += chunk.byteLength;
        entry.workload.files.push({ path: path === "/" ? `/${e.path}` : `${path}/${e.path}`, bytes });
        result.files += 1;
        result.bytes += bytes;
      } else if (e.type === "dir") result.dirs += 1;
      else result.skipped += 1;
    }
    return result;
  }

  async readTree(id: string): Promise<AsyncIterable<Uint8Array>> {
    this.#get(id);
    return (async function* () {
      yield tarEnd();
    })();
  }

  async listDir(id: string): Promise<DirListingResult> {
    this.#get(id);
    return { entries: [], truncated: false };
  }

  async stat(id: string, path: string): Promise<FileInfo> {
    this.#get(id);
    throw new NotFoundError(`"${path}" does not exist (record mode: the sandbox holds nothing)`);
  }

  async mkdir(id: string): Promise<void> {
    this.#get(id);
  }

  async remove(id: string): Promise<void> {
    this.#get(id);
  }

  async rename(id: string): Promise<void> {
    this.#get(id);
  }

  async listImages(): Promise<ImageInfo[]> {
    return [];
  }

  async buildImage(): Promise<ImageInfo> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no image is built`);
  }

  async importImage(): Promise<ImageInfo> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no image is imported`);
  }

  async pullImage(): Promise<ImageInfo> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no image is pulled`);
  }

  async removeImage(): Promise<void> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no image is removed`);
  }

  async pushBundle(): Promise<BundlePushInfo> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no bundle is pushed`);
  }

  async pullBundle(): Promise<BundlePullInfo> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no bundle is pulled`);
  }

  async inspectImage(): Promise<ImageInspect> {
    throw new UnsupportedCapabilityError(`${REFUSED}: no image is inspected`);
  }

  async close(): Promise<void> {}
}

let processRecorder: RecordingEngine | undefined;

/**
 * The process-wide RecordingEngine when `MVM_RECORD_FILE` is set (its recording is written there
 * when the process exits), else undefined.
 * @throws InvalidArgumentError when MVM_RECORD_FILE is not an absolute path
 */
export function recorderFromEnv(env: NodeJS.ProcessEnv = process.env): RecordingEngine | undefined {
  const file = env[RECORD_FILE_ENV];
  if (file === undefined || file === "") return undefined;
  if (!isAbsolute(file)) throw new InvalidArgumentError(`Invalid ${RECORD_FILE_ENV} "${file}": must be an absolute path`);
  if (processRecorder === undefined) {
    const recorder = new RecordingEngine();
    processRecorder = recorder;
    process.once("exit", () => writeRecordingSync(file, recorder.recording()));
  }
  return processRecorder;
}

/** Writes a recording atomically: a private temp file in the same directory, renamed over `path`. */
export function writeRecordingSync(path: string, recording: Recording): void {
  const temp = join(dirname(path), `.recording-${process.pid}-${randomBytes(6).toString("hex")}`);
  writeFileSync(temp, `${JSON.stringify(recording)}\n`, { mode: 0o600, flag: "wx" });
  renameSync(temp, path);
}

/**
 * Reads a recording another process wrote, as untrusted input: size-bounded, JSON, schema-checked.
 * @throws NotFoundError when the file is missing; InvalidArgumentError for anything else wrong
 */
export async function readRecording(path: string): Promise<Recording> {
  const text = await readBoundedText(path, MAX_RECORDING_BYTES, "Recording");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new InvalidArgumentError(`Recording "${path}" is not JSON: ${(cause as Error).message}`, { cause });
  }
  return check(RecordingSchema, value, `recording "${path}"`);
}
