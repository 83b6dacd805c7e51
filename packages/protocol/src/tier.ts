/**
 * Isolation tiers: their order, and what does not hold on the container tier. The engine's
 * refusals, the SDK's option docs and mvmctl's warning all name the same claims (numbered as in
 * docs/SECURITY.md).
 */
import { Tier } from "./api-base.js";
import { InvalidArgumentError } from "./errors.js";

/** The tiers from weakest to strongest: container < vm-emulated < vm-hardware. */
export const TIER_ORDER: readonly Tier[] = ["container", "vm-emulated", "vm-hardware"];

/** Position of `tier` in {@link TIER_ORDER}: 0 for container, 2 for vm-hardware. */
export function tierRank(tier: Tier): number {
  return TIER_ORDER.indexOf(tier);
}

/** True when `tier` isolates at least as strongly as `minimum`. */
export function tierAtLeast(tier: Tier, minimum: Tier): boolean {
  return tierRank(tier) >= tierRank(minimum);
}

/** The stronger of two tiers; `undefined` counts as no requirement. */
export function strongerTier(a: Tier | undefined, b: Tier | undefined): Tier | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return tierRank(a) >= tierRank(b) ? a : b;
}

/**
 * The isolation claims that do not hold (or hold only conditionally) on the container tier, one
 * sentence each, numbered as in docs/SECURITY.md.
 */
export const CONTAINER_TIER_CAVEATS: readonly string[] = [
  "the sandbox shares the host kernel, so claims 1 and 2 (no host file access, no way to uid 0) hold only while the host kernel has no exploitable bug reachable through the syscalls the sandbox may make: a kernel exploit inside it reaches the host",
  "claim 3 (a tampered root filesystem fails closed) does not hold: there is no dm-verity and no guest kernel",
];

/** The environment variable by which a caller acknowledges the container tier ("1" or "true"). */
export const ACK_CONTAINER_TIER_ENV = "MVM_ACK_CONTAINER_TIER";
/** The environment variable naming the weakest tier a create may get. */
export const MINIMUM_TIER_ENV = "MVM_MINIMUM_TIER";
/** The environment variable turning plain-text secret warnings into refusals ("1" or "true"). */
export const STRICT_SECRETS_ENV = "MVM_STRICT_SECRETS";

/** Whether an on/off environment variable is on: "1" or "true". */
export function envFlagOn(value: string | undefined): boolean {
  return value === "1" || value === "true";
}

/** The request fields a caller's own environment may set (see {@link callerSettingsFromEnv}). */
export interface CallerSettings {
  minimumTier?: Tier;
  acknowledgeContainerTier?: boolean;
  strictSecrets?: boolean;
}

/**
 * What the caller's own process environment says about its creates and execs. These settings
 * travel in each request, so they hold whether the engine is embedded or a daemon with another
 * environment; the engine applies its own settings too, and the stricter of the two wins.
 * - `MVM_MINIMUM_TIER` (container | vm-emulated | vm-hardware): the weakest tier a create may get;
 * - `MVM_ACK_CONTAINER_TIER=1`: a create that names no backend may land on the container tier;
 * - `MVM_STRICT_SECRETS=1`: plain-text secrets in env or argv are refused instead of warned about.
 * Empty values count as unset.
 * @throws InvalidArgumentError when MVM_MINIMUM_TIER is not a tier
 * @example
 * callerSettingsFromEnv({ MVM_MINIMUM_TIER: "vm-emulated", MVM_STRICT_SECRETS: "1" });
 * // { minimumTier: "vm-emulated", strictSecrets: true }
 */
export function callerSettingsFromEnv(env: Readonly<Record<string, string | undefined>>): CallerSettings {
  const out: CallerSettings = {};
  const tier = env[MINIMUM_TIER_ENV];
  if (tier !== undefined && tier !== "") {
    const parsed = Tier.safeParse(tier);
    if (!parsed.success) {
      throw new InvalidArgumentError(`Invalid ${MINIMUM_TIER_ENV} ${JSON.stringify(tier.slice(0, 200))}: expected one of ${TIER_ORDER.map((t) => `"${t}"`).join(", ")}`, {
        hint: `Set ${MINIMUM_TIER_ENV} to ${TIER_ORDER.join(", ")} (weakest to strongest), or leave it unset`,
      });
    }
    out.minimumTier = parsed.data;
  }
  if (envFlagOn(env[ACK_CONTAINER_TIER_ENV])) out.acknowledgeContainerTier = true;
  if (envFlagOn(env[STRICT_SECRETS_ENV])) out.strictSecrets = true;
  return out;
}
