/**
 * `Sandbox`: the SDK's entry point. One object per sandbox, with its commands and files.
 */
import {
  CreateSandboxRequest,
  InvalidArgumentError,
  NetworkPolicy,
  NotFoundError,
  TransportError,
  type LogSource,
  type SandboxLogs,
  SecretRef,
  requestFromPlan,
  callerSettingsFromEnv,
  strongerTier,
  type AuditReceiptRef,
  type NetworkPolicyJson,
  type SignedPlan,
  type SecretRefJson,
  type CallOptions,
  type EngineApi,
  type ProgressEvent,
  type SandboxId,
  type SandboxInfo,
  type SnapshotApiRequest,
  type SnapshotRetention,
  type Tier,
} from "@mvm/protocol";
import { callOptions } from "./_internal/call-options.js";
import { Commands } from "./commands.js";
import { sharedEngine, type ConnectionOptions } from "./connect.js";
import { Files } from "./files.js";
import { SandboxNetworkApi } from "./network.js";
import { Snapshot, snapshotRefOf, type SnapshotRef } from "./snapshot.js";

/** Options of {@link Sandbox.snapshot}. */
export interface SandboxSnapshotOptions extends CallOptions {
  /**
   * How long the snapshot is kept; there is no default. `{ ttlSeconds }` (60 to 7,776,000, i.e.
   * 90 days) removes it that long after it was taken; `{ manual: true }` keeps it until deleted.
   */
  retention: SnapshotRetention;
  /**
   * Capture process memory too. Each tier does one kind: the VM tier memory, devices and /work
   * (`true`), the container tier /work and /tmp (`false`); asking for the other kind is
   * UnsupportedCapabilityError. @default true on the VM tier, false on the container tier
   */
  memory?: boolean;
  /**
   * Allow the snapshot of a sandbox given secrets in its environment (`posture: "env"`); their
   * values are then in the snapshot. Mediated secrets are placeholders and need no consent.
   * @default false
   */
  includeEnvSecrets?: boolean;
  /**
   * At most 31; keys of printable ASCII up to 64 characters, not beginning `mvm/` (the engine's
   * own), values up to 256.
   */
  labels?: Record<string, string>;
}

/** Options of {@link Sandbox.fork}. */
export interface SandboxForkOptions extends CallOptions {
  /** How many sandboxes to start, 1 to 16 (MAX_FORK_COUNT). @default 1 */
  count?: number;
}

/** Options of {@link Sandbox.create}: what to create, where, and how long to wait for it. */
export interface SandboxCreateOptions extends Omit<CreateSandboxRequest, "network" | "secrets" | "fromSnapshot">, ConnectionOptions, CallOptions {
  /**
   * Start from a snapshot (its id, digest, or the {@link Snapshot} object) instead of a fresh
   * image: its files come back and, when it holds memory (VM tier), its running processes
   * continue. The image, backend and sizes are the snapshot's; naming others is refused. The
   * new sandbox gets its own id, and its chunks are verified before anything boots
   * (SnapshotMismatchError when one fails).
   * @example
   * await using copy = await Sandbox.create({ fromSnapshot: snap.id, ttlSeconds: 600 });
   */
  fromSnapshot?: SnapshotRef;
  /**
   * Egress policy: nothing is reachable unless a rule allows it, and then only through the host's
   * gateway. @default NetworkPolicy.denyByDefault()
   */
  network?: NetworkPolicy | NetworkPolicyJson;
  /**
   * Environment variables filled from secrets on the host. A "mediated" secret (the default) is
   * only a placeholder inside the sandbox; the gateway puts the real value into request headers
   * sent over TLS to the hosts the secret is bound to.
   * @example { OPENAI_API_KEY: SecretRef.from("openai-api-key") }
   */
  secrets?: Record<string, SecretRef | SecretRefJson>;
  /** Called as the image is resolved and the sandbox boots. */
  onProgress?: (event: ProgressEvent) => void;
  /**
   * The weakest isolation tier the sandbox may get: "container" < "vm-emulated" < "vm-hardware".
   * A backend that gives less (chosen by the engine or named in `backend`) is refused with
   * UnsupportedCapabilityError before anything boots. The stronger of this, `MVM_MINIMUM_TIER` in
   * this process and the engine's own minimum applies.
   * @default $MVM_MINIMUM_TIER, else no minimum
   * @example { minimumTier: "vm-emulated" }
   */
  minimumTier?: Tier;
  /**
   * Accept the container tier for a create that names no backend. On the container tier the
   * sandbox shares the host kernel: claims 1 and 2 of docs/SECURITY.md (no host file access, no
   * way to uid 0) hold only while the host kernel has no exploitable bug, and claim 3 (a tampered
   * root filesystem fails closed) does not hold. Without this, such a create is refused with
   * UnsupportedCapabilityError naming those claims. Naming `backend: "namespace"` chooses the tier
   * explicitly and needs no acknowledgment.
   * @default true when MVM_ACK_CONTAINER_TIER is "1" or "true" in this process, else false
   */
  acknowledgeContainerTier?: boolean;
  /**
   * Refuse (PolicyDeniedError) environment variables that look like plain-text secrets instead of
   * warning. The engine's own MVM_STRICT_SECRETS also applies: either one turns it on.
   * @default true when MVM_STRICT_SECRETS is "1" or "true" in this process, else false
   */
  strictSecrets?: boolean;
}

/** Connection settings and cancellation of the other static calls. */
export type SandboxConnectOptions = ConnectionOptions & CallOptions;

const REQUEST_FIELDS = ["image", "backend", "ttlSeconds", "onTtl", "resources", "workMiB", "env", "labels", "ports", "intent", "command", "function"] as const;

/** Options of {@link Sandbox.plan}. */
export interface SandboxPlanOptions extends Omit<SandboxCreateOptions, "plan"> {
  /** How long the plan may be admitted, in seconds from now (1 .. 86400). @default 3600 */
  validForSeconds?: number;
}

/** The create request `options` describe, validated. With a plan, fields not given are the plan's. */
export function requestOf(options: SandboxCreateOptions): CreateSandboxRequest {
  const request: Record<string, unknown> = options.plan ? { ...requestFromPlan(options.plan) } : {};
  for (const k of REQUEST_FIELDS) if (options[k] !== undefined) request[k] = options[k];
  const fromEnv = callerSettingsFromEnv(process.env);
  const minimumTier = strongerTier(options.minimumTier, fromEnv.minimumTier);
  if (minimumTier !== undefined) request.minimumTier = minimumTier;
  const acknowledged = options.acknowledgeContainerTier ?? fromEnv.acknowledgeContainerTier;
  if (acknowledged !== undefined) request.acknowledgeContainerTier = acknowledged;
  if (options.strictSecrets === true || fromEnv.strictSecrets === true) request.strictSecrets = true;
  if (options.fromSnapshot !== undefined) request.fromSnapshot = snapshotRefOf(options.fromSnapshot);
  if (options.network !== undefined) request.network = options.network instanceof NetworkPolicy ? options.network.toJSON() : options.network;
  if (options.secrets !== undefined) {
    request.secrets = Object.fromEntries(
      Object.entries(options.secrets).map(([env, ref]) => [env, ref instanceof SecretRef ? ref.toJSON() : ref]),
    );
  }
  const parsed = CreateSandboxRequest.safeParse(request);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.join(".") : "request";
    throw new InvalidArgumentError(`Invalid sandbox option "${where}": ${issue?.message ?? "invalid"}`, { cause: parsed.error });
  }
  return parsed.data;
}

/**
 * A running (or stopped) sandbox.
 *
 * @example
 * await using sb = await Sandbox.create({ image: "debian:bookworm+python3", ttlSeconds: 600 });
 * const r = await sb.commands.run(["python3", "-c", "print(2+2)"], { timeoutSeconds: 30 });
 * console.log(r.stdout); // "4\n"
 */
export class Sandbox implements AsyncDisposable {
  readonly id: SandboxId;
  /** Run and manage processes. */
  readonly commands: Commands;
  /** Read and write files. */
  readonly files: Files;
  /** Egress policy and network events. */
  readonly network: SandboxNetworkApi;
  readonly #engine: EngineApi;
  #info: SandboxInfo;

  private constructor(engine: EngineApi, info: SandboxInfo) {
    this.#engine = engine;
    this.#info = info;
    this.id = info.id as SandboxId;
    this.commands = new Commands(engine, info.id);
    this.files = new Files(engine, info.id);
    this.network = new SandboxNetworkApi(engine, info.id, (next) => (this.#info = next));
  }

  /** What the engine last said about this sandbox (see {@link refresh}). */
  get info(): SandboxInfo {
    return this.#info;
  }

  /**
   * The plan that admitted this sandbox and the audit entry of its latest lifecycle event (created,
   * policy changed, killed, expired): `mvmctl audit show <auditEntryId>` prints it.
   */
  get receipt(): AuditReceiptRef | undefined {
    return this.#info.receipt;
  }

  /** The engine this sandbox is reached through. */
  get engine(): EngineApi {
    return this.#engine;
  }

  /**
   * Creates a sandbox and waits until it runs. Without `engine`, the engine is chosen by `mode`
   * (a daemon when one answers, else embedded in this process) and shared with other calls.
   * @throws InvalidArgumentError for a bad request, AdmissionError / UnsupportedCapabilityError /
   *   PolicyDeniedError when the engine refuses it, TimeoutError / AbortedError
   * @example
   * await using sb = await Sandbox.create({
   *   image: "debian:bookworm+python3",
   *   ttlSeconds: 600,
   *   resources: { memoryMiB: 512, pids: 256, cpus: 1 },
   * });
   */
  static async create(options: SandboxCreateOptions = {}): Promise<Sandbox> {
    const request = requestOf(options);
    const engine = await sharedEngine(options);
    const call: CallOptions & { onProgress?: (event: ProgressEvent) => void } = callOptions(options);
    if (options.onProgress !== undefined) call.onProgress = options.onProgress;
    const info = await engine.createSandbox(request, call);
    return new Sandbox(engine, info);
  }

  /**
   * Plan mode: the signed execution plan `Sandbox.create(options)` would be admitted through, for
   * review. Boots nothing. Pass it back as `Sandbox.create({ plan })` (with `env` when it has
   * environment variables: a plan holds only their digest) to run it, once, within its validity.
   * @example
   * const plan = await Sandbox.plan({ image: "debian:bookworm+python3", command: ["python3", "job.py"] });
   * console.log(plan.plan.planId, plan.plan.ir);
   * await using sb = await Sandbox.create({ plan });
   */
  static async plan(options: SandboxPlanOptions = {}): Promise<SignedPlan> {
    const request = requestOf(options);
    const engine = await sharedEngine(options);
    const call: CallOptions & { validForSeconds?: number; onProgress?: (event: ProgressEvent) => void } = callOptions(options);
    if (options.validForSeconds !== undefined) call.validForSeconds = options.validForSeconds;
    if (options.onProgress !== undefined) call.onProgress = options.onProgress;
    return engine.planSandbox(request, call);
  }

  /**
   * Attaches to an existing sandbox by id.
   * @throws NotFoundError when the engine does not know it
   * @example
   * const again = await Sandbox.connect(sb.id);
   */
  static async connect(id: string, options: SandboxConnectOptions = {}): Promise<Sandbox> {
    const engine = await sharedEngine(options);
    return new Sandbox(engine, await engine.getSandbox(id, callOptions(options)));
  }

  /**
   * Lists the sandboxes the engine knows (running and recently stopped).
   * @example
   * const running = (await Sandbox.list()).filter((s) => s.state === "running");
   */
  static async list(options: SandboxConnectOptions = {}): Promise<SandboxInfo[]> {
    const engine = await sharedEngine(options);
    return engine.listSandboxes(callOptions(options));
  }

  /**
   * Fetches the sandbox's current state into {@link info}.
   * @example
   * if ((await sb.refresh()).state === "stopped") console.log(sb.info.endReason);
   */
  async refresh(options?: CallOptions): Promise<SandboxInfo> {
    this.#info = await this.#engine.getSandbox(this.id, options);
    return this.#info;
  }

  /**
   * Stops the sandbox and everything in it. Idempotent: killing a stopped or forgotten sandbox
   * is not an error.
   * @example
   * await sb.kill();
   */
  async kill(options?: CallOptions): Promise<void> {
    try {
      this.#info = await this.#engine.killSandbox(this.id, options);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
  }

  /**
   * Freezes every process of the sandbox: no CPU, while its memory, files and connections are kept
   * (container tier: the cgroup freezer; VM tier: the VM's vCPUs stop). Until {@link resume},
   * exec, file and process calls fail with SandboxPausedError. Pausing a paused sandbox is a no-op.
   *
   * The TTL keeps running while paused, so a paused sandbox still expires; `{ ttl: "frozen" }`
   * stops it until resume (the remaining seconds are kept). A sandbox paused with no TTL running
   * is killed after 7 days (MAX_PAUSED_SECONDS). Recorded in the audit log as `sandbox.paused`.
   *
   * @param options.ttl `"running"` or `"frozen"`. @default "running"
   * @returns the sandbox's state, `"paused"`, with its receipt naming the audit entry
   * @throws UnsupportedCapabilityError when the host cannot pause this backend (no cgroup freezer)
   * @throws NotFoundError when the sandbox is not running
   * @example
   * await sb.pause({ ttl: "frozen" });
   * // ... later
   * await sb.resume();
   */
  async pause(options: CallOptions & { ttl?: "running" | "frozen" } = {}): Promise<SandboxInfo> {
    const { ttl, ...call } = options;
    this.#info = await this.#engine.pauseSandbox(this.id, ttl !== undefined ? { ttl } : {}, call);
    return this.#info;
  }

  /**
   * The sandbox's logs: what its agent wrote and what its commands printed (the engine keeps the
   * last 1 MiB of command output), secret values replaced, oldest first.
   * @param options.source only `agent` or only `workload` lines @default both
   * @param options.tail at most this many of the last lines @default 10000
   * @param options.after only what arrived after an earlier answer: that answer's `next`
   * @example
   * for (const line of (await sb.logs({ source: "workload" })).lines) console.log(line.text);
   */
  logs(options: CallOptions & { source?: LogSource; tail?: number; after?: string } = {}): Promise<SandboxLogs> {
    return this.#engine.sandboxLogs(this.id, options);
  }

  /**
   * Where the guest port `port` is reached from the engine's host: `"127.0.0.1:HOSTPORT"`. The port
   * must be published, at create (`ports`) or with {@link publishPort}.
   * @throws NotFoundError when the port is not published
   * @example
   * await sb.commands.start(["python3", "-m", "http.server", "8000"]);
   * const host = await sb.getHost(8000); // "127.0.0.1:39215"
   * await fetch(`http://${host}/`);
   */
  async getHost(port: number, options?: CallOptions): Promise<string> {
    const info = await this.refresh(options);
    const found = info.ports?.find((p) => p.guest === port);
    if (found === undefined) {
      throw new NotFoundError(`Port ${port} of sandbox "${this.id}" is not published`, { hint: `Publish it with sandbox.publishPort(${port})` });
    }
    return `127.0.0.1:${found.host}`;
  }

  /**
   * Publishes the guest port `port` of this running sandbox on a loopback port of the engine's
   * host (`hostPort`, or one the kernel picks) and answers where it is reached, like
   * {@link getHost}. Publishing a published port again answers the same address. Recorded in the
   * audit log as `port.published`.
   * @throws InvalidArgumentError when the sandbox already publishes 16 ports, or `hostPort` is taken
   * @throws AlreadyExistsError when the port is published on a different host port
   * @example
   * const host = await sb.publishPort(3000);
   */
  async publishPort(port: number, options: CallOptions & { hostPort?: number } = {}): Promise<string> {
    const { hostPort, ...call } = options;
    this.#info = await this.#engine.publishPort(this.id, hostPort === undefined ? { guest: port } : { guest: port, host: hostPort }, call);
    const found = this.#info.ports?.find((p) => p.guest === port);
    if (found === undefined) throw new TransportError(`The engine did not list port ${port} of "${this.id}" after publishing it`);
    return `127.0.0.1:${found.host}`;
  }

  /**
   * Sets the sandbox to end `ttlSeconds` from now, extending or shortening its TTL (1 s to 7 days,
   * and at most the operator policy's maxTtlSeconds). While paused with the TTL frozen, it becomes
   * the time left at resume. Recorded in the audit log as `sandbox.ttl_set`.
   * @throws InvalidArgumentError out of bounds; PolicyDeniedError over the operator's maximum
   * @example
   * await sb.setTimeout(3600); // one more hour from now
   */
  async setTimeout(ttlSeconds: number, options?: CallOptions): Promise<SandboxInfo> {
    this.#info = await this.#engine.setSandboxTimeout(this.id, ttlSeconds, options);
    return this.#info;
  }

  /**
   * Lets a paused sandbox run again, from where it stopped. A TTL frozen by {@link pause} restarts
   * with the seconds it had left; one that ran out under `onTtl: "pause"` restarts in full.
   * Resuming a running sandbox is a no-op. Recorded in the audit log as `sandbox.resumed`.
   * @throws NotFoundError when the sandbox is not running
   * @example
   * await sb.resume();
   * await sb.commands.run(["cat", "/work/state"]);
   */
  async resume(options?: CallOptions): Promise<SandboxInfo> {
    this.#info = await this.#engine.resumeSandbox(this.id, options);
    return this.#info;
  }

  /**
   * Captures the sandbox's state into the host's snapshot store; the sandbox keeps running.
   * VM tier: memory, device state and /work, so running processes continue in a sandbox started
   * from it.
   * Container tier: /work and /tmp (`memory: false`; process memory cannot be captured there).
   * Recorded in the audit log as `snapshot.created`.
   *
   * Retention is always explicit: pass `{ ttlSeconds }` or `{ manual: true }`.
   *
   * @returns the snapshot: `id`, `digest`, `createdAt`, `expiresAt`, `tier`, `memory`, `sizes`
   * @throws PolicyDeniedError when the sandbox holds env-posture secrets and `includeEnvSecrets` is not set
   * @throws UnsupportedCapabilityError when the tier cannot capture what was asked (memory on the container tier)
   * @throws NotFoundError when the sandbox is not running
   * @example
   * const snap = await sb.snapshot({ retention: { ttlSeconds: 86400 } });
   * await using copy = await Sandbox.create({ fromSnapshot: snap.id });
   */
  async snapshot(options: SandboxSnapshotOptions): Promise<Snapshot> {
    const { retention, memory, includeEnvSecrets, labels, ...call } = options ?? ({} as SandboxSnapshotOptions);
    if (retention === undefined) {
      throw new InvalidArgumentError("A snapshot needs an explicit retention", { hint: "Pass { retention: { ttlSeconds: N } } or { retention: { manual: true } }" });
    }
    const request: SnapshotApiRequest = { retention };
    if (memory !== undefined) request.memory = memory;
    if (includeEnvSecrets !== undefined) request.includeEnvSecrets = includeEnvSecrets;
    if (labels !== undefined) request.labels = labels;
    return new Snapshot(this.#engine, await this.#engine.snapshotSandbox(this.id, request, callOptions(call)));
  }

  /**
   * Starts `count` sandboxes from this sandbox's current state (its files and, on the VM tier, its
   * memory and running processes); each gets its own id, cgroup, copy of /work and reseeded RNG,
   * and then runs on its own. This sandbox keeps running. Each child is disposable:
   * `await using` or `kill()` them.
   * @throws UnsupportedCapabilityError when the backend cannot fork
   * @throws NotFoundError when the sandbox is not running
   * @example
   * const kids = await sb.fork({ count: 4 });
   * try {
   *   await Promise.all(kids.map((k, i) => k.commands.run(["sh", "-c", `try-action ${i}`])));
   * } finally {
   *   await Promise.all(kids.map((k) => k.kill()));
   * }
   */
  async fork(options: SandboxForkOptions = {}): Promise<Sandbox[]> {
    const { count, ...call } = options;
    const infos = await this.#engine.forkSandbox(this.id, count !== undefined ? { count } : {}, callOptions(call));
    return infos.map((info) => new Sandbox(this.#engine, info));
  }

  /** Kills the sandbox at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}
