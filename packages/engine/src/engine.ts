/**
 * The engine: one object implementing EngineApi, so the daemon serves it and the SDK embeds it the
 * same way. It opens the state directory, reaps what crashed engines left, probes the backends and
 * owns the state every capability shares (capabilities/core.ts); each operation is one line here
 * that calls its capability's module: sandboxes (lifecycle, TTL, pause), processes, files,
 * network and secrets, images, snapshots.
 */
import { chmod, mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  InvalidArgumentError,
  toMvmError,
  type AuditReceiptRef,
  type BackendName,
  type CallOptions,
  type CreateSandboxRequest,
  type DirListingResult,
  type EngineApi,
  type ExecApiRequest,
  type ExecHandlers,
  type ExecStarted,
  type FileInfo,
  type FileReadStream,
  type ForkApiRequest,
  type HealthInfo,
  type ImageInfo,
  type ImageInspect,
  type KillSignal,
  type MvmError,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type PauseApiRequest,
  type ProcessInfo,
  type PtySize,
  type ProgressEvent,
  type Resources,
  type SandboxInfo,
  type SecretMeta,
  type SignedPlan,
  type SnapshotApiRequest,
  type SnapshotInfo,
  type WarmPoolInfo,
  type WarmPoolRequest,
  type BundlePullInfo,
  type BundlePushInfo,
  type PullBundleRequest,
  type PushBundleRequest,
  type Tier,
  type WriteFileOptions,
  type TreeOptions,
  type TreeWriteResult,
  type PortSpec,
  type LogSource,
  type SandboxLogs,
} from "@mvm/protocol";
import type { Backend } from "./backends/types.js";
import { chooseDefault, parseTier, resolveConfiguredDefault, type ConfiguredDefault, type TierMinimum } from "./backend-choice.js";
import { SandboxRecords, defaultStateDir, isAlive, processStartTime } from "./state.js";
import type { ImageStore } from "./images/store.js";
import type { TestAllowance } from "./egress/address-floor.js";
import { EgressGateway } from "./egress/gateway.js";
import { EgressResolver } from "./egress/resolver.js";
import { SecretStore } from "./secrets/store.js";
import { AdmissionGate } from "./admission/gate.js";
import { probesFor, type EngineCore } from "./capabilities/core.js";
import * as files from "./capabilities/files.js";
import * as filesTree from "./capabilities/files-tree.js";
import * as logs from "./capabilities/logs.js";
import * as images from "./capabilities/images.js";
import * as network from "./capabilities/network.js";
import * as pools from "./capabilities/pools.js";
import * as processes from "./capabilities/processes.js";
import * as sandboxes from "./capabilities/sandboxes.js";
import * as snapshots from "./capabilities/snapshots.js";
import * as bundles from "./capabilities/bundles.js";

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

export class Engine implements EngineApi {
  readonly stateDir: string;
  readonly secrets: SecretStore;
  readonly #core: EngineCore;
  #summaryTimer: NodeJS.Timeout | undefined;
  #summarizing = false;

  private constructor(options: EngineOptions) {
    const minimum = options.minimumTier;
    this.stateDir = options.stateDir ?? defaultStateDir();
    this.secrets = new SecretStore(join(this.stateDir, "secrets"));
    const dnsServers = options.egress?.dnsServers ?? envList(process.env.MVM_EGRESS_DNS);
    this.#core = {
      options,
      stateDir: this.stateDir,
      configuredDefault: resolveConfiguredDefault(options.defaultBackend, options.backends.map((b) => b.name)) as ConfiguredDefault | undefined,
      minimumTier:
        minimum === undefined
          ? undefined
          : typeof minimum === "string"
            ? { tier: parseTier(minimum, "minimumTier"), setting: "minimumTier" }
            : { tier: parseTier(minimum.tier, minimum.setting), setting: minimum.setting },
      records: new SandboxRecords(this.stateDir),
      live: new Map(),
      stopped: new Map(),
      stoppedNetworks: new Map(),
      gateway: new EgressGateway({
        resolver: new EgressResolver(dnsServers ? { servers: dnsServers } : {}),
        ...(options.egress?.upstreamCa ? { upstreamCa: options.egress.upstreamCa } : {}),
        ...(options.egress?.testAllowance ? { testAllowance: options.egress.testAllowance } : {}),
      }),
      secrets: this.secrets,
      probes: new Map(),
      pools: new Map(),
      warm: new Map(),
      gate: undefined as unknown as AdmissionGate,
      commands: new Map(),
      createRequests: new Map(),
      endRecorded: new Map(),
      owner: { pid: process.pid, startTime: "0" },
      closing: undefined,
      snapshots: undefined,
    };
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
    const core = engine.#core;
    await mkdir(engine.stateDir, { recursive: true, mode: 0o711 });
    await chmod(engine.stateDir, 0o711);
    await core.records.init();
    core.gate = await AdmissionGate.open(engine.stateDir, options.policyFile !== undefined ? { policyFile: options.policyFile } : {});
    const startTime = await processStartTime(process.pid);
    core.owner = { pid: process.pid, startTime: startTime ?? "0" };
    await engine.reapOrphans();
    for (const b of options.backends) await b.sweep?.();
    await snapshots.openSnapshots(core);
    engine.#summaryTimer = setInterval(() => void engine.#summarizeNetworks(), summaryMs).unref();
    return engine;
  }

  /** Appends a `network.summary` for each running sandbox whose network decided anything since its last one. */
  async #summarizeNetworks(): Promise<void> {
    const core = this.#core;
    if (this.#summarizing || core.closing) return;
    this.#summarizing = true;
    try {
      for (const sandbox of core.live.values()) {
        if (!sandbox.info.receipt || !sandbox.network.tallyPending) continue;
        await core.gate.record(network.networkSummary(sandbox.info.id, sandbox.network.takeTally())).catch(() => {
          // The log refuses entries after a failed write; the failure surfaces on the next admission.
        });
      }
    } finally {
      this.#summarizing = false;
    }
  }

  /** Releases everything left by engines that are no longer running. Returns the ids reaped. */
  async reapOrphans(): Promise<string[]> {
    const core = this.#core;
    const reaped: string[] = [];
    for (const { id, record } of await core.records.scan()) {
      if (core.live.has(id) || core.warm.has(id)) continue;
      if (record && (await isAlive(record.owner))) continue;
      if (!record && (await recentlyCreated(core.records.sandboxDir(id)))) continue;
      if (record?.reap) {
        const backend = core.options.backends.find((b) => b.name === record.reap!.backend);
        await backend?.reap(record.reap);
      }
      await core.records.remove(id);
      // The engine that ran it died without recording its end: this engine records it.
      if (record?.info.receipt) await core.gate.record({ type: "sandbox.killed", sandboxId: id, by: "engine" }).catch(() => {});
      reaped.push(id);
    }
    return reaped;
  }

  async health(): Promise<HealthInfo> {
    const core = this.#core;
    // Health always probes again: it is how a caller sees a host that changed.
    core.probes.clear();
    const probes = await probesFor(core, "all");
    const def = chooseDefault(probes, core.configuredDefault);
    return {
      version: ENGINE_VERSION,
      defaultBackend: probes[def.index]?.backend ?? null,
      defaultReason: def.reason,
      backends: probes.map((p) => ({
        backend: p.backend,
        tier: p.tier,
        usable: p.usable,
        checks: p.checks.map((c) => ({ name: c.name, ok: c.ok, detail: c.detail, ...(c.hint ? { hint: c.hint } : {}) })),
        enforceable: { ...p.enforceable },
      })),
    };
  }

  // Sandboxes
  planSandbox(request: CreateSandboxRequest, options: PlanOptions = {}): Promise<SignedPlan> {
    return request?.fromSnapshot !== undefined ? snapshots.planFromSnapshot(this.#core, request, options) : sandboxes.planSandbox(this.#core, request, options);
  }
  createSandbox(request: CreateSandboxRequest, options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {}): Promise<SandboxInfo> {
    return request?.fromSnapshot !== undefined ? snapshots.createFromSnapshot(this.#core, request, options) : sandboxes.createSandbox(this.#core, request, options);
  }
  getSandbox(id: string): Promise<SandboxInfo> {
    return sandboxes.getSandbox(this.#core, id);
  }
  listSandboxes(): Promise<SandboxInfo[]> {
    return sandboxes.listSandboxes(this.#core);
  }
  killSandbox(id: string): Promise<SandboxInfo> {
    return sandboxes.killSandbox(this.#core, id);
  }
  pauseSandbox(id: string, request: PauseApiRequest = {}, options: CallOptions = {}): Promise<SandboxInfo> {
    return sandboxes.pauseSandbox(this.#core, id, request, options);
  }
  resumeSandbox(id: string, options: CallOptions = {}): Promise<SandboxInfo> {
    return sandboxes.resumeSandbox(this.#core, id, options);
  }
  setSandboxTimeout(id: string, ttlSeconds: number, options: CallOptions = {}): Promise<SandboxInfo> {
    return sandboxes.setSandboxTimeout(this.#core, id, ttlSeconds, options);
  }

  // Snapshots
  snapshotSandbox(id: string, request: SnapshotApiRequest, options: CallOptions = {}): Promise<SnapshotInfo> {
    return snapshots.snapshotSandbox(this.#core, id, request, options);
  }
  forkSandbox(id: string, request: ForkApiRequest = {}, options: CallOptions = {}): Promise<SandboxInfo[]> {
    return snapshots.forkSandbox(this.#core, id, request, options);
  }
  listSnapshots(): Promise<SnapshotInfo[]> {
    return snapshots.listSnapshots(this.#core);
  }
  getSnapshot(ref: string): Promise<SnapshotInfo> {
    return snapshots.getSnapshot(this.#core, ref);
  }
  deleteSnapshot(ref: string): Promise<void> {
    return snapshots.deleteSnapshot(this.#core, ref);
  }

  // Bundles
  pushBundle(request: PushBundleRequest, options: CallOptions = {}): Promise<BundlePushInfo> {
    return bundles.pushBundle(this.#core, request, options);
  }
  pullBundle(request: PullBundleRequest, options: CallOptions = {}): Promise<BundlePullInfo> {
    return bundles.pullBundle(this.#core, request, options);
  }

  // Processes
  // Warm pools
  setWarmPool(request: WarmPoolRequest, options: CallOptions = {}): Promise<WarmPoolInfo> {
    return sandboxes.setWarmPool(this.#core, request, options);
  }
  async listWarmPools(): Promise<WarmPoolInfo[]> {
    return pools.listWarmPools(this.#core);
  }

  exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options: CallOptions = {}): Promise<ExecStarted> {
    return processes.exec(this.#core, id, request, handlers, options);
  }
  signalProcess(id: string, proc: number, signal: KillSignal, options: CallOptions = {}): Promise<void> {
    return processes.signalProcess(this.#core, id, proc, signal, options);
  }
  writeStdin(id: string, proc: number, data: Uint8Array | null): Promise<void> {
    return processes.writeStdin(this.#core, id, proc, data);
  }
  listProcesses(id: string, options: CallOptions = {}): Promise<ProcessInfo[]> {
    return processes.listProcesses(this.#core, id, options);
  }
  resizePty(id: string, proc: number, size: PtySize, options: CallOptions = {}): Promise<void> {
    return processes.resizePty(this.#core, id, proc, size, options);
  }
  connectProcess(id: string, proc: number, handlers: ExecHandlers, options: CallOptions = {}): Promise<ExecStarted> {
    return processes.connectProcess(this.#core, id, proc, handlers, options);
  }

  // Network and secrets
  setNetworkPolicy(id: string, policy: NetworkPolicyJson): Promise<SandboxInfo> {
    return network.setNetworkPolicy(this.#core, id, policy);
  }
  sandboxLogs(id: string, options: CallOptions & { source?: LogSource; tail?: number; after?: string } = {}): Promise<SandboxLogs> {
    return logs.sandboxLogs(this.#core, id, options);
  }
  publishPort(id: string, port: PortSpec): Promise<SandboxInfo> {
    return network.publishPort(this.#core, id, port);
  }
  networkEvents(id: string, options: CallOptions & { after?: number; limit?: number } = {}): Promise<NetworkEventsPage> {
    return network.networkEvents(this.#core, id, options);
  }
  listSecrets(): Promise<SecretMeta[]> {
    return network.listSecrets(this.#core);
  }
  setSecret(name: string, value: string, options: CallOptions & { hosts?: readonly string[] } = {}): Promise<SecretMeta> {
    return network.setSecret(this.#core, name, value, options);
  }
  removeSecret(name: string): Promise<void> {
    return network.removeSecret(this.#core, name);
  }

  // Files
  readFile(id: string, path: string): Promise<FileReadStream> {
    return files.readFile(this.#core, id, path);
  }
  writeFile(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: WriteFileOptions = {}): Promise<{ bytes: number; receipt?: AuditReceiptRef }> {
    return files.writeFile(this.#core, id, path, data, options);
  }
  listDir(id: string, path: string, options: CallOptions = {}): Promise<DirListingResult> {
    return files.listDir(this.#core, id, path, options);
  }
  stat(id: string, path: string, options: CallOptions = {}): Promise<FileInfo> {
    return files.stat(this.#core, id, path, options);
  }
  mkdir(id: string, path: string, recursive: boolean, options: CallOptions = {}): Promise<void> {
    return files.mkdir(this.#core, id, path, recursive, options);
  }
  remove(id: string, path: string, recursive: boolean, options: CallOptions = {}): Promise<void> {
    return files.remove(this.#core, id, path, recursive, options);
  }
  rename(id: string, from: string, to: string, options: CallOptions = {}): Promise<void> {
    return files.rename(this.#core, id, from, to, options);
  }
  writeTree(id: string, path: string, tar: AsyncIterable<Uint8Array>, options: TreeOptions = {}): Promise<TreeWriteResult> {
    return filesTree.writeTree(this.#core, id, path, tar, options);
  }
  readTree(id: string, path: string, options: TreeOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    return filesTree.readTree(this.#core, id, path, options);
  }

  // Images
  listImages(): Promise<ImageInfo[]> {
    return images.listImages(this.#core);
  }
  buildImage(ref: string, options: CallOptions & { force?: boolean; onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
    return images.buildImage(this.#core, ref, options);
  }
  pullImage(reference: string, options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
    return images.pullImage(this.#core, reference, options);
  }
  importImage(path: string, name: string, options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
    return images.importImage(this.#core, path, name, options);
  }
  removeImage(ref: string): Promise<void> {
    return images.removeImage(this.#core, ref);
  }
  inspectImage(ref: string): Promise<ImageInspect> {
    return images.inspectImage(this.#core, ref);
  }

  /** Kills every sandbox of this engine and releases their resources. */
  close(): Promise<void> {
    const core = this.#core;
    core.closing ??= (async () => {
      clearInterval(this.#summaryTimer);
      await pools.closePools(core);
      const errors: MvmError[] = [];
      await Promise.all([...core.live.values(), ...core.warm.values()].map((s) => s.stop("engine-exit").catch((err: unknown) => errors.push(toMvmError(err)))));
      await core.gateway.close().catch(() => {});
      await Promise.allSettled([...core.endRecorded.values()]);
      await core.gate.close();
      if (errors.length > 0) throw errors[0];
    })();
    return core.closing;
  }
}

function envList(value: string | undefined): string[] | undefined {
  const list = value?.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return list && list.length > 0 ? list : undefined;
}

/** A directory without a record may belong to a create in progress (record not yet written). */
async function recentlyCreated(dir: string): Promise<boolean> {
  try {
    return Date.now() - (await stat(dir)).mtimeMs < 60_000;
  } catch {
    return false;
  }
}
