/**
 * `openEngine`: the engine with its standard parts (the vm and namespace backends, image store on
 * disk, the agent runtime assembled from the bundled agent). The daemon and the SDK's embedded
 * mode both start here.
 */
import { mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { BackendName, InvalidArgumentError, MINIMUM_TIER_ENV, type Tier } from "@mvm/protocol";
import { Engine, type EngineOptions } from "./engine.js";
import { defaultStateDir } from "./state.js";
import { ImageStore } from "./images/store.js";
import {
  DEFAULT_BACKEND_ENV,
  parseBackendName,
  parseTier,
  resolveConfiguredDefault,
  type ConfiguredDefault,
  type TierMinimum,
} from "./backend-choice.js";
import type { Backend } from "./backends/types.js";
import { NamespaceBackend } from "./backends/namespace/namespace-backend.js";
import { VmBackend } from "./backends/vm/vm-backend.js";
import { assembleAgentRuntime } from "./runtime/agent-runtime.js";
import { ptyHelperIfBuildable } from "./runtime/pty-helper.js";
import { HostFacts } from "./store/host-facts.js";

/** The standard backends, strongest isolation first. */
export const STANDARD_BACKENDS: readonly BackendName[] = ["vm", "namespace"];

export interface OpenEngineOptions
  extends Partial<Omit<EngineOptions, "backends" | "images" | "agentDir" | "defaultBackend" | "minimumTier">> {
  /**
   * The weakest tier any sandbox of this engine may get (container < vm-emulated < vm-hardware);
   * a create below it is refused with UnsupportedCapabilityError before anything boots.
   * @default `$MVM_MINIMUM_TIER`, else none
   */
  minimumTier?: Tier;
  /** Image store root. @default `$MVM_IMAGES_DIR` or `<stateDir>/images` */
  imagesDir?: string;
  /** The bundled agent (agent.cjs). @default the one shipped in @mvm/agent */
  agentBundlePath?: string;
  /**
   * Which standard backends the engine offers. The vm backend keeps its kernel, initramfs and
   * disk caches in `<stateDir>/vm`.
   * @default ["vm", "namespace"]
   * @example
   * await openEngine({ backends: ["namespace"] }); // no VMs: every sandbox is container tier
   */
  backends?: readonly BackendName[];
  /**
   * The backend of creates that name none. Never a fallback: while it is unusable such creates
   * fail with UnsupportedCapabilityError.
   * @default `$MVM_DEFAULT_BACKEND` ("namespace" or "vm"), or else the strongest usable backend
   */
  defaultBackend?: BackendName;
  /**
   * Where the vm backend keeps its guest kernel, initramfs, disk images and saved VMs; engines may
   * share one. @default `$MVM_VM_CACHE_DIR` or `<stateDir>/vm`
   */
  vmCacheDir?: string;
  /**
   * The guest kernel of VM sandboxes, when not Debian's cloud kernel: its image and module tree.
   * @default `$MVM_VM_KERNEL` and `$MVM_VM_KERNEL_MODULES` (default `/lib/modules/<release>`,
   *   the release taken from a `vmlinuz-<release>` file name), else Debian's cloud kernel
   */
  vmKernel?: { path: string; modulesDir: string };
}

/** The user-named guest kernel from the environment, if any. */
function kernelFromEnv(env: Readonly<Record<string, string | undefined>> = process.env): { path: string; modulesDir: string } | undefined {
  const path = env["MVM_VM_KERNEL"];
  if (path === undefined || path === "") return undefined;
  const release = /vmlinuz-(.+)$/.exec(path)?.[1];
  const modulesDir = env["MVM_VM_KERNEL_MODULES"] || (release !== undefined ? `/lib/modules/${release}` : undefined);
  if (modulesDir === undefined) throw new InvalidArgumentError(`MVM_VM_KERNEL "${path}" is not named vmlinuz-<release>: set MVM_VM_KERNEL_MODULES to its module tree`);
  return { path, modulesDir };
}

/** Path of the bundled agent shipped with @mvm/agent. */
export function defaultAgentBundlePath(): string {
  return createRequire(import.meta.url).resolve("@mvm/agent/agent.cjs");
}

/**
 * The configured default backend: the option, else `MVM_DEFAULT_BACKEND` (empty counts as unset).
 * @throws InvalidArgumentError when the value is not a backend name
 */
export function configuredDefaultBackend(
  option: unknown,
  env: Readonly<Record<string, string | undefined>> = process.env,
): ConfiguredDefault | undefined {
  if (option !== undefined) return { backend: parseBackendName(option, "defaultBackend"), setting: "defaultBackend" };
  const fromEnv = env[DEFAULT_BACKEND_ENV];
  if (fromEnv === undefined || fromEnv === "") return undefined;
  return { backend: parseBackendName(fromEnv, DEFAULT_BACKEND_ENV), setting: DEFAULT_BACKEND_ENV };
}

/**
 * The engine's minimum tier: the option, else `MVM_MINIMUM_TIER` (empty counts as unset).
 * @throws InvalidArgumentError when the value is not a tier
 */
export function configuredMinimumTier(option: unknown, env: Readonly<Record<string, string | undefined>> = process.env): TierMinimum | undefined {
  if (option !== undefined) return { tier: parseTier(option, "minimumTier"), setting: "minimumTier" };
  const fromEnv = env[MINIMUM_TIER_ENV];
  if (fromEnv === undefined || fromEnv === "") return undefined;
  return { tier: parseTier(fromEnv, MINIMUM_TIER_ENV), setting: `${MINIMUM_TIER_ENV} of the engine` };
}

function standardBackends(names: readonly BackendName[], vmCacheDir: string, vmKernel: { path: string; modulesDir: string } | undefined, ownCache: boolean, facts: HostFacts): Backend[] {
  if (names.length === 0) throw new InvalidArgumentError("Invalid backends []: name at least one backend");
  const seen = new Set<BackendName>();
  return names.map((name) => {
    const backend = parseBackendName(name, "backends entry");
    if (seen.has(backend)) throw new InvalidArgumentError(`Invalid backends: "${backend}" is named twice`);
    seen.add(backend);
    return backend === "vm"
      ? new VmBackend({ cacheRoot: vmCacheDir, bootSnapshotsInEngineStore: ownCache, facts, ...(vmKernel ? { kernel: vmKernel } : {}) })
      : new NamespaceBackend({ facts });
  });
}

/**
 * Opens the engine with the standard backends.
 * @throws InvalidArgumentError for a bad `backends` list or default backend (`MVM_DEFAULT_BACKEND`
 *   included), before anything is created on disk
 * @example
 * const engine = await openEngine(); // default backend: MVM_DEFAULT_BACKEND, else the strongest usable
 * console.log((await engine.health()).defaultReason);
 */
export async function openEngine(options: OpenEngineOptions = {}): Promise<Engine> {
  const stateDir = options.stateDir ?? defaultStateDir();
  const vmCacheDir = options.vmCacheDir ?? process.env["MVM_VM_CACHE_DIR"] ?? join(stateDir, "vm");
  // The saved VM is a boot snapshot in the engine's store when the VM cache is the engine's own;
  // engines that share a cache with others (tests) keep it in the cache.
  const ownCache = vmCacheDir === join(stateDir, "vm");
  // What the start derives from host files (hashes, library lists, probe outcomes), kept between starts.
  const facts = new HostFacts(join(stateDir, "host-facts.json"));
  const backends = standardBackends(options.backends ?? STANDARD_BACKENDS, vmCacheDir, options.vmKernel ?? kernelFromEnv(), ownCache, facts);
  const defaultBackend = resolveConfiguredDefault(
    configuredDefaultBackend(options.defaultBackend),
    backends.map((b) => b.name),
  );
  const minimumTier = configuredMinimumTier(options.minimumTier);
  await mkdir(stateDir, { recursive: true, mode: 0o711 });
  const keepDebsDir = process.env["MVM_KEEP_DEBS_DIR"];
  const mirrorAddresses = (process.env["MVM_BUILD_MIRROR_ADDRESSES"] ?? "").split(",").map((a) => a.trim()).filter(Boolean);
  // Builds sign provenance with this state dir's host key, and never see this state dir.
  const images = await ImageStore.open(options.imagesDir ?? process.env["MVM_IMAGES_DIR"] ?? join(stateDir, "images"), {
    stateDir,
    ...(keepDebsDir ? { keepDebsDir } : {}),
    ...(mirrorAddresses.length > 0 ? { buildMirrorAddresses: mirrorAddresses } : {}),
  });
  const runtime = await assembleAgentRuntime({
    agentBundlePath: options.agentBundlePath ?? defaultAgentBundlePath(),
    outRoot: join(stateDir, "runtime"),
    facts,
    // Built once per source and compiler, beside the VM backend's guest helper in the shared cache.
    ptyHelperPath: await ptyHelperIfBuildable(join(vmCacheDir, "pty-helper"), facts),
  });
  const { imagesDir: _i, agentBundlePath: _a, backends: _b, defaultBackend: _d, vmCacheDir: _v, vmKernel: _k, minimumTier: _m, ...rest } = options;
  return Engine.open({
    ...rest,
    stateDir,
    images,
    agentDir: runtime.dir,
    backends,
    ...(defaultBackend !== undefined ? { defaultBackend } : {}),
    ...(minimumTier !== undefined ? { minimumTier } : {}),
  });
}
