export { Engine, ENGINE_VERSION, DEFAULT_IMAGE } from "./engine.js";
export type { EngineOptions } from "./engine.js";
export { openEngine, defaultAgentBundlePath } from "./open.js";
export type { OpenEngineOptions } from "./open.js";
export { defaultStateDir } from "./state.js";
export { startDaemonServer } from "./daemon/server.js";
export type { Backend, LaunchSpec, LaunchedSandbox, ProbeCheck, ProbeResult, ReapRecord } from "./backends/types.js";
export * from "./audit/index.js";
export * from "./admission/index.js";
