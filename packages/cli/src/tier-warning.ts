/**
 * The warning printed when a sandbox runs on the container tier, where the isolation claims that
 * rest on a separate kernel do not hold.
 */
import {
  CONTAINER_TIER_CAVEATS,
  callerSettingsFromEnv,
  strongerTier,
  type CreateSandboxRequest,
  type ExecApiRequest,
  type Tier,
} from "@mvm/protocol";
import type { CliConfig } from "./config.js";

/** True when the user acknowledged the container tier (env var or config file). */
export function containerTierAcknowledged(env: Readonly<Record<string, string | undefined>>, config: CliConfig): boolean {
  const v = env["MVM_ACK_CONTAINER_TIER"];
  if (v === "1" || v === "true") return true;
  return config.ackContainerTier === true;
}

/**
 * The warning's text (several lines, each ending in a newline): the claims that do not hold on
 * the container tier, the same list the engine names when it refuses an unacknowledged create.
 */
export function containerTierWarning(backend: string, configPath: string): string {
  return (
    `warning: backend "${backend}" is container tier, which is not isolation for hostile code:\n` +
    CONTAINER_TIER_CAVEATS.map((c) => `warning: ${c}\n`).join("") +
    `warning: use the vm backend (--backend vm) for hostile code; ` +
    `silence this with MVM_ACK_CONTAINER_TIER=1 or "ackContainerTier": true in ${configPath}\n`
  );
}

/**
 * The create request mvmctl sends: MVM_MINIMUM_TIER and MVM_STRICT_SECRETS of mvmctl's
 * environment added (the stronger minimum wins over --minimum-tier), and the container tier
 * acknowledged, since mvmctl tells the user itself ({@link TierWarning}).
 * @throws InvalidArgumentError when MVM_MINIMUM_TIER is not a tier
 */
export function cliCreateRequest(request: CreateSandboxRequest, env: Readonly<Record<string, string | undefined>>): CreateSandboxRequest {
  const settings = callerSettingsFromEnv(env);
  const out: CreateSandboxRequest = { ...request, acknowledgeContainerTier: true };
  const minimumTier = strongerTier(request.minimumTier, settings.minimumTier);
  if (minimumTier !== undefined) out.minimumTier = minimumTier;
  if (settings.strictSecrets === true) out.strictSecrets = true;
  return out;
}

/** The exec request mvmctl sends: strict secret mode when MVM_STRICT_SECRETS is on in mvmctl's environment. */
export function cliExecRequest(request: ExecApiRequest, env: Readonly<Record<string, string | undefined>>): ExecApiRequest {
  return callerSettingsFromEnv(env).strictSecrets === true ? { ...request, strictSecrets: true } : request;
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
