/**
 * The engine: sandbox lifecycle (create → running ⇄ paused → stopped), TTL expiry, backend selection,
 * images, and reaping what a crashed engine left behind. Implements EngineApi, so the daemon
 * serves it and the SDK embeds it the same way.
 */
import { createHash, randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { chmod, lstat, mkdir, open as openFile, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  CreateSandboxRequest,
  ExecApiRequest,
  ImportImageApiRequest,
  PauseApiRequest,
  InvalidArgumentError,
  sandboxEnvProblem,
  MAX_DIR_ENTRIES,
  NotFoundError,
  TransportError,
  UnsupportedCapabilityError,
  NetworkPolicySchema,
  SYSTEM_TRUST_BUNDLE_PATH,
  egressEnvironment,
  canonicalJson,
  toMvmError,
  AdmissionError,
  PolicyDeniedError,
  SignedPlan,
  backendForTier,
  type AuditReceiptRef,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type SecretMeta,
  type BackendName,
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
  type KillSignal,
  type MvmError,
  type ProcessInfo,
  type ProgressEvent,
  type Resources,
  type SandboxInfo,
  type Tier,
  type WriteFileOptions,
  STRICT_SECRETS_ENV,
  envFlagOn,
  type ForkApiRequest,
  type SnapshotApiRequest,
  type SnapshotInfo,
} from "@mvm/protocol";
import { z } from "zod";
import type { Backend, ProbeResult } from "./backends/types.js";
import {
  checkTier,
  chooseBackend,
  chooseDefault,
  parseTier,
  resolveConfiguredDefault,
  strictestMinimum,
  type ConfiguredDefault,
  type TierMinimum,
} from "./backend-choice.js";
import { LiveSandbox, type PauseChange } from "./live-sandbox.js";
import { newSandboxId } from "./ids.js";
import { callSignal } from "./_internal/signals.js";
import { SandboxRecords, defaultStateDir, isAlive, processStartTime } from "./state.js";
import type { ImageStore } from "./images/store.js";
import type { TestAllowance } from "./egress/address-floor.js";
import { EgressGateway, type MediatedSecret } from "./egress/gateway.js";
import { EgressResolver } from "./egress/resolver.js";
import { SandboxCa } from "./egress/sandbox-ca.js";
import { SandboxNetwork, type NetworkTally } from "./egress/sandbox-network.js";
import { SecretStore } from "./secrets/store.js";
import { resolveSecrets, type ResolvedSecret } from "./secrets/resolve.js";
import { Redactor } from "./secrets/redact.js";
import { checkSecretHygiene } from "./secrets/warnings.js";
import { AdmissionGate, DEFAULT_PLAN_VALIDITY_MS } from "./admission/gate.js";
import { irFromCreateRequest } from "./admission/ir.js";
import { AuditEventSchema, argvDigest, sha256Hex, type AuditEvent } from "./audit/entry.js";
import type { AuditReceipt } from "./audit/log.js";

export const ENGINE_VERSION = "0.1.0";
export const DEFAULT_IMAGE = "debian:bookworm+python3";

export interface EngineOptions {
  /** @default defaultStateDir() */
  stateDir?: string;
  /**
   * The backends this engine offers. A create that names none runs on `defaultBackend`, or else
   * on the strongest usable tier (vm-hardware, vm-emulated, container); equal tiers go by this order.
   */
  backends: Backend[];
  /**
   * The backend of creates that name none, instead of the strongest usable one. It never falls
   * back: while it is unusable, such creates fail with UnsupportedCapabilityError. A plain name
   * is reported as set by "defaultBackend".
   * @default the strongest usable backend
   */
  defaultBackend?: BackendName | ConfiguredDefault;
  /**
   * The weakest tier any sandbox of this engine may get; a create may ask for a stronger one
   * (`minimumTier`), never a weaker one. A plain tier is reported as set by "minimumTier".
   * @default none (every tier is allowed)
   */
  minimumTier?: Tier | TierMinimum;
  /**
   * Refuse plain-text secrets in create and exec requests instead of warning, whatever the
   * request says (a request may turn strict mode on, never off).
   * @default process.env.MVM_STRICT_SECRETS is "1" or "true", read at each request
   */
  strictSecrets?: boolean;
  images: ImageStore;
  /** Host directory of the assembled agent runtime (node, libs, agent.cjs). */
  agentDir: string;
  /** @default "debian:bookworm+python3" */
  defaultImage?: string;
  /** @default 600 */
  defaultTtlSeconds?: number;
  /** Limits applied when a create names none and the backend can enforce them. */
  defaultResources?: Resources;
  /** @default 1024 */
  defaultWorkMiB?: number;
  /** @default 256 */
  tmpMiB?: number;
  /**
   * Time allowed from launch to the agent's hello, ms.
   * @default by tier: 20000 (container), 60000 (vm-hardware), 180000 (vm-emulated)
   */
  helloTimeoutMs?: number;
  /**
   * How often the engine pings each sandbox's agent, and how long an answer may take before the
   * sandbox counts as hung: it is then torn down and its calls fail with SandboxCrashedError.
   * @default by tier: every 10 s, answer within 30 s (container, vm-hardware) or 60 s (vm-emulated)
   */
  heartbeat?: { intervalMs: number; timeoutMs: number };
  /** The egress gateway's settings. */
  egress?: EgressOptions;
  /**
   * The operator policy file, enforced when a plan is admitted; re-read when it changes.
   * @default $MVM_POLICY_FILE, else `<stateDir>/policy.json` (absent: no policy)
   */
  policyFile?: string;
  /**
   * How often a running sandbox's network decisions are summarized in the audit log (only when
   * there were any since the last summary); its last summary is written when it ends, ms.
   * @default 60000
   */
  networkSummaryIntervalMs?: number;
}

/** Options of {@link Engine.planSandbox}. */
export interface PlanOptions extends CallOptions {
  /** How long the plan may be admitted, from now, in seconds (1 s .. 24 h). @default 3600 */
  validForSeconds?: number;
  onProgress?: (event: ProgressEvent) => void;
}

export interface EgressOptions {
  /**
   * DNS servers the gateway asks ("ip" or "ip:port"); never the sandbox's own resolver.
   * @default the servers in MVM_EGRESS_DNS (comma-separated), else the host's /etc/resolv.conf
   */
  dnsServers?: readonly string[];
  /** Extra CA certificates (PEM) trusted for upstream TLS when the gateway intercepts to substitute secrets. */
  upstreamCa?: readonly string[];
  /**
   * Test-only: blocks inside 198.18.0.0/15 or 2001:2::/48 the address floor lets through, so the
   * egress suite reaches test hosts in network namespaces it made. Only code sets it; no network
   * policy, request, file or environment variable can.
   */
  testAllowance?: TestAllowance;
}

/** Largest image CA bundle copied into a sandbox's trust bundle, bytes. */
const MAX_IMAGE_CA_BUNDLE_BYTES = 4 * 1024 * 1024;
/** Stopped sandboxes whose network events stay readable. */
const STOPPED_NETWORKS_KEPT = 64;
const DENY_ALL: NetworkPolicyJson = { version: 1, default: "deny", rules: [] };

const STOPPED_KEPT = 1000;

/** Default heartbeat deadline by tier, ms. */
const HEARTBEAT_TIMEOUT_MS: Record<ProbeResult["tier"], number> = { container: 30_000, "vm-hardware": 30_000, "vm-emulated": 60_000 };

/** Default time from launch to hello by tier, ms: an emulated guest boots its kernel slowly. */
const HELLO_TIMEOUT_MS: Record<ProbeResult["tier"], number> = { container: 20_000, "vm-hardware": 60_000, "vm-emulated": 180_000 };

export class Engine implements EngineApi {
  readonly stateDir: string;
  readonly #options: EngineOptions;
  readonly #configuredDefault: ConfiguredDefault | undefined;
  readonly #minimumTier: TierMinimum | undefined;
  readonly #records: SandboxRecords;
  readonly #live = new Map<string, LiveSandbox>();
  readonly #stopped = new Map<string, SandboxInfo>();
  readonly #stoppedNetworks = new Map<string, SandboxNetwork>();
  readonly #gateway: EgressGateway;
  readonly secrets: SecretStore;
  #probes: ProbeResult[] = [];
  #gate!: AdmissionGate;
  /** The one command a sandbox may run, when its plan declares one. */
  readonly #commands = new Map<string, readonly string[]>();
  /** Settles when a stopped sandbox's end is in the audit log. */
  readonly #endRecorded = new Map<string, Promise<void>>();
  #owner!: { pid: number; startTime: string };
  #closing: Promise<void> | undefined;
  #summaryTimer: NodeJS.Timeout | undefined;
  #summarizing = false;

  private constructor(options: EngineOptions) {
    this.#options = options;
    this.#configuredDefault = resolveConfiguredDefault(options.defaultBackend, options.backends.map((b) => b.name));
    const minimum = options.minimumTier;
    this.#minimumTier =
      minimum === undefined
        ? undefined
        : typeof minimum === "string"
          ? { tier: parseTier(minimum, "minimumTier"), setting: "minimumTier" }
          : { tier: parseTier(minimum.tier, minimum.setting), setting: minimum.setting };
    this.stateDir = options.stateDir ?? defaultStateDir();
    this.#records = new SandboxRecords(this.stateDir);
    this.secrets = new SecretStore(join(this.stateDir, "secrets"));
    const dnsServers = options.egress?.dnsServers ?? envList(process.env.MVM_EGRESS_DNS);
    this.#gateway = new EgressGateway({
      resolver: new EgressResolver(dnsServers ? { servers: dnsServers } : {}),
      ...(options.egress?.upstreamCa ? { upstreamCa: options.egress.upstreamCa } : {}),
      ...(options.egress?.testAllowance ? { testAllowance: options.egress.testAllowance } : {}),
    });
  }

  /**
   * Opens the state directory, reaps sandboxes of dead engines, probes the backends.
   * @throws InvalidArgumentError when `defaultBackend` is not one of `backends`
   */
  static async open(options: EngineOptions): Promise<Engine> {
    const summaryMs = options.networkSummaryIntervalMs ?? 60_000;
    if (!Number.isSafeInteger(summaryMs) || summaryMs < 10) {
      throw new InvalidArgumentError(`Invalid networkSummaryIntervalMs "${summaryMs}": must be an integer of at least 10`);
    }
    const engine = new Engine(options);
    await mkdir(engine.stateDir, { recursive: true, mode: 0o711 });
    await chmod(engine.stateDir, 0o711);
    await engine.#records.init();
    engine.#gate = await AdmissionGate.open(engine.stateDir, options.policyFile !== undefined ? { policyFile: options.policyFile } : {});
    const startTime = await processStartTime(process.pid);
    engine.#owner = { pid: process.pid, startTime: startTime ?? "0" };
    await engine.reapOrphans();
    for (const b of options.backends) await b.sweep?.();
    engine.#probes = await Promise.all(options.backends.map((b) => b.probe()));
    engine.#summaryTimer = setInterval(() => void engine.#summarizeNetworks(), summaryMs).unref();
    return engine;
  }

  /** Appends a `network.summary` for each running sandbox whose network decided anything since its last one. */
  async #summarizeNetworks(): Promise<void> {
    if (this.#summarizing || this.#closing) return;
    this.#summarizing = true;
    try {
      for (const sandbox of this.#live.values()) {
        if (!sandbox.info.receipt || !sandbox.network.tallyPending) continue;
        await this.#gate.record(networkSummary(sandbox.info.id, sandbox.network.takeTally())).catch(() => {
          // The log refuses entries after a failed write; the failure surfaces on the next admission.
        });
      }
    } finally {
      this.#summarizing = false;
    }
  }

  /** Releases everything left by engines that are no longer running. Returns the ids reaped. */
  async reapOrphans(): Promise<string[]> {
    const reaped: string[] = [];
    for (const { id, record } of await this.#records.scan()) {
      if (this.#live.has(id)) continue;
      if (record && (await isAlive(record.owner))) continue;
      if (!record && (await recentlyCreated(this.#records.sandboxDir(id)))) continue;
      if (record?.reap) {
        const backend = this.#options.backends.find((b) => b.name === record.reap!.backend);
        await backend?.reap(record.reap);
      }
      await this.#records.remove(id);
      // The engine that ran it died without recording its end: this engine records it.
      if (record?.info.receipt) await this.#gate.record({ type: "sandbox.killed", sandboxId: id, by: "engine" }).catch(() => {});
      reaped.push(id);
    }
    return reaped;
  }

  async health(): Promise<HealthInfo> {
    this.#probes = await Promise.all(this.#options.backends.map((b) => b.probe()));
    const def = chooseDefault(this.#probes, this.#configuredDefault);
    return {
      version: ENGINE_VERSION,
      defaultBackend: this.#probes[def.index]?.backend ?? null,
      defaultReason: def.reason,
      backends: this.#probes.map((p) => ({
        backend: p.backend,
        tier: p.tier,
        usable: p.usable,
        checks: p.checks.map((c) => ({ name: c.name, ok: c.ok, detail: c.detail, ...(c.hint ? { hint: c.hint } : {}) })),
        enforceable: { ...p.enforceable },
      })),
    };
  }

  /**
   * The requested backend, or the default; never a substitute for a requested one. Its tier must
   * meet the stronger of the request's and the engine's minimum, and a container tier the engine
   * chose must be acknowledged by the request.
   */
  #chooseBackend(
    requested: BackendName | undefined,
    req: Pick<CreateSandboxRequest, "minimumTier" | "acknowledgeContainerTier">,
  ): { backend: Backend; probe: ProbeResult; defaulted: boolean } {
    const { index, defaulted, reason } = chooseBackend(this.#probes, requested, this.#configuredDefault);
    const probe = this.#probes[index]!;
    const minimum = strictestMinimum(req.minimumTier !== undefined ? { tier: req.minimumTier, setting: "minimumTier" } : undefined, this.#minimumTier);
    checkTier(this.#probes, probe, {
      defaulted,
      ...(reason !== undefined ? { reason } : {}),
      minimum,
      acknowledgedContainer: req.acknowledgeContainerTier === true,
    });
    return { backend: this.#options.backends[index]!, probe, defaulted };
  }

  /** Strict secret mode for a request: on when the request or the engine turns it on. */
  #strictSecrets(requested: boolean | undefined): boolean {
    return requested === true || (this.#options.strictSecrets ?? envFlagOn(process.env[STRICT_SECRETS_ENV]));
  }

  /** Names the usable backends that could enforce `missing`, for the hint of a refused default. */
  #enforcersOf(missing: readonly (keyof Resources)[], except: BackendName): string[] {
    const kind = { memoryMiB: "memory", pids: "pids", cpus: "cpu" } as const satisfies Record<keyof Resources, keyof ProbeResult["enforceable"]>;
    return this.#probes
      .filter((p) => p.usable && p.backend !== except && missing.every((m) => p.enforceable[kind[m]]))
      .map((p) => `"${p.backend}" (${p.tier})`);
  }

  #effectiveResources(requested: Resources | undefined, probe: ProbeResult, defaulted: boolean): Resources {
    if (requested) {
      const missing: (keyof Resources)[] = [];
      if (requested.memoryMiB !== undefined && !probe.enforceable.memory) missing.push("memoryMiB");
      if (requested.pids !== undefined && !probe.enforceable.pids) missing.push("pids");
      if (requested.cpus !== undefined && !probe.enforceable.cpu) missing.push("cpus");
      if (missing.length > 0) {
        const others = defaulted ? this.#enforcersOf(missing, probe.backend) : [];
        const hint =
          others.length > 0
            ? `drop the limit, or name a backend that can enforce it: ${others.join(", ")}`
            : "run `mvmctl doctor` to see which cgroup controllers are available, or drop the limit";
        throw new UnsupportedCapabilityError(
          `Backend "${probe.backend}" cannot enforce ${missing.map((m) => `"${m}"`).join(", ")} on this host`,
          { hint },
        );
      }
      return { ...requested };
    }
    const d = this.#options.defaultResources ?? { memoryMiB: 1024, pids: 1024 };
    const out: Resources = {};
    if (d.memoryMiB !== undefined && probe.enforceable.memory) out.memoryMiB = d.memoryMiB;
    if (d.pids !== undefined && probe.enforceable.pids) out.pids = d.pids;
    if (d.cpus !== undefined && probe.enforceable.cpu) out.cpus = d.cpus;
    return out;
  }

  /**
   * Resolves what a create would run and returns the workload's IR, the backend and the image,
   * without admitting or booting anything.
   */
  async #prepare(
    req: CreateSandboxRequest,
    options: { signal?: AbortSignal | undefined; onProgress?: ((event: ProgressEvent) => void) | undefined },
  ) {
    const requested = req.backend ?? (req.plan ? backendForTier(req.plan.plan.ir.requiredTier) : undefined);
    const { backend, probe, defaulted } = this.#chooseBackend(requested, req);
    const resources = this.#effectiveResources(req.resources, probe, defaulted);
    const imageRef = req.image ?? this.#options.defaultImage ?? DEFAULT_IMAGE;
    const image = await this.#options.images.ensure(imageRef, {
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    options.signal?.throwIfAborted();
    const ttlSeconds = req.ttlSeconds ?? this.#options.defaultTtlSeconds ?? 600;
    const workMiB = req.workMiB ?? this.#options.defaultWorkMiB ?? 1024;
    // The IR records what is enforced: limits and sizes after defaults, the tier of the backend chosen.
    const ir = irFromCreateRequest({ ...req, resources, workMiB, ttlSeconds }, { imageDigest: image.digest, requiredTier: probe.tier });
    return { backend, probe, resources, imageRef, image, ttlSeconds, workMiB, ir };
  }

  /**
   * Plan mode: the signed plan a create with this request would be admitted through, for review.
   * Boots nothing and consumes nothing; the image is resolved (built when missing) for its digest.
   */
  async planSandbox(request: CreateSandboxRequest, options: PlanOptions = {}): Promise<SignedPlan> {
    this.#assertOpen();
    const req = parse(CreateSandboxRequest, request, "sandbox options");
    if (req.plan !== undefined) throw new InvalidArgumentError("Cannot plan a request that already carries a plan");
    const seconds = options.validForSeconds ?? DEFAULT_PLAN_VALIDITY_MS / 1000;
    const { ir } = await this.#prepare(req, { signal: callSignal(options), onProgress: options.onProgress });
    return this.#gate.issue(ir, { validityMs: Math.round(seconds * 1000), labels: { "mvm/mode": "plan" } });
  }

  async createSandbox(
    request: CreateSandboxRequest,
    options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {},
  ): Promise<SandboxInfo> {
    this.#assertOpen();
    const req = await this.#parseCreate(request);
    const signal = callSignal(options);
    // Plain-text secrets are judged before anything is resolved, built or admitted.
    const warnings = checkSecretHygiene(
      { env: req.env ?? {}, exemptEnv: new Set(Object.keys(req.secrets ?? {})) },
      { strict: this.#strictSecrets(req.strictSecrets) },
    ).map((w) => w.message);
    const { backend, probe, resources, imageRef, image, ttlSeconds, workMiB, ir } = await this.#prepare(req, { signal, onProgress: options.onProgress });
    if (req.onTtl === "pause" && probe.pauseUnsupported) {
      throw new UnsupportedCapabilityError(`Backend "${probe.backend}" cannot pause sandboxes on this host: ${probe.pauseUnsupported.reason}`, {
        hint: `${probe.pauseUnsupported.hint}; or create without onTtl "pause"`,
      });
    }
    // Nothing boots before the plan is admitted and its admission is in the audit log.
    const admitted = req.plan ? await this.#gate.admit(req.plan, ir) : await this.#gate.admitLive(ir);
    signal?.throwIfAborted();
    const secrets = await resolveSecrets(req.secrets ?? {}, { store: this.secrets });
    const secretEnv = Object.fromEntries(secrets.map((s) => [s.envName, s.ref.posture === "env" ? s.value : s.placeholder]));
    const mediatedCount = secrets.filter((s) => s.ref.posture === "mediated").length;
    const sandboxEnv = { ...egressEnvironment({ trustBundle: mediatedCount > 0 }), ...(req.env ?? {}), ...secretEnv };
    const envProblem = sandboxEnvProblem(sandboxEnv);
    if (envProblem !== undefined) {
      throw new InvalidArgumentError(`Sandbox field "env" is invalid: ${envProblem} (env, secrets and egress variables together)`, {
        hint: "Pass less environment, or use mediated secrets (their placeholders are short)",
      });
    }
    const id = newSandboxId();
    const now = Date.now();
    const info: SandboxInfo = {
      id,
      state: "starting",
      backend: backend.name,
      tier: probe.tier,
      image: { ref: imageRef, digest: image.digest },
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlSeconds * 1000).toISOString(),
      resources,
      workMiB,
      labels: req.labels ?? {},
      ...(req.onTtl === "pause" ? { onTtl: "pause" as const } : {}),
      secrets: secrets.map((s) => ({ env: s.envName, source: s.ref.source, name: s.ref.name, posture: s.ref.posture, hosts: [...s.hosts] })),
      ...(warnings.length > 0 ? { warnings } : {}),
      receipt: { planId: admitted.planId, auditEntryId: admitted.receipt.id },
    };
    const mediated = secrets.filter((s) => s.ref.posture === "mediated");
    const ca = mediated.length > 0 ? await SandboxCa.create({ sandboxId: id }) : undefined;
    const trustBundlePem = ca ? (await imageCaBundle(image.rootfsDir)) + ca.certPem : undefined;
    const network = await SandboxNetwork.open({
      sandboxId: id,
      policy: req.network ?? DENY_ALL,
      gateway: this.#gateway,
      secrets: mediated.map((s): MediatedSecret => ({ name: s.ref.name, placeholder: s.placeholder, value: s.value, hosts: s.hosts })),
      ...(ca ? { ca } : {}),
      ports: req.ports ?? [],
    });
    info.network = network.summary();
    info.ports = network.publishedPorts();
    const dir = await this.#records.create(id).catch(async (err: unknown) => {
      await network.close();
      throw err;
    });
    await this.#records.write({ version: 1, owner: this.#owner, info });
    options.onProgress?.({ phase: "boot", message: `starting ${backend.name} sandbox ${id}` });
    let sandbox: LiveSandbox | undefined;
    try {
      sandbox = await LiveSandbox.start({
        info,
        backend,
        env: sandboxEnv,
        network,
        redactor: redactorFor(secrets),
        spec: {
          sandboxId: id,
          rootfsDir: image.rootfsDir,
          rootfsDigest: image.digest,
          agentDir: this.#options.agentDir,
          stateDir: dir,
          workMiB: info.workMiB,
          tmpMiB: this.#options.tmpMiB ?? 256,
          resources,
          agentLogPath: join(dir, "agent.log"),
          ...(trustBundlePem !== undefined ? { trustBundlePem } : {}),
        },
        helloTimeoutMs: this.#options.helloTimeoutMs ?? HELLO_TIMEOUT_MS[probe.tier],
        heartbeat: this.#options.heartbeat ?? { intervalMs: 10_000, timeoutMs: HEARTBEAT_TIMEOUT_MS[probe.tier] },
        onRecord: (reap) =>
          this.#records.write({
            version: 1,
            owner: this.#owner,
            info,
            reap: { ...reap, cgroups: [...reap.cgroups], extra: { ...reap.extra } },
          }),
        onEnded: (ended) => this.#onEnded(ended),
        onPauseChange: (changed, change) => this.#recordPauseChange(changed, change),
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      await network.close();
      await this.#records.remove(id);
      throw toMvmError(err);
    }
    this.#live.set(id, sandbox);
    if (admitted.plan.ir.command.kind === "argv") this.#commands.set(id, admitted.plan.ir.command.argv);
    try {
      const created = await this.#gate.record({ type: "sandbox.created", sandboxId: id, planId: admitted.planId, imageDigest: image.digest, backend: backend.name });
      sandbox.info = { ...sandbox.info, receipt: { planId: admitted.planId, auditEntryId: created.id } };
    } catch (err) {
      await sandbox.stop("killed").catch(() => {});
      throw toMvmError(err);
    }
    return sandbox.info;
  }

  /** Parses a create request; a plan that fails its schema is recorded as denied. */
  async #parseCreate(request: CreateSandboxRequest): Promise<CreateSandboxRequest> {
    const plan = (request as { plan?: unknown } | null)?.plan;
    if (plan !== undefined && !SignedPlan.safeParse(plan).success) {
      let planDigest = sha256Hex("");
      try {
        planDigest = sha256Hex(canonicalJson(plan));
      } catch {
        // not JSON: the digest of nothing stands for it
      }
      await this.#gate.record({ type: "plan.denied", planDigest, reason: "malformed" });
    }
    return parse(CreateSandboxRequest, request, "sandbox options");
  }

  /** The receipt naming `entry` for a sandbox admitted under `info`'s plan. */
  #receipt(info: SandboxInfo, entry: AuditReceipt): AuditReceiptRef | undefined {
    return info.receipt ? { planId: info.receipt.planId, auditEntryId: entry.id } : undefined;
  }

  #onEnded(sandbox: LiveSandbox): void {
    this.#live.delete(sandbox.info.id);
    this.#commands.delete(sandbox.info.id);
    const recorded = this.#recordEnd(sandbox);
    this.#endRecorded.set(sandbox.info.id, recorded);
    void recorded.finally(() => this.#endRecorded.delete(sandbox.info.id));
    this.#stoppedNetworks.set(sandbox.info.id, sandbox.network);
    if (this.#stoppedNetworks.size > STOPPED_NETWORKS_KEPT) this.#stoppedNetworks.delete(this.#stoppedNetworks.keys().next().value!);
    this.#stopped.set(sandbox.info.id, sandbox.info);
    if (this.#stopped.size > STOPPED_KEPT) this.#stopped.delete(this.#stopped.keys().next().value!);
    void this.#records.remove(sandbox.info.id);
  }

  /**
   * Records how a sandbox ended: a summary of its network decisions, then `sandbox.killed` or
   * `sandbox.expired`. The stopped sandbox's receipt then names the last of them.
   */
  async #recordEnd(sandbox: LiveSandbox): Promise<void> {
    const info = sandbox.info;
    if (!info.receipt) return; // never admitted: a create that failed before its plan
    const id = info.id;
    try {
      await this.#gate.record(networkSummary(id, sandbox.network.takeTally()));
      const ttlSeconds = Math.round((Date.parse(info.expiresAt) - Date.parse(info.createdAt)) / 1000);
      const by = { killed: "caller", crashed: "crash", "engine-exit": "engine" } as const;
      const end: AuditEvent =
        info.endReason === "expired"
          ? { type: "sandbox.expired", sandboxId: id, ttlSeconds }
          : { type: "sandbox.killed", sandboxId: id, by: by[info.endReason ?? "killed"] };
      const entry = await this.#gate.record(end);
      const stopped = this.#stopped.get(id);
      const receipt = this.#receipt(info, entry);
      if (stopped && receipt) this.#stopped.set(id, { ...stopped, receipt });
    } catch {
      // The log refuses entries after a failed write; the failure surfaces on the next admission.
    }
  }

  /** Appends a `sandbox.paused` / `sandbox.resumed` entry; the sandbox's receipt then names it. */
  async #recordPauseChange(sandbox: LiveSandbox, change: PauseChange): Promise<void> {
    if (!sandbox.info.receipt) return;
    const entry = await this.#gate.record({ ...change, sandboxId: sandbox.info.id });
    const receipt = this.#receipt(sandbox.info, entry);
    if (receipt) sandbox.info = { ...sandbox.info, receipt };
  }

  async pauseSandbox(id: string, request: PauseApiRequest = {}, options: CallOptions = {}): Promise<SandboxInfo> {
    const req = parse(PauseApiRequest, request, "pause request");
    callSignal(options)?.throwIfAborted();
    const sandbox = this.#get(id);
    await sandbox.pause("caller", req.ttl ?? "running");
    return sandbox.info;
  }

  async resumeSandbox(id: string, options: CallOptions = {}): Promise<SandboxInfo> {
    callSignal(options)?.throwIfAborted();
    const sandbox = this.#get(id);
    await sandbox.resume();
    return sandbox.info;
  }

  // Snapshots: being built (issue 12); each call is refused until it is.
  async snapshotSandbox(_id: string, _request: SnapshotApiRequest): Promise<SnapshotInfo> {
    throw new UnsupportedCapabilityError("Snapshots are not available yet");
  }
  async forkSandbox(_id: string, _request?: ForkApiRequest): Promise<SandboxInfo[]> {
    throw new UnsupportedCapabilityError("Fork is not available yet");
  }
  async listSnapshots(): Promise<SnapshotInfo[]> {
    return [];
  }
  async getSnapshot(ref: string): Promise<SnapshotInfo> {
    throw new NotFoundError(`Snapshot "${ref}" not found`);
  }
  async deleteSnapshot(ref: string): Promise<void> {
    throw new NotFoundError(`Snapshot "${ref}" not found`);
  }

  #get(id: string): LiveSandbox {
    const s = this.#live.get(id);
    if (s) return s;
    if (this.#stopped.has(id)) throw new NotFoundError(`Sandbox "${id}" is not running (it ${this.#stopped.get(id)!.endReason ?? "stopped"})`);
    throw new NotFoundError(`Sandbox "${id}" not found`);
  }

  async getSandbox(id: string): Promise<SandboxInfo> {
    const live = this.#live.get(id);
    if (live) return live.info;
    const stopped = this.#stopped.get(id);
    if (stopped) return stopped;
    throw new NotFoundError(`Sandbox "${id}" not found`);
  }

  async listSandboxes(): Promise<SandboxInfo[]> {
    return [...this.#live.values()].map((s) => s.info).filter((i) => i.state !== "stopped");
  }

  async killSandbox(id: string): Promise<SandboxInfo> {
    const s = this.#live.get(id);
    if (!s) {
      await this.#endRecorded.get(id);
      return this.getSandbox(id);
    }
    await s.stop("killed");
    await this.#endRecorded.get(id);
    return this.#stopped.get(id) ?? s.info;
  }

  async exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options: CallOptions = {}): Promise<ExecStarted> {
    const req = parse(ExecApiRequest, request, "exec request");
    const sandbox = this.#get(id);
    const command = this.#commands.get(id);
    if (command !== undefined && canonicalJson(command) !== canonicalJson(req.argv)) {
      throw new PolicyDeniedError(`Sandbox "${id}" may only run the command its plan declares`, {
        hint: "Its plan was made for one command; plan a session (no command) to run others",
      });
    }
    const exempt = new Set((sandbox.info.secrets ?? []).map((s) => s.env));
    const warnings = checkSecretHygiene(
      { argv: req.argv, env: req.env ?? {}, exemptEnv: exempt },
      { strict: this.#strictSecrets(req.strictSecrets) },
    ).map((w) => w.message);
    // Write-ahead: the exec is in the audit log before the process starts.
    const execId = `exe_${randomBytes(10).toString("hex")}`;
    await this.#gate.record({ type: "exec.started", sandboxId: id, execId, argvDigest: argvDigest(req.argv), argc: req.argv.length });
    const t0 = Date.now();
    let started: ExecStarted;
    try {
      started = await sandbox.exec(req, handlers, options);
    } catch (err) {
      const failed = this.#gate.record({ type: "exec.finished", sandboxId: id, execId, exitCode: null, signal: null, timedOut: false, durationMs: Date.now() - t0 });
      await failed.catch(() => {});
      throw err;
    }
    const exit = started.exit.then(
      async (e) => {
        const entry = await this.#gate.record({
          type: "exec.finished",
          sandboxId: id,
          execId,
          exitCode: e.exitCode !== null && e.exitCode >= 0 && e.exitCode <= 255 ? e.exitCode : null,
          signal: e.signal !== null && /^SIG[A-Z0-9]{1,10}$/.test(e.signal) ? e.signal : null,
          timedOut: e.timedOut,
          durationMs: Math.max(0, Math.round(e.durationMs)),
        });
        const planId = sandbox.info.receipt?.planId;
        const receipt = { ...e.receipt, ...(planId ? { planId } : {}), auditEntryId: entry.id };
        return { ...e, receipt, ...(warnings.length > 0 ? { warnings } : {}) };
      },
      async (err: unknown) => {
        await this.#gate
          .record({ type: "exec.finished", sandboxId: id, execId, exitCode: null, signal: null, timedOut: false, durationMs: Date.now() - t0 })
          .catch(() => {});
        throw err;
      },
    );
    exit.catch(() => {});
    return { ...started, exit };
  }

  async setNetworkPolicy(id: string, policy: NetworkPolicyJson): Promise<SandboxInfo> {
    const parsed = parse(NetworkPolicySchema, policy, "network policy");
    const sandbox = this.#get(id);
    const previousDigest = sha256Hex(canonicalJson(sandbox.network.policy));
    sandbox.network.setPolicy(parsed);
    const entry = await this.#gate.record({
      type: "policy.changed",
      policyId: `network:${id}`,
      previousDigest,
      policyDigest: sha256Hex(canonicalJson(parsed)),
    });
    const receipt = this.#receipt(sandbox.info, entry);
    sandbox.info = { ...sandbox.info, network: sandbox.network.summary(), ...(receipt ? { receipt } : {}) };
    return sandbox.info;
  }

  async networkEvents(id: string, options: CallOptions & { after?: number; limit?: number } = {}): Promise<NetworkEventsPage> {
    const network = this.#live.get(id)?.network ?? this.#stoppedNetworks.get(id);
    if (!network) throw new NotFoundError(`Sandbox "${id}" not found`);
    return network.events(options.after ?? 0, options.limit);
  }

  listSecrets(): Promise<SecretMeta[]> {
    return this.secrets.list();
  }

  setSecret(name: string, value: string, options: CallOptions & { hosts?: readonly string[] } = {}): Promise<SecretMeta> {
    return this.secrets.set(name, value, options.hosts ? { hosts: options.hosts } : {});
  }

  async removeSecret(name: string): Promise<void> {
    if (!(await this.secrets.remove(name))) {
      throw new NotFoundError(`Secret "${name}" not found`, { hint: "`mvmctl secret ls` lists the stored secrets" });
    }
  }

  async signalProcess(id: string, proc: number, signal: KillSignal, options: CallOptions = {}): Promise<void> {
    await this.#get(id).call("signal", { proc, signal }, options);
  }

  async writeStdin(id: string, proc: number, data: Uint8Array | null): Promise<void> {
    await this.#get(id).writeStdin(proc, data);
  }

  async listProcesses(id: string, options: CallOptions = {}): Promise<ProcessInfo[]> {
    return (await this.#get(id).call("listProcesses", {}, options)).processes;
  }

  async readFile(id: string, path: string): Promise<FileReadStream> {
    return this.#get(id).readFile(checkPath(path));
  }

  async writeFile(
    id: string,
    path: string,
    data: Uint8Array | AsyncIterable<Uint8Array>,
    options: WriteFileOptions = {},
  ): Promise<{ bytes: number; receipt?: AuditReceiptRef }> {
    const mode = options.mode ?? 0o644;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new InvalidArgumentError(`Invalid file mode: ${JSON.stringify(mode)}`);
    const sandbox = this.#get(id);
    const target = checkPath(path);
    const hash = createHash("sha256");
    const hashed = data instanceof Uint8Array ? (hash.update(data), data) : hashing(data, hash);
    const { bytes } = await sandbox.writeFile(target, hashed, { ...options, mode, createParents: options.createParents ?? true });
    const entry = await this.#gate.record({
      type: "file.written",
      sandboxId: id,
      pathDigest: sha256Hex(target),
      sizeBytes: bytes,
      contentSha256: hash.digest("hex"),
    });
    const receipt = this.#receipt(sandbox.info, entry);
    return { bytes, ...(receipt ? { receipt } : {}) };
  }

  /** Pages through the directory (the agent answers in pages that fit one control message). */
  async listDir(id: string, path: string, options: CallOptions = {}): Promise<DirListingResult> {
    const sandbox = this.#get(id);
    const dir = checkPath(path);
    const entries: FileInfo[] = [];
    for (;;) {
      const last = entries.at(-1);
      const page = await sandbox.call("listDir", last ? { path: dir, after: last.name } : { path: dir }, options);
      if (last && page.entries.some((e) => Buffer.compare(Buffer.from(e.name), Buffer.from(last.name)) <= 0)) {
        throw new TransportError(`Agent of "${id}" answered listDir out of order`);
      }
      entries.push(...page.entries);
      if (!page.truncated || page.entries.length === 0) return { entries, truncated: page.truncated };
      if (entries.length >= MAX_DIR_ENTRIES) return { entries: entries.slice(0, MAX_DIR_ENTRIES), truncated: true };
    }
  }
  async stat(id: string, path: string, options: CallOptions = {}): Promise<FileInfo> {
    return this.#get(id).call("stat", { path: checkPath(path) }, options);
  }
  async mkdir(id: string, path: string, recursive: boolean, options: CallOptions = {}): Promise<void> {
    await this.#get(id).call("mkdir", { path: checkPath(path), recursive }, options);
  }
  async remove(id: string, path: string, recursive: boolean, options: CallOptions = {}): Promise<void> {
    await this.#get(id).call("remove", { path: checkPath(path), recursive }, options);
  }
  async rename(id: string, from: string, to: string, options: CallOptions = {}): Promise<void> {
    await this.#get(id).call("rename", { from: checkPath(from), to: checkPath(to) }, options);
  }

  async listImages(): Promise<ImageInfo[]> {
    const list = await this.#options.images.list();
    return list.map(toImageInfo);
  }

  async buildImage(ref: string, options: CallOptions & { force?: boolean; onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
    const signal = callSignal(options);
    const rec = await this.#options.images.buildDebian(ref, {
      ...(options.force !== undefined ? { force: options.force } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(signal ? { signal } : {}),
    });
    return toImageInfo(rec);
  }

  async importImage(
    path: string,
    name: string,
    options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {},
  ): Promise<ImageInfo> {
    const req = parse(ImportImageApiRequest, { path, name }, "image import");
    const signal = callSignal(options);
    const opts = { ...(options.onProgress ? { onProgress: options.onProgress } : {}), ...(signal ? { signal } : {}) };
    const st = await stat(req.path).catch((err: unknown) => {
      throw new NotFoundError(`Cannot import "${req.path}": it does not exist`, { cause: err });
    });
    const rec = st.isDirectory() ? await this.#options.images.importDir(req.path, req.name, opts) : await this.#options.images.importTar(req.path, req.name, opts);
    return toImageInfo(rec);
  }

  async removeImage(ref: string): Promise<void> {
    await this.#options.images.remove(ref);
  }

  /** Kills every sandbox of this engine and releases their resources. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#summaryTimer);
      const errors: MvmError[] = [];
      await Promise.all(
        [...this.#live.values()].map((s) => s.stop("engine-exit").catch((err: unknown) => errors.push(toMvmError(err)))),
      );
      await this.#gateway.close().catch(() => {});
      await Promise.allSettled([...this.#endRecorded.values()]);
      await this.#gate.close();
      if (errors.length > 0) throw errors[0];
    })();
    return this.#closing;
  }

  #assertOpen(): void {
    if (this.#closing) throw new TransportError("Engine is closed");
  }
}

/** The audit event for one window of a sandbox's network decisions. */
function networkSummary(sandboxId: string, tally: NetworkTally): AuditEvent {
  const summary: AuditEvent = {
    type: "network.summary",
    sandboxId,
    fromTs: tally.since,
    toTs: tally.until,
    allowedConnections: tally.allowed,
    deniedConnections: tally.denied,
    deniedHosts: tally.deniedHosts,
  };
  return AuditEventSchema.safeParse(summary).success ? summary : { ...summary, deniedHosts: [] };
}

/** Passes chunks through while feeding them to `hash`. */
async function* hashing(source: AsyncIterable<Uint8Array>, hash: ReturnType<typeof createHash>): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    hash.update(chunk);
    yield chunk;
  }
}

function envList(value: string | undefined): string[] | undefined {
  const list = value?.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return list && list.length > 0 ? list : undefined;
}

function redactorFor(secrets: readonly ResolvedSecret[]): Redactor {
  return new Redactor(secrets.map((s) => ({ secret: s.value, replacement: s.placeholder })));
}

/**
 * The image's own CA bundle (may be empty), to which the sandbox's CA is appended. No component
 * of the path may be a symbolic link: the image's links must never lead the engine to host files.
 */
async function imageCaBundle(rootfsDir: string): Promise<string> {
  let path = rootfsDir;
  for (const part of SYSTEM_TRUST_BUNDLE_PATH.split("/").filter((p) => p !== "")) {
    path = join(path, part);
    const st = await lstat(path).catch(() => undefined);
    if (st === undefined || st.isSymbolicLink()) return "";
  }
  let file;
  try {
    file = await openFile(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return "";
  }
  try {
    const st = await file.stat();
    if (!st.isFile() || st.size > MAX_IMAGE_CA_BUNDLE_BYTES) return "";
    const text = (await file.readFile()).toString("utf8");
    return text.endsWith("\n") || text === "" ? text : `${text}\n`;
  } finally {
    await file.close();
  }
}

/** A directory without a record may belong to a create in progress (record not yet written). */
async function recentlyCreated(dir: string): Promise<boolean> {
  try {
    return Date.now() - (await stat(dir)).mtimeMs < 60_000;
  } catch {
    return false;
  }
}

function toImageInfo(rec: { digest: string; refs: string[]; sizeBytes: number; createdAt: string }): ImageInfo {
  return { digest: rec.digest as ImageInfo["digest"], refs: rec.refs, sizeBytes: rec.sizeBytes, createdAt: rec.createdAt };
}

function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
    throw new InvalidArgumentError(`Invalid ${what}: ${where}${issue?.message ?? "invalid"}`);
  }
  return r.data;
}

function checkPath(path: string): string {
  if (typeof path !== "string" || !path.startsWith("/") || path.includes("\0") || path.length > 4096) {
    throw new InvalidArgumentError(`Invalid sandbox path: ${JSON.stringify(String(path).slice(0, 200))}`);
  }
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw new InvalidArgumentError(`Invalid sandbox path: "${path.slice(0, 200)}" contains ".."`);
  return "/" + parts.join("/");
}
