/**
 * The warning printed when a sandbox runs on the container tier, where the isolation claims that
 * rest on a separate kernel do not hold.
 */
import type { Tier } from "@mvm/protocol";
import type { CliConfig } from "./config.js";

/** True when the user acknowledged the container tier (env var or config file). */
export function containerTierAcknowledged(env: Readonly<Record<string, string | undefined>>, config: CliConfig): boolean {
  const v = env["MVM_ACK_CONTAINER_TIER"];
  if (v === "1" || v === "true") return true;
  return config.ackContainerTier === true;
}

/** The warning's text (several lines, each ending in a newline). */
export function containerTierWarning(backend: string, configPath: string): string {
  return (
    `warning: backend "${backend}" is container tier: the sandbox shares the host kernel, ` +
    `so a kernel exploit inside it reaches the host\n` +
    `warning: use the vm backend (--backend vm) for hostile code; ` +
    `silence this with MVM_ACK_CONTAINER_TIER=1 or "ackContainerTier": true in ${configPath}\n`
  );
}

/** Prints the container-tier warning at most once per mvmctl invocation. */
export class TierWarning {
  #printed = false;

  constructor(
    private readonly write: (text: string) => void,
    private readonly acknowledged: boolean,
    private readonly configPath: string,
  ) {}

  /** Warns when `tier` is "container", unless acknowledged or already printed. */
  notice(tier: Tier, backend: string): void {
    if (tier !== "container" || this.acknowledged || this.#printed) return;
    this.#printed = true;
    this.write(containerTierWarning(backend, this.configPath));
  }

  get printed(): boolean {
    return this.#printed;
  }
}
