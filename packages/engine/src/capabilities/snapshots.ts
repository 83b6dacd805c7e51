/**
 * Snapshots: take one of a running sandbox, list and delete them, create a sandbox from one, fork
 * a sandbox into several.
 *
 * Taking: the backend writes the sandbox's parts (vm: RAM, device state, work disk; container:
 * archives of /work and /tmp) into a private directory; the store cuts them into verified chunks
 * under a manifest signed with the host key, and the directory goes. A sandbox given secrets in
 * its environment is refused unless the call consents (the values would be in the snapshot).
 *
 * Restoring: the store checks the manifest's signature and every chunk while it makes read-only
 * templates (SnapshotMismatchError before anything boots), the workload is admitted through a
 * plan whose IR names the snapshot's digest (so operator policy can forbid restores), and the
 * backend starts the sandbox from copies of the templates with a fresh identity (new id, cgroup,
 * work disk copy; on the VM tier a reseeded RNG and the host's clock before the agent's new
 * session). Every step is in the audit log: snapshot.created, .restored, .forked, .deleted.
 */
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  CreateSandboxRequest,
  ForkApiRequest,
  InvalidArgumentError,
  PolicyDeniedError,
  SnapshotApiRequest,
  UnsupportedCapabilityError,
  Resources,
  SnapshotMismatchError,
  backendForTier,
  parseJsonStrict,
  toMvmError,
  type CallOptions,
  type ProgressEvent,
  type SandboxInfo,
  type SignedPlan,
  type SnapshotInfo,
} from "@mvm/protocol";
import { callSignal } from "../_internal/signals.js";
import type { RestoreSpec } from "../backends/types.js";
import type { PlanOptions } from "../engine.js";
import { isAlive, parseOwnerTag, uniqueOwnedName } from "../store/lock.js";
import { SnapshotStore, type StoredSnapshot } from "../store/snapshot-store.js";
import { assertOpen, liveSandbox, parse, type EngineCore } from "./core.js";
import * as sandboxes from "./sandboxes.js";

/** How often expired snapshots are swept while the engine runs, ms. */
const SWEEP_INTERVAL_MS = 10 * 60 * 1000;
/** The label under which a snapshot keeps its source's enforced limits (restores get the same). */
const RESOURCES_LABEL = "mvm/resources";
/** How long a fork's own snapshot may live if the engine dies before deleting it, seconds. */
const FORK_SNAPSHOT_TTL_SECONDS = 3600;

function store(core: EngineCore): SnapshotStore {
  if (core.snapshots === undefined) throw new UnsupportedCapabilityError("This engine has no snapshot store open");
  return core.snapshots;
}

function captureRoot(core: EngineCore): string {
  return join(core.stateDir, "snapshots", "capture");
}

/**
 * Opens the store under `<stateDir>/snapshots`, removes capture directories whose engine died
 * mid-snapshot, sweeps what retention ended, and sweeps again every 10 minutes.
 */
export async function openSnapshots(core: EngineCore): Promise<void> {
  const opened = await SnapshotStore.open(join(core.stateDir, "snapshots"), core.gate.hostKey);
  core.snapshots = opened;
  for (const backend of core.options.backends) backend.useSnapshotStore?.(opened);
  await mkdir(captureRoot(core), { recursive: true, mode: 0o700 });
  for (const name of await readdir(captureRoot(core))) {
    const owner = parseOwnerTag(name);
    if (owner === undefined || !(await isAlive(owner))) await rm(join(captureRoot(core), name), { recursive: true, force: true });
  }
  await sweepSnapshots(core);
  setInterval(() => void sweepSnapshots(core).catch(() => {}), SWEEP_INTERVAL_MS).unref();
}

/** Removes snapshots whose retention ran out, each recorded as `snapshot.deleted` by retention. */
export async function sweepSnapshots(core: EngineCore, now?: Date): Promise<StoredSnapshot[]> {
  if (core.closing) return [];
  const { expired } = await store(core).sweep(now);
  for (const snap of expired) {
    await core.gate.record({ type: "snapshot.deleted", snapshotId: snap.id, digest: hex(snap.digest), by: "retention" }).catch(() => {});
  }
  return expired;
}

function hex(digest: string): string {
  return digest.replace(/^sha256:/, "");
}

/** Takes a snapshot of `id` into the store (see the module comment). */
export async function snapshotSandbox(core: EngineCore, id: string, request: SnapshotApiRequest, options: CallOptions = {}): Promise<SnapshotInfo> {
  assertOpen(core);
  const req = parse(SnapshotApiRequest, request, "snapshot request");
  const snap = await take(core, id, { retention: req.retention, memory: req.memory, includeEnvSecrets: req.includeEnvSecrets, labels: req.labels ?? {}, signal: callSignal(options) });
  return info(core, snap);
}

async function take(
  core: EngineCore,
  id: string,
  req: { retention: StoredSnapshot["retention"]; memory: boolean | undefined; includeEnvSecrets: boolean | undefined; labels: Record<string, string>; signal: AbortSignal | undefined },
): Promise<StoredSnapshot> {
  const sandbox = liveSandbox(core, id);
  const policy = await core.gate.policy();
  if (policy.forbidSnapshots === true) throw new PolicyDeniedError("The operator policy forbids snapshots on this host (forbidSnapshots)");
  const vm = sandbox.info.tier !== "container";
  const memory = req.memory ?? vm;
  if (memory && !vm) {
    throw new UnsupportedCapabilityError(`Sandbox "${id}" runs on the container tier, which cannot snapshot process memory: only /work and /tmp (memory: false)`, {
      hint: "pass { memory: false } for a filesystem snapshot, or run the sandbox on the vm backend",
    });
  }
  if (!memory && vm) {
    throw new UnsupportedCapabilityError(`Sandbox "${id}" runs on the VM tier, which snapshots memory and disk together`, {
      hint: "omit memory (or pass { memory: true })",
    });
  }
  const envSecrets = (sandbox.info.secrets ?? []).filter((s) => s.posture === "env").map((s) => s.env);
  if (envSecrets.length > 0 && req.includeEnvSecrets !== true) {
    throw new PolicyDeniedError(`Sandbox "${id}" holds secrets in its environment (${envSecrets.join(", ")}): their values would be in the snapshot`, {
      hint: "pass includeEnvSecrets: true to snapshot it anyway, or give the sandbox mediated secrets (placeholders) instead",
    });
  }
  // Named after this engine process: a later engine removes it if this one dies mid-snapshot.
  const dir = join(captureRoot(core), await uniqueOwnedName());
  await mkdir(dir, { mode: 0o700 });
  try {
    const captured = await sandbox.snapshot({ memory, dir, ...(req.signal ? { signal: req.signal } : {}) });
    req.signal?.throwIfAborted();
    const snap = await store(core).create({
      parts: captured.parts,
      shape: {
        tier: sandbox.info.tier,
        imageDigest: sandbox.info.image.digest,
        workMiB: sandbox.info.workMiB,
        ...shapeOf(captured.shape),
      },
      kind: "user",
      source: id,
      retention: req.retention,
      memory,
      labels: { ...req.labels, [RESOURCES_LABEL]: JSON.stringify(sandbox.info.resources) },
      ...(req.signal ? { signal: req.signal } : {}),
    });
    const stored = Object.values(store(core).info(snap).sizes).reduce((sum, part) => sum + (part?.storedBytes ?? 0), 0);
    await core.gate.record({ type: "snapshot.created", snapshotId: snap.id, digest: hex(snap.digest), sandboxId: id, memory, storedBytes: stored });
    return snap;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The backend's shape facts, as the manifest's shape records them. */
function shapeOf(shape: { kernelDigest?: string | undefined; initramfsDigest?: string | undefined; qemu?: string | undefined; cpus?: number | undefined; memoryMiB?: number | undefined }) {
  return {
    ...(shape.kernelDigest !== undefined ? { kernelDigest: shape.kernelDigest as `sha256:${string}` } : {}),
    ...(shape.initramfsDigest !== undefined ? { initramfsDigest: shape.initramfsDigest as `sha256:${string}` } : {}),
    ...(shape.qemu !== undefined ? { qemu: shape.qemu } : {}),
    ...(shape.cpus !== undefined ? { cpus: shape.cpus } : {}),
    ...(shape.memoryMiB !== undefined ? { memoryMiB: shape.memoryMiB } : {}),
  };
}

/** The resources the snapshot's source enforced (restores enforce the same). */
function sourceResources(snap: StoredSnapshot): Resources {
  const text = snap.labels[RESOURCES_LABEL];
  if (text === undefined) return {};
  // Signed by this host with the record, but parsed as strictly as anything else read back.
  let value: unknown;
  try {
    value = parseJsonStrict(text);
  } catch (err) {
    throw new SnapshotMismatchError(`Snapshot "${snap.id}" records limits that do not parse`, { cause: err });
  }
  const parsed = Resources.safeParse(value);
  if (!parsed.success) throw new SnapshotMismatchError(`Snapshot "${snap.id}" records limits that do not parse`);
  return parsed.data;
}

/**
 * The create request a restore of `snap` runs as: the snapshot's image, backend, /work size and
 * limits; a request that names others is refused (InvalidArgumentError), since the snapshot's
 * state only fits its own shape.
 */
function restoreRequest(req: CreateSandboxRequest, snap: StoredSnapshot): CreateSandboxRequest {
  const { shape } = snap.manifest;
  const backend = backendForTier(shape.tier);
  const conflict = (field: string, asked: unknown, has: unknown) =>
    new InvalidArgumentError(`Cannot create from snapshot "${snap.id}": it was taken with ${field} ${JSON.stringify(has)}, the request asks for ${JSON.stringify(asked)}`, {
      hint: `omit ${field}: a sandbox started from a snapshot has the snapshot's`,
    });
  if (req.backend !== undefined && req.backend !== backend) throw conflict("backend", req.backend, backend);
  if (req.image !== undefined && req.image !== shape.imageDigest) throw conflict("image", req.image, shape.imageDigest);
  if (req.workMiB !== undefined && req.workMiB !== shape.workMiB) throw conflict("workMiB", req.workMiB, shape.workMiB);
  const resources = sourceResources(snap);
  if (req.resources !== undefined && JSON.stringify(sortKeys(req.resources)) !== JSON.stringify(sortKeys(resources))) {
    throw conflict("resources", req.resources, resources);
  }
  const mediated = Object.entries(req.secrets ?? {}).filter(([, ref]) => ref.posture === "mediated").map(([name]) => name);
  if (snap.memory && mediated.length > 0) {
    // The guest's trust bundle is part of its memory and disks: it would trust the source's CA,
    // never the new sandbox's own, so mediated secrets could not be substituted.
    throw new UnsupportedCapabilityError(`A sandbox restored from a memory snapshot cannot have mediated secrets (${mediated.join(", ")}): its guest keeps the trust bundle of the sandbox it was taken from`, {
      hint: "give the secrets to a fresh sandbox, or snapshot a sandbox that has none",
    });
  }
  const { fromSnapshot: _from, ...rest } = req;
  return { ...rest, backend, image: shape.imageDigest, workMiB: shape.workMiB, resources };
}

function sortKeys(value: object): object {
  return Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)));
}

/** Plan mode for a create from a snapshot: the plan's IR names the snapshot's digest. */
export async function planFromSnapshot(core: EngineCore, request: CreateSandboxRequest, options: PlanOptions = {}): Promise<SignedPlan> {
  assertOpen(core);
  const req = parse(CreateSandboxRequest, request, "sandbox options");
  const snap = await store(core).get(req.fromSnapshot!);
  return sandboxes.planSandbox(core, restoreRequest(req, snap), options, { digest: snap.digest });
}

/**
 * Starts a sandbox from a snapshot: verified (SnapshotMismatchError before anything boots),
 * admitted through a plan naming its digest, recorded as snapshot.restored.
 */
export async function createFromSnapshot(core: EngineCore, request: CreateSandboxRequest, options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {}): Promise<SandboxInfo> {
  assertOpen(core);
  const req = parse(CreateSandboxRequest, request, "sandbox options");
  const snap = await store(core).get(req.fromSnapshot!);
  return restore(core, snap, restoreRequest(req, snap), options);
}

async function restore(core: EngineCore, snap: StoredSnapshot, req: CreateSandboxRequest, options: CallOptions & { onProgress?: (event: ProgressEvent) => void }): Promise<SandboxInfo> {
  const signal = callSignal(options);
  options.onProgress?.({ phase: "verify", message: `verifying snapshot ${snap.id}` });
  const templates = await store(core).materialize(snap, signal);
  try {
    const spec: RestoreSpec = { memory: snap.memory, parts: templates.parts, shape: shapeOf(snap.manifest.shape) };
    const info = await sandboxes.createSandbox(core, req, options, { digest: snap.digest, restore: spec });
    await store(core).touch(snap).catch(() => {});
    const entry = await core.gate.record({ type: "snapshot.restored", snapshotId: snap.id, digest: hex(snap.digest), sandboxId: info.id }).catch(() => undefined);
    const live = core.live.get(info.id);
    if (entry && live?.info.receipt) live.info = { ...live.info, receipt: { planId: live.info.receipt.planId, auditEntryId: entry.id } };
    return live?.info ?? info;
  } finally {
    await templates.release();
  }
}

/**
 * Starts `count` sandboxes from `id`'s current state: one snapshot (kept only while the children
 * start), then each child as a create from it with the parent's settings (environment, secrets,
 * network policy in force, labels, TTL). A child that fails to start fails the call and the ones
 * started are killed: a fork gives all its children or none.
 */
export async function forkSandbox(core: EngineCore, id: string, request: ForkApiRequest = {}, options: CallOptions = {}): Promise<SandboxInfo[]> {
  assertOpen(core);
  const req = parse(ForkApiRequest, request, "fork request");
  const count = req.count ?? 1;
  const parent = liveSandbox(core, id);
  const original = core.createRequests.get(id);
  if (original === undefined) throw new UnsupportedCapabilityError(`Sandbox "${id}" was not created by this engine process, so its settings are unknown: it cannot be forked`);
  const signal = callSignal(options);
  // The snapshot lives only while the children start, and they are given the parent's secrets
  // through their own admission anyway: env secrets need no further consent here.
  const snap = await take(core, id, {
    retention: { ttlSeconds: FORK_SNAPSHOT_TTL_SECONDS },
    memory: undefined,
    includeEnvSecrets: true,
    labels: { "mvm/fork-of": id },
    signal,
  });
  const children: SandboxInfo[] = [];
  try {
    const ttlSeconds = Math.max(1, Math.round((Date.parse(parent.info.expiresAt) - Date.now()) / 1000));
    // Image, backend, sizes and limits come from the snapshot (which has the parent's).
    const { image: _i, backend: _b, workMiB: _w, resources: _r, ...settings } = original;
    const childRequest: CreateSandboxRequest = {
      ...settings,
      ttlSeconds,
      network: parent.network.policy,
      fromSnapshot: snap.id,
    };
    for (let i = 0; i < count; i++) {
      children.push(await restore(core, snap, restoreRequest(childRequest, snap), options));
    }
    await core.gate.record({ type: "snapshot.forked", sandboxId: id, digest: hex(snap.digest), children: children.map((c) => c.id) });
    return children.map((c) => core.live.get(c.id)?.info ?? c);
  } catch (err) {
    await Promise.all(children.map((c) => sandboxes.killSandbox(core, c.id).catch(() => {})));
    throw toMvmError(err);
  } finally {
    await store(core).delete(snap.id).then(
      () => core.gate.record({ type: "snapshot.deleted", snapshotId: snap.id, digest: hex(snap.digest), by: "engine" }),
      () => undefined,
    ).catch(() => {});
  }
}

export async function listSnapshots(core: EngineCore): Promise<SnapshotInfo[]> {
  const all = await store(core).list();
  return all.filter((s) => s.kind === "user").map((s) => info(core, s));
}

export async function getSnapshot(core: EngineCore, ref: string): Promise<SnapshotInfo> {
  return info(core, await userSnapshot(core, ref));
}

export async function deleteSnapshot(core: EngineCore, ref: string): Promise<void> {
  const snap = await userSnapshot(core, ref);
  await store(core).delete(snap.id);
  await core.gate.record({ type: "snapshot.deleted", snapshotId: snap.id, digest: hex(snap.digest), by: "caller" });
}

/** A snapshot a caller may see: the engine's own (the saved VM) are not listed or deletable. */
async function userSnapshot(core: EngineCore, ref: string): Promise<StoredSnapshot> {
  const snap = await store(core).get(ref);
  if (snap.kind !== "user") throw new InvalidArgumentError(`Snapshot "${ref}" belongs to the engine (a saved VM): it is managed by its retention`);
  return snap;
}

function info(core: EngineCore, snap: StoredSnapshot): SnapshotInfo {
  const out = store(core).info(snap);
  const { [RESOURCES_LABEL]: _r, ...labels } = out.labels;
  return { ...out, labels };
}

/** The API's view of a user snapshot (what `getSnapshot` answers), for other capabilities. */
export function snapshotInfoOf(core: EngineCore, snap: StoredSnapshot): SnapshotInfo {
  return info(core, snap);
}
