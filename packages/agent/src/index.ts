/**
 * @mvm/agent: the guest agent. The runnable artifact is `dist/agent.cjs` (one bundled file);
 * this module exposes what the host side may want to know about it.
 */
import { fileURLToPath } from "node:url";

export { AGENT_NAME, AGENT_VERSIONS } from "./hello.js";
export { BASELINE_ENV } from "./exec-env.js";

/** Absolute path of the bundled agent (`dist/agent.cjs`), built by `scripts/bundle.mjs`. */
export function agentBundlePath(): string {
  return fileURLToPath(new URL("./agent.cjs", import.meta.url));
}
