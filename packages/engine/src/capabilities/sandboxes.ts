/**
 * Sandbox lifecycle: plan, create (admitted through a plan and audited before anything boots),
 * get, list, kill, pause and resume, and recording how each sandbox ended.
 */
import { constants } from "node:fs";
import { lstat, open as openFile } from "node:fs/promises";
import { join } from "node:path";
import {
  CreateSandboxRequest,
  FN_LIMIT_ENV,
  FN_WRAPPER_COMMAND,
  InvalidArgumentError,
  NotFoundError,
  PauseApiRequest,
  PolicyDeniedError,
  SetTimeoutApiRequest,
  SandboxCrashedError,
  SYSTEM_TRUST_BUNDLE_PATH,
  SignedPlan,
  UnsupportedCapabilityError,
  backendForTier,
  canonicalJson,
  egressEnvironment,
  sandboxEnvProblem,
  toMvmError,
  type BackendName,
  type CallOptions,
  type ProgressEvent,
  type Resources,
  type SandboxInfo,
  type WarmPoolInfo,
  type WarmPoolRequest,
} from "@mvm/protocol";
import { callSignal } from "../_internal/signals.js";
import { DEFAULT_PLAN_VALIDITY_MS, type AdmittedRecord } from "../admission/gate.js";
import { irFromCreateRequest } from "../admission/ir.js";
import { verifyProvenance } from "../images/provenance.js";
import { sha256Hex, type AuditEvent } from "../audit/entry.js";
import type { Backend, ProbeResult, RestoreSpec } from "../backends/types.js";
import { checkTier, chooseBackend, strictestMinimum } from "../backend-choice.js";
import type { MediatedSecret } from "../egress/gateway.js";
import { SandboxCa } from "../egress/sandbox-ca.js";
import { SandboxNetwork } from "../egress/sandbox-network.js";
import { newSandboxId } from "../ids.js";
import { LiveSandbox, type PauseChange } from "../live-sandbox.js";
import { Redactor } from "../secrets/redact.js";
import { resolveSecrets, type ResolvedSecret } from "../secrets/resolve.js";
import { checkSecretHygiene } from "../secrets/warnings.js";
import { DEFAULT_IMAGE, type PlanOptions } from "../engine.js";
import { DENY_ALL, STOPPED_KEPT, STOPPED_NETWORKS_KEPT, assertOpen, liveSandbox, parse, probesFor, receiptFor, strictSecrets, type EngineCore } from "./core.js";
import { networkSummary } from "./network.js";
import * as pools from "./pools.js";
import { applyImageDefaults, checkImagePolicy, imageFacts, imagePolicy } from "./image-defaults.js";
import { execIn } from "./processes.js";
import { AGENT_MOUNT_POINT } from "../runtime/agent-runtime.js";
import { LOADER_NAME } from "../runtime/shared-libs.js";
import { memberEnded, poolKey, takeWarm, WARM_MEMBER_TTL_SECONDS, type WarmPool } from "./pools.js";

/** The snapshot a create starts from: its digest (named by the IR) and, to create, its verified templates. */
export interface FromSnapshot {
  readonly digest: string;
}

/** Largest image CA bundle copied into a sandbox's trust bundle, bytes. */
const MAX_IMAGE_CA_BUNDLE_BYTES = 4 * 1024 * 1024;

/** Default heartbeat deadline by tier, ms. */
const HEARTBEAT_TIMEOUT_MS: Record<ProbeResult["tier"], number> = { container: 30_000, "vm-hardware": 30_000, "vm-emulated": 60_000 };

/** Default time from launch to hello by tier, ms: an emulated guest boots its kernel slowly. */
const HELLO_TIMEOUT_MS: Record<ProbeResult["tier"], number> = { container: 20_000, "vm-hardware": 60_000, "vm-emulated": 180_000 };

/**
 * The requested backend, or the default; never a substitute for a requested one. Its tier must
 * meet the stronger of the request's and the engine's minimum, and a container tier the engine
 * chose must be acknowledged by the request.
 */
export async function chooseSandboxBackend(core: EngineCore, 
  requested: BackendName | undefined,
  req: Pick<CreateSandboxRequest, "minimumTier" | "acknowledgeContainerTier">,
): Promise<{ backend: Backend; probe: ProbeResult; defaulted: boolean; probes: ProbeResult[] }> {
  const minimum = strictestMinimum(req.minimumTier !== undefined ? { tier: req.minimumTier, setting: "minimumTier" } : undefined, core.minimumTier);
  // A named backend is all a create needs probed, unless a minimum tier could refuse it: then the
  // refusal names the stronger backends, which takes their probes.
  const probes = await probesFor(core, requested !== undefined && minimum === undefined ? requested : "all");
  const { index, defaulted, reason } = chooseBackend(probes, requested, core.configuredDefault);
  const probe = probes[index]!;
  checkTier(probes, probe, {
    defaulted,
    ...(reason !== undefined ? { reason } : {}),
    minimum,
    acknowledgedContainer: req.acknowledgeContainerTier === true,
  });
  return { backend: core.options.backends.find((b) => b.name === probe.backend)!, probe, defaulted, probes };
}

/** Names the usable backends that could enforce `missing`, for the hint of a refused default. */
function enforcersOf(probes: readonly ProbeResult[], missing: readonly (keyof Resources)[], except: BackendName): string[] {
  const kind = { memoryMiB: "memory", pids: "pids", cpus: "cpu" } as const satisfies Record<keyof Resources, keyof ProbeResult["enforceable"]>;
  return probes
    .filter((p) => p.usable && p.backend !== except && missing.every((m) => p.enforceable[kind[m]]))
    .map((p) => `"${p.backend}" (${p.tier})`);
}

function effectiveResources(core: EngineCore, requested: Resources | undefined, probe: ProbeResult, defaulted: boolean, probes: readonly ProbeResult[]): Resources {
  if (requested) {
    const missing: (keyof Resources)[] = [];
    if (requested.memoryMiB !== undefined && !probe.enforceable.memory) missing.push("memoryMiB");
    if (requested.pids !== undefined && !probe.enforceable.pids) missing.push("pids");
    if (requested.cpus !== undefined && !probe.enforceable.cpu) missing.push("cpus");
    if (missing.length > 0) {
      const others = defaulted ? enforcersOf(probes, missing, probe.backend) : [];
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
  const d = core.options.defaultResources ?? { memoryMiB: 1024, pids: 1024 };
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
async function prepare(core: EngineCore, 
  req: CreateSandboxRequest,
  options: { signal?: AbortSignal | undefined; onProgress?: ((event: ProgressEvent) => void) | undefined },
  from: FromSnapshot | undefined,
) {
  const requested = req.backend ?? (req.plan ? backendForTier(req.plan.plan.ir.requiredTier) : undefined);
  const { backend, probe, defaulted, probes } = await chooseSandboxBackend(core, requested, req);
  const resources = effectiveResources(core, req.resources, probe, defaulted, probes);
  const imageRef = req.image ?? core.options.defaultImage ?? DEFAULT_IMAGE;
  // Pinning is judged on the reference alone, before anything is built; the rest once it is resolved.
  const policy = await imagePolicy(core);
  await checkImagePolicy(core, policy, { ref: imageRef });
  const image = await core.options.images.ensure(imageRef, {
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  options.signal?.throwIfAborted();
  // A build provenance record that does not verify is left out of the IR, and counts as none for
  // a policy that requires one.
  const provenance = await verifyProvenance(core.stateDir, image.digest, { imagesDir: core.options.images.root, publicKey: core.gate.publicKey, checkManifest: false }).catch(() => undefined);
  await checkImagePolicy(core, policy, imageFacts(imageRef, image, provenance !== undefined), image.digest);
  const applied = await applyImageDefaults(imageRef, image, req.env);
  const ttlSeconds = req.ttlSeconds ?? core.options.defaultTtlSeconds ?? 600;
  const workMiB = req.workMiB ?? core.options.defaultWorkMiB ?? 1024;
  // The IR records what is enforced: limits and sizes after defaults, the tier of the backend chosen.
  const ir = irFromCreateRequest(
    { ...req, ...(applied.env !== undefined ? { env: applied.env } : {}), resources, workMiB, ttlSeconds },
    {
      imageDigest: image.digest,
      requiredTier: probe.tier,
      ...(from !== undefined ? { fromSnapshot: from.digest } : {}),
      ...(provenance !== undefined ? { imageProvenance: provenance.digest } : {}),
    },
  );
  return { backend, probe, resources, imageRef, image, imageInfo: applied.info, env: applied.env, user: applied.user, ttlSeconds, workMiB, ir };
}

/**
 * Plan mode: the signed plan a create with this request would be admitted through, for review.
 * Boots nothing and consumes nothing; the image is resolved (built when missing) for its digest.
 */
export async function planSandbox(core: EngineCore, request: CreateSandboxRequest, options: PlanOptions = {}, from?: FromSnapshot): Promise<SignedPlan> {
  assertOpen(core);
  const req = parse(CreateSandboxRequest, request, "sandbox options");
  if (req.plan !== undefined) throw new InvalidArgumentError("Cannot plan a request that already carries a plan");
  const seconds = options.validForSeconds ?? DEFAULT_PLAN_VALIDITY_MS / 1000;
  if (req.fromSnapshot !== undefined && from === undefined) throw new InvalidArgumentError("A create from a snapshot is planned through the snapshot capability");
  const { ir } = await prepare(core, req, { signal: callSignal(options), onProgress: options.onProgress }, from);
  return core.gate.issue(ir, { validityMs: Math.round(seconds * 1000), labels: { "mvm/mode": "plan" } });
}

export async function createSandbox(core: EngineCore, 
  request: CreateSandboxRequest,
  options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {},
  from?: FromSnapshot & { readonly restore: RestoreSpec },
  /** Set when the sandbox is started for a warm pool: it is not claimed from one, and stays invisible. */
  warmFor?: WarmPool,
): Promise<SandboxInfo> {
  assertOpen(core);
  const req = await parseCreate(core, request);
  const signal = callSignal(options);
  // Plain-text secrets are judged before anything is resolved, built or admitted.
  const warnings = checkSecretHygiene(
    { env: req.env ?? {}, exemptEnv: new Set(Object.keys(req.secrets ?? {})) },
    { strict: strictSecrets(core, req.strictSecrets) },
  ).map((w) => w.message);
  if (req.fromSnapshot !== undefined && from === undefined) throw new InvalidArgumentError("A create from a snapshot is handled by the snapshot capability");
  const { backend, probe, resources, imageRef, image, imageInfo, env, user, ttlSeconds, workMiB, ir } = await prepare(core, req, { signal, onProgress: options.onProgress }, from);
  if (req.onTtl === "pause" && probe.pauseUnsupported) {
    throw new UnsupportedCapabilityError(`Backend "${probe.backend}" cannot pause sandboxes on this host: ${probe.pauseUnsupported.reason}`, {
      hint: `${probe.pauseUnsupported.hint}; or create without onTtl "pause"`,
    });
  }
  // A warm sandbox of the same workload serves the create, under the create's own plan.
  const warm = from === undefined && warmFor === undefined && core.pools.size > 0 ? takeWarm(core, poolKey(ir, backend, workMiB)) : undefined;
  // Nothing boots before the plan is admitted and its admission is in the audit log.
  let admitted;
  try {
    admitted = req.plan ? await core.gate.admit(req.plan, ir) : await core.gate.admitLive(ir);
    signal?.throwIfAborted();
  } catch (err) {
    // Out of its pool already: nobody else may have it.
    if (warm !== undefined) await core.warm.get(warm.id)?.stop("killed").catch(() => {});
    throw err;
  }
  if (warm !== undefined) {
    const claimed = await claimWarm(core, warm, req, admitted, { imageInfo, ttlSeconds, warnings });
    if (claimed !== undefined) return claimed;
  }
  const secrets = await resolveSecrets(req.secrets ?? {}, { store: core.secrets });
  const secretEnv = Object.fromEntries(secrets.map((s) => [s.envName, s.ref.posture === "env" ? s.value : s.placeholder]));
  const mediatedCount = secrets.filter((s) => s.ref.posture === "mediated").length;
  const sandboxEnv = { ...egressEnvironment({ trustBundle: mediatedCount > 0 }), ...(env ?? {}), ...secretEnv };
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
    image: imageInfo,
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
    gateway: core.gateway,
    secrets: mediated.map((s): MediatedSecret => ({ name: s.ref.name, placeholder: s.placeholder, value: s.value, hosts: s.hosts })),
    ...(ca ? { ca } : {}),
    ports: req.ports ?? [],
  });
  info.network = network.summary();
  info.ports = network.publishedPorts();
  const dir = await core.records.create(id).catch(async (err: unknown) => {
    await network.close();
    throw err;
  });
  await core.records.write({ version: 1, owner: core.owner, info });
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
        agentDir: core.options.agentDir,
        stateDir: dir,
        workMiB: info.workMiB,
        tmpMiB: core.options.tmpMiB ?? 256,
        resources,
        agentLogPath: join(dir, "agent.log"),
        ...(trustBundlePem !== undefined ? { trustBundlePem } : {}),
        ...(user !== undefined ? { user } : {}),
        ...(from !== undefined ? { restore: from.restore } : {}),
      },
      helloTimeoutMs: core.options.helloTimeoutMs ?? HELLO_TIMEOUT_MS[probe.tier],
      heartbeat: core.options.heartbeat ?? { intervalMs: 10_000, timeoutMs: HEARTBEAT_TIMEOUT_MS[probe.tier] },
      onRecord: (reap) =>
        core.records.write({
          version: 1,
          owner: core.owner,
          info,
          reap: { ...reap, cgroups: [...reap.cgroups], extra: { ...reap.extra } },
        }),
      onEnded: (ended) => onEnded(core, ended),
      onPauseChange: (changed, change) => recordPauseChange(core, changed, change),
      ...(signal ? { signal } : {}),
    });
  } catch (err) {
    await network.close();
    await core.records.remove(id);
    throw toMvmError(err);
  }
  // A sandbox started for a pool is kept apart, where no call finds it, until a create claims it.
  (warmFor !== undefined ? core.warm : core.live).set(id, sandbox);
  return handOver(core, sandbox, req, admitted, { type: "sandbox.created", sandboxId: id, planId: admitted.planId, imageDigest: image.digest, backend: backend.name });
}

/**
 * Makes a started sandbox the create's: the request a fork repeats, the one command its plan
 * allows, and `event` in the audit log, which its receipt then names. A failed record stops it.
 */
async function handOver(core: EngineCore, sandbox: LiveSandbox, req: CreateSandboxRequest, admitted: AdmittedRecord, event: AuditEvent): Promise<SandboxInfo> {
  const id = sandbox.info.id;
  const { plan: _plan, ...settings } = req;
  core.createRequests.set(id, settings);
  if (admitted.plan.ir.command.kind === "argv") core.commands.set(id, admitted.plan.ir.command.argv);
  else core.commands.delete(id);
  try {
    const entry = await core.gate.record(event);
    sandbox.info = { ...sandbox.info, receipt: { planId: admitted.planId, auditEntryId: entry.id } };
  } catch (err) {
    await sandbox.stop("killed").catch(() => {});
    throw toMvmError(err);
  }
  return sandbox.info;
}

/** Parses a create request; a plan that fails its schema is recorded as denied. */
async function parseCreate(core: EngineCore, request: CreateSandboxRequest): Promise<CreateSandboxRequest> {
  const plan = (request as { plan?: unknown } | null)?.plan;
  if (plan !== undefined && !SignedPlan.safeParse(plan).success) {
    let planDigest = sha256Hex("");
    try {
      planDigest = sha256Hex(canonicalJson(plan));
    } catch {
      // not JSON: the digest of nothing stands for it
    }
    await core.gate.record({ type: "plan.denied", planDigest, reason: "malformed" });
  }
  return parse(CreateSandboxRequest, request, "sandbox options");
}

export function onEnded(core: EngineCore, sandbox: LiveSandbox): void {
  const id = sandbox.info.id;
  // A warm sandbox that ends unclaimed stays out of every caller's sight; its pool replaces it.
  const warm = core.warm.delete(id);
  if (warm) memberEnded(core, id);
  core.live.delete(id);
  core.commands.delete(id);
  core.createRequests.delete(id);
  const recorded = recordEnd(core, sandbox);
  core.endRecorded.set(id, recorded);
  void recorded.finally(() => core.endRecorded.delete(id));
  if (!warm) {
    core.stoppedNetworks.set(id, sandbox.network);
    if (core.stoppedNetworks.size > STOPPED_NETWORKS_KEPT) core.stoppedNetworks.delete(core.stoppedNetworks.keys().next().value!);
    core.stopped.set(id, sandbox.info);
    if (core.stopped.size > STOPPED_KEPT) core.stopped.delete(core.stopped.keys().next().value!);
  }
  void core.records.remove(id);
}

/**
 * Records how a sandbox ended: a summary of its network decisions, then `sandbox.killed` or
 * `sandbox.expired`. The stopped sandbox's receipt then names the last of them.
 */
async function recordEnd(core: EngineCore, sandbox: LiveSandbox): Promise<void> {
  const info = sandbox.info;
  if (!info.receipt) return; // never admitted: a create that failed before its plan
  const id = info.id;
  try {
    await core.gate.record(networkSummary(id, sandbox.network.takeTally()));
    const ttlSeconds = Math.round((Date.parse(info.expiresAt) - Date.parse(info.createdAt)) / 1000);
    const by = { killed: "caller", crashed: "crash", "engine-exit": "engine" } as const;
    const end: AuditEvent =
      info.endReason === "expired"
        ? { type: "sandbox.expired", sandboxId: id, ttlSeconds }
        : { type: "sandbox.killed", sandboxId: id, by: by[info.endReason ?? "killed"] };
    const entry = await core.gate.record(end);
    const stopped = core.stopped.get(id);
    const receipt = receiptFor(info, entry);
    if (stopped && receipt) core.stopped.set(id, { ...stopped, receipt });
  } catch {
    // The log refuses entries after a failed write; the failure surfaces on the next admission.
  }
}

/** Appends a `sandbox.paused` / `sandbox.resumed` entry; the sandbox's receipt then names it. */
async function recordPauseChange(core: EngineCore, sandbox: LiveSandbox, change: PauseChange): Promise<void> {
  if (!sandbox.info.receipt) return;
  const entry = await core.gate.record({ ...change, sandboxId: sandbox.info.id });
  const receipt = receiptFor(sandbox.info, entry);
  if (receipt) sandbox.info = { ...sandbox.info, receipt };
}

export async function pauseSandbox(core: EngineCore, id: string, request: PauseApiRequest = {}, options: CallOptions = {}): Promise<SandboxInfo> {
  const req = parse(PauseApiRequest, request, "pause request");
  callSignal(options)?.throwIfAborted();
  const sandbox = liveSandbox(core, id);
  await sandbox.pause("caller", req.ttl ?? "running");
  return sandbox.info;
}

export async function setSandboxTimeout(core: EngineCore, id: string, ttlSeconds: number, options: CallOptions = {}): Promise<SandboxInfo> {
  const req = parse(SetTimeoutApiRequest, { ttlSeconds }, "timeout");
  callSignal(options)?.throwIfAborted();
  const sandbox = liveSandbox(core, id);
  const policy = await core.gate.policy();
  if (policy.maxTtlSeconds !== undefined && req.ttlSeconds > policy.maxTtlSeconds) {
    throw new PolicyDeniedError(`Cannot set the TTL of "${id}" to ${req.ttlSeconds} s: the operator policy allows at most ${policy.maxTtlSeconds} s (maxTtlSeconds)`);
  }
  await sandbox.setTtl(req.ttlSeconds);
  const entry = await core.gate.record({ type: "sandbox.ttl_set", sandboxId: id, ttlSeconds: req.ttlSeconds });
  const receipt = receiptFor(sandbox.info, entry);
  if (receipt) sandbox.info = { ...sandbox.info, receipt };
  return sandbox.info;
}

export async function resumeSandbox(core: EngineCore, id: string, options: CallOptions = {}): Promise<SandboxInfo> {
  callSignal(options)?.throwIfAborted();
  const sandbox = liveSandbox(core, id);
  await sandbox.resume();
  return sandbox.info;
}

export async function getSandbox(core: EngineCore, id: string): Promise<SandboxInfo> {
  const live = core.live.get(id);
  if (live) return live.info;
  const stopped = core.stopped.get(id);
  if (stopped) return stopped;
  throw new NotFoundError(`Sandbox "${id}" not found`);
}

export async function listSandboxes(core: EngineCore): Promise<SandboxInfo[]> {
  return [...core.live.values()].map((s) => s.info).filter((i) => i.state !== "stopped");
}

/**
 * Hands the warm sandbox taken for a create to it: the create's labels, TTL and command, a
 * receipt naming its plan, and `sandbox.claimed` in the audit log. Undefined when the sandbox
 * ended meanwhile (the create then starts its own, under the same admission).
 */
async function claimWarm(
  core: EngineCore,
  warm: { pool: WarmPool; id: string },
  req: CreateSandboxRequest,
  admitted: AdmittedRecord,
  resolved: { imageInfo: SandboxInfo["image"]; ttlSeconds: number; warnings: string[] },
): Promise<SandboxInfo | undefined> {
  const sandbox = core.warm.get(warm.id);
  if (sandbox === undefined || sandbox.info.state !== "running") return undefined;
  core.warm.delete(warm.id);
  core.live.set(warm.id, sandbox);
  const now = Date.now();
  const { onTtl: _o, warnings: _w, ...kept } = sandbox.info;
  sandbox.claimed({
    ...kept,
    image: resolved.imageInfo,
    createdAt: new Date(now).toISOString(),
    expiresAt: new Date(now + resolved.ttlSeconds * 1000).toISOString(),
    labels: req.labels ?? {},
    ...(req.onTtl === "pause" ? { onTtl: "pause" as const } : {}),
    ...(resolved.warnings.length > 0 ? { warnings: resolved.warnings } : {}),
    receipt: { planId: admitted.planId, auditEntryId: admitted.receipt.id },
  });
  return handOver(core, sandbox, req, admitted, { type: "sandbox.claimed", sandboxId: warm.id, planId: admitted.planId, pool: warm.pool.id });
}

/** Starts one sandbox for `pool` and waits until its agent answers; returns its id. */
async function startWarmMember(core: EngineCore, pool: WarmPool): Promise<string> {
  const { command: _c, labels: _l, intent: _i, ttlSeconds: _t, ...request } = pool.request;
  const info = await createSandbox(core, { ...request, ttlSeconds: WARM_MEMBER_TTL_SECONDS, intent: WARM_INTENT }, {}, undefined, pool);
  const sandbox = core.warm.get(info.id);
  if (sandbox === undefined) throw new SandboxCrashedError(`Warm sandbox "${info.id}" ended as it started`);
  try {
    await sandbox.warmUp();
    // A sandbox's first exec costs the agent about twice a later one (its spawn path runs for the
    // first time): the runtime's own loader, printing its version, takes that cost here. It is
    // the engine's code from the read-only runtime, not the image's, and it is audited as any exec.
    // Best effort: a warm-up that cannot run (no such loader) leaves a sandbox as good as any.
    await execIn(core, sandbox, { argv: WARM_UP_ARGV, cwd: "/", timeoutMs: 10_000, maxOutputBytes: 4096 }, {})
      .then((w) => w.exit)
      .catch(() => undefined);
    // Best effort too: a sandbox without it serves a call through an exec of the wrapper, as a cold one does.
    if (pool.request.function !== undefined) await prestartFnWrapper(core, sandbox, pool.request.function).catch(() => undefined);
  } catch (err) {
    await sandbox.stop("killed").catch(() => {});
    throw toMvmError(err);
  }
  return info.id;
}

/**
 * Pre-starts the call wrapper in a warm sandbox of a function's pool (docs/FUNCTIONS.md, "Warm
 * pools"): the wrapper (and the function's process it spawns at once) load Node and wait on stdin
 * for the one call they will serve. The claimant finds it in the sandbox's process list, attaches,
 * writes the request (with the call's fresh key) to its stdin and waits for its exit. It is the
 * engine's code from the read-only runtime, started before any claimant's code ran, audited as any
 * exec; it serves at most one call (the wrapper reads one request, then exits) and ends with the
 * sandbox. Its own command limit covers the wait before a claim as well as the call.
 */
async function prestartFnWrapper(core: EngineCore, sandbox: LiveSandbox, spec: NonNullable<CreateSandboxRequest["function"]>): Promise<void> {
  const env: Record<string, string> = {};
  for (const key of ["maxInputBytes", "maxOutputBytes", "maxDepth", "invokeTimeoutMs"] as const) {
    const [name, factor] = FN_LIMIT_ENV[key];
    env[name] = String(Math.ceil(spec.limits[key] / factor));
  }
  await execIn(
    core,
    sandbox,
    {
      argv: [...FN_WRAPPER_COMMAND],
      cwd: "/work",
      env,
      openStdin: true,
      background: true,
      timeoutMs: (WARM_MEMBER_TTL_SECONDS + FN_PRESTART_GRACE_SECONDS) * 1000 + spec.limits.invokeTimeoutMs,
      maxOutputBytes: spec.limits.maxOutputBytes,
    },
    {},
  );
}

/** What a pre-started wrapper's command limit adds to the warm TTL and the invoke timeout. */
const FN_PRESTART_GRACE_SECONDS = 60;

/** What a warm sandbox runs before it is claimed: the agent runtime's dynamic loader, `--version`. */
const WARM_UP_ARGV = [`${AGENT_MOUNT_POINT}/bin/${LOADER_NAME}`, "--version"];

/** The intent recorded in the plan of a sandbox started for a warm pool. */
export const WARM_INTENT = "pool:warm";

/** Sets a warm pool of this engine (see pools.ts). */
export function setWarmPool(core: EngineCore, request: WarmPoolRequest, options: CallOptions = {}): Promise<WarmPoolInfo> {
  return pools.setWarmPool(
    core,
    request,
    async (req, o) => {
      const { backend, probe, workMiB, imageRef, ir } = await prepare(core, parse(CreateSandboxRequest, req, "warm pool sandbox"), { signal: callSignal(o), onProgress: undefined }, undefined);
      return { backend, probe, workMiB, imageRef, ir };
    },
    (p) => startWarmMember(core, p),
    options,
  );
}

export async function killSandbox(core: EngineCore, id: string): Promise<SandboxInfo> {
  const s = core.live.get(id);
  if (!s) {
    await core.endRecorded.get(id);
    return getSandbox(core, id);
  }
  await s.stop("killed");
  await core.endRecorded.get(id);
  return core.stopped.get(id) ?? s.info;
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
