/**
 * Embedded mode: the engine runs inside this process. This is the only file of the SDK that
 * loads engine code, and it does so lazily, so the SDK works without @mvm/engine installed when
 * a daemon is used. One embedded engine exists per process; it is closed when the process exits,
 * and its sandboxes end with it.
 */
import {
  InternalError,
  UnsupportedCapabilityError,
  type CallOptions,
  type CreateSandboxRequest,
  type DirListingResult,
  type EngineApi,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type SecretMeta,
  type ExecApiRequest,
  type ExecHandlers,
  type ExecStarted,
  type FileInfo,
  type FileReadStream,
  type HealthInfo,
  type ImageInfo,
  type ImageInspect,
  type KillSignal,
  type PauseApiRequest,
  type ProcessInfo,
  type PtySize,
  type ProgressEvent,
  type SandboxInfo,
  type WriteFileOptions,
  type SignedPlan,
  type AuditReceiptRef,
  type SnapshotInfo,
  type ForkApiRequest,
  type SnapshotApiRequest,
  type WarmPoolInfo,
  type WarmPoolRequest,
  type BundlePullInfo,
  type BundlePushInfo,
  type PullBundleRequest,
  type PushBundleRequest,
  type TreeOptions,
  type TreeWriteResult,
  type PortSpec,
  type LogSource,
  type SandboxLogs,
} from "@mvm/protocol";

/** Loads the engine module; replaceable in tests. */
export type EngineImporter = () => Promise<unknown>;

const ENGINE_MODULE = "@mvm/engine";

/** Imports @mvm/engine. The specifier is a variable so that the SDK builds without the engine's types. */
export const importEngineModule: EngineImporter = () => import(ENGINE_MODULE);

export interface EmbeddedOptions {
  /** Passed to the engine's `openEngine(options)` when the process's engine is first opened. */
  engineOptions?: object;
  /** @default importEngineModule */
  importEngine?: EngineImporter;
}

let shared: Promise<EmbeddedEngine> | undefined;
/** The engine `shared` resolved to, reachable synchronously from the exit hook. */
let sharedEngine: EmbeddedEngine | undefined;

/**
 * The process's embedded engine, opened on first use. Later calls return the same engine (their
 * `engineOptions` are ignored) until it is closed.
 * @throws UnsupportedCapabilityError when @mvm/engine is not installed
 */
export function openEmbeddedEngine(options: EmbeddedOptions = {}): Promise<EmbeddedEngine> {
  if (shared === undefined) {
    const opening = open(options);
    shared = opening;
    opening.catch(() => {
      if (shared === opening) shared = undefined;
    });
  }
  return shared;
}

async function open(options: EmbeddedOptions): Promise<EmbeddedEngine> {
  let mod: unknown;
  try {
    mod = await (options.importEngine ?? importEngineModule)();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // Only the package itself missing means "not installed"; a missing file inside it is a broken install.
    if (e.code === "ERR_MODULE_NOT_FOUND" && String(e.message).includes(`'${ENGINE_MODULE}'`)) {
      throw new UnsupportedCapabilityError(`Embedded mode needs the package "${ENGINE_MODULE}", which is not installed`, {
        cause: err,
        hint: `Install ${ENGINE_MODULE}, or start a daemon with: mvmctl daemon`,
      });
    }
    throw new InternalError(`Cannot load "${ENGINE_MODULE}": ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const openEngine = (mod as { openEngine?: unknown } | null)?.openEngine;
  if (typeof openEngine !== "function") {
    throw new InternalError(`Package "${ENGINE_MODULE}" has no openEngine export`);
  }
  const engine = (await (openEngine as (o?: object) => Promise<EngineApi>)(options.engineOptions)) as EngineApi;
  const embedded = new EmbeddedEngine(engine);
  sharedEngine = embedded;
  installExitHooks();
  return embedded;
}

function closeShared(): void {
  sharedEngine?.close().catch(() => {});
}

let hooked = false;
function installExitHooks(): void {
  if (hooked) return;
  hooked = true;
  // beforeExit: the loop is empty, so the engine's asynchronous shutdown can still run.
  process.on("beforeExit", closeShared);
  // exit: only the synchronous start of the shutdown runs; the backends' die-with-parent does the rest.
  process.on("exit", closeShared);
}

function removeExitHooks(): void {
  if (!hooked) return;
  hooked = false;
  process.off("beforeExit", closeShared);
  process.off("exit", closeShared);
}

/** The in-process engine, as the SDK hands it out. `close()` stops it for the whole process. */
export class EmbeddedEngine implements EngineApi {
  readonly transport = "embedded" as const;
  readonly #engine: EngineApi;
  #closing: Promise<void> | undefined;

  constructor(engine: EngineApi) {
    this.#engine = engine;
  }

  health(options?: CallOptions): Promise<HealthInfo> {
    return this.#engine.health(options);
  }
  createSandbox(request: CreateSandboxRequest, options?: CallOptions & { onProgress?: (event: ProgressEvent) => void }): Promise<SandboxInfo> {
    return this.#engine.createSandbox(request, options);
  }
  planSandbox(
    request: CreateSandboxRequest,
    options?: CallOptions & { validForSeconds?: number; onProgress?: (event: ProgressEvent) => void },
  ): Promise<SignedPlan> {
    return this.#engine.planSandbox(request, options);
  }
  getSandbox(id: string, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.getSandbox(id, options);
  }
  listSandboxes(options?: CallOptions): Promise<SandboxInfo[]> {
    return this.#engine.listSandboxes(options);
  }
  killSandbox(id: string, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.killSandbox(id, options);
  }
  pauseSandbox(id: string, request?: PauseApiRequest, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.pauseSandbox(id, request, options);
  }
  setSandboxTimeout(id: string, ttlSeconds: number, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.setSandboxTimeout(id, ttlSeconds, options);
  }
  resumeSandbox(id: string, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.resumeSandbox(id, options);
  }
  snapshotSandbox(id: string, request: SnapshotApiRequest, options?: CallOptions): Promise<SnapshotInfo> {
    return this.#engine.snapshotSandbox(id, request, options);
  }
  forkSandbox(id: string, request?: ForkApiRequest, options?: CallOptions): Promise<SandboxInfo[]> {
    return this.#engine.forkSandbox(id, request, options);
  }
  setWarmPool(request: WarmPoolRequest, options?: CallOptions): Promise<WarmPoolInfo> {
    return this.#engine.setWarmPool(request, options);
  }
  listWarmPools(options?: CallOptions): Promise<WarmPoolInfo[]> {
    return this.#engine.listWarmPools(options);
  }
  pushBundle(request: PushBundleRequest, options?: CallOptions): Promise<BundlePushInfo> {
    return this.#engine.pushBundle(request, options);
  }
  pullBundle(request: PullBundleRequest, options?: CallOptions): Promise<BundlePullInfo> {
    return this.#engine.pullBundle(request, options);
  }
  listSnapshots(options?: CallOptions): Promise<SnapshotInfo[]> {
    return this.#engine.listSnapshots(options);
  }
  getSnapshot(ref: string, options?: CallOptions): Promise<SnapshotInfo> {
    return this.#engine.getSnapshot(ref, options);
  }
  deleteSnapshot(ref: string, options?: CallOptions): Promise<void> {
    return this.#engine.deleteSnapshot(ref, options);
  }
  exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted> {
    return this.#engine.exec(id, request, handlers, options);
  }
  signalProcess(id: string, proc: number, signal: KillSignal, options?: CallOptions): Promise<void> {
    return this.#engine.signalProcess(id, proc, signal, options);
  }
  writeStdin(id: string, proc: number, data: Uint8Array | null, options?: CallOptions): Promise<void> {
    return this.#engine.writeStdin(id, proc, data, options);
  }
  resizePty(id: string, proc: number, size: PtySize, options?: CallOptions): Promise<void> {
    return this.#engine.resizePty(id, proc, size, options);
  }
  connectProcess(id: string, proc: number, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted> {
    return this.#engine.connectProcess(id, proc, handlers, options);
  }
  listProcesses(id: string, options?: CallOptions): Promise<ProcessInfo[]> {
    return this.#engine.listProcesses(id, options);
  }
  readFile(id: string, path: string, options?: CallOptions): Promise<FileReadStream> {
    return this.#engine.readFile(id, path, options);
  }
  writeFile(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: WriteFileOptions): Promise<{ bytes: number; receipt?: AuditReceiptRef }> {
    return this.#engine.writeFile(id, path, data, options);
  }
  writeTree(id: string, path: string, tar: AsyncIterable<Uint8Array>, options?: TreeOptions): Promise<TreeWriteResult> {
    return this.#engine.writeTree(id, path, tar, options);
  }
  readTree(id: string, path: string, options?: TreeOptions): Promise<AsyncIterable<Uint8Array>> {
    return this.#engine.readTree(id, path, options);
  }
  listDir(id: string, path: string, options?: CallOptions): Promise<DirListingResult> {
    return this.#engine.listDir(id, path, options);
  }
  stat(id: string, path: string, options?: CallOptions): Promise<FileInfo> {
    return this.#engine.stat(id, path, options);
  }
  mkdir(id: string, path: string, recursive: boolean, options?: CallOptions): Promise<void> {
    return this.#engine.mkdir(id, path, recursive, options);
  }
  remove(id: string, path: string, recursive: boolean, options?: CallOptions): Promise<void> {
    return this.#engine.remove(id, path, recursive, options);
  }
  rename(id: string, from: string, to: string, options?: CallOptions): Promise<void> {
    return this.#engine.rename(id, from, to, options);
  }
  setNetworkPolicy(id: string, policy: NetworkPolicyJson, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.setNetworkPolicy(id, policy, options);
  }
  sandboxLogs(id: string, options?: CallOptions & { source?: LogSource; tail?: number; after?: string }): Promise<SandboxLogs> {
    return this.#engine.sandboxLogs(id, options);
  }
  publishPort(id: string, port: PortSpec, options?: CallOptions): Promise<SandboxInfo> {
    return this.#engine.publishPort(id, port, options);
  }
  networkEvents(id: string, options?: CallOptions & { after?: number; limit?: number }): Promise<NetworkEventsPage> {
    return this.#engine.networkEvents(id, options);
  }
  listSecrets(options?: CallOptions): Promise<SecretMeta[]> {
    return this.#engine.listSecrets(options);
  }
  setSecret(name: string, value: string, options?: CallOptions & { hosts?: readonly string[] }): Promise<SecretMeta> {
    return this.#engine.setSecret(name, value, options);
  }
  removeSecret(name: string, options?: CallOptions): Promise<void> {
    return this.#engine.removeSecret(name, options);
  }
  listImages(options?: CallOptions): Promise<ImageInfo[]> {
    return this.#engine.listImages(options);
  }
  pullImage(reference: string, options?: CallOptions & { onProgress?: (event: ProgressEvent) => void }): Promise<ImageInfo> {
    return this.#engine.pullImage(reference, options);
  }

  buildImage(ref: string, options?: CallOptions & { force?: boolean; onProgress?: (event: ProgressEvent) => void }): Promise<ImageInfo> {
    return this.#engine.buildImage(ref, options);
  }
  importImage(
    path: string,
    name: string,
    options?: CallOptions & { onProgress?: (event: ProgressEvent) => void },
  ): Promise<ImageInfo> {
    return this.#engine.importImage(path, name, options);
  }
  removeImage(ref: string, options?: CallOptions): Promise<void> {
    return this.#engine.removeImage(ref, options);
  }
  inspectImage(ref: string, options?: CallOptions): Promise<ImageInspect> {
    return this.#engine.inspectImage(ref, options);
  }

  /** Stops the engine and kills its sandboxes. The next embedded connection opens a new engine. Idempotent. */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      // Forgotten first, so that new connections open a fresh engine; the engine's own close
      // starts synchronously, which is all an `exit` hook gets to run.
      if (sharedEngine === this) {
        sharedEngine = undefined;
        shared = undefined;
        removeExitHooks();
      }
      try {
        this.#closing = this.#engine.close();
      } catch (err) {
        this.#closing = Promise.reject(err);
      }
    }
    return this.#closing;
  }
}
