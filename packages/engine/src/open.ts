/**
 * `openEngine`: the engine with its standard parts (namespace backend, image store on disk,
 * the agent runtime assembled from the bundled agent). The daemon and the SDK's embedded mode
 * both start here.
 */
import { mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Engine, type EngineOptions } from "./engine.js";
import { defaultStateDir } from "./state.js";
import { ImageStore } from "./images/store.js";
import { NamespaceBackend } from "./backends/namespace/namespace-backend.js";
import { assembleAgentRuntime } from "./runtime/agent-runtime.js";

export interface OpenEngineOptions
  extends Partial<Omit<EngineOptions, "backends" | "images" | "agentDir">> {
  /** Image store root. @default `$MVM_IMAGES_DIR` or `<stateDir>/images` */
  imagesDir?: string;
  /** The bundled agent (agent.cjs). @default the one shipped in @mvm/agent */
  agentBundlePath?: string;
}

/** Path of the bundled agent shipped with @mvm/agent. */
export function defaultAgentBundlePath(): string {
  return createRequire(import.meta.url).resolve("@mvm/agent/agent.cjs");
}

export async function openEngine(options: OpenEngineOptions = {}): Promise<Engine> {
  const stateDir = options.stateDir ?? defaultStateDir();
  await mkdir(stateDir, { recursive: true, mode: 0o711 });
  const images = await ImageStore.open(options.imagesDir ?? process.env["MVM_IMAGES_DIR"] ?? join(stateDir, "images"));
  const runtime = await assembleAgentRuntime({
    agentBundlePath: options.agentBundlePath ?? defaultAgentBundlePath(),
    outRoot: join(stateDir, "runtime"),
  });
  const { imagesDir: _i, agentBundlePath: _a, ...rest } = options;
  return Engine.open({ ...rest, stateDir, images, agentDir: runtime.dir, backends: [new NamespaceBackend()] });
}
