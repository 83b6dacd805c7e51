/**
 * Which backend a create runs on. A create that names a backend gets exactly that backend or an
 * UnsupportedCapabilityError; a create that names none gets the configured default, or else the
 * strongest usable tier (vm-hardware, then vm-emulated, then container). Pure: decides from probes.
 */
import {
  ACK_CONTAINER_TIER_ENV,
  BackendName,
  CONTAINER_TIER_CAVEATS,
  InvalidArgumentError,
  TIER_ORDER,
  Tier,
  UnsupportedCapabilityError,
  tierAtLeast,
  tierRank,
} from "@mvm/protocol";
import type { ProbeResult } from "./backends/types.js";

/** Isolation strength of each tier; higher is stronger. */
export const TIER_STRENGTH: Readonly<Record<Tier, number>> = {
  "vm-hardware": tierRank("vm-hardware"),
  "vm-emulated": tierRank("vm-emulated"),
  container: tierRank("container"),
};

/** The environment variable that sets the default backend of `openEngine`. */
export const DEFAULT_BACKEND_ENV = "MVM_DEFAULT_BACKEND";

/** A default set by configuration, and the setting it came from (for messages). */
export interface ConfiguredDefault {
  readonly backend: BackendName;
  /** e.g. "MVM_DEFAULT_BACKEND". */
  readonly setting: string;
}

/** The default backend and why; `index` points into the probes, or is -1 when there is none. */
export interface DefaultChoice {
  readonly index: number;
  readonly reason: string;
}

/**
 * Checks a backend name from configuration.
 * @throws InvalidArgumentError when `value` is not a backend name
 */
export function parseBackendName(value: unknown, setting: string): BackendName {
  const r = BackendName.safeParse(value);
  if (!r.success) {
    throw new InvalidArgumentError(
      `Invalid ${setting} ${JSON.stringify(typeof value === "string" ? value.slice(0, 200) : value)}: expected one of ${BackendName.options.map((n) => `"${n}"`).join(", ")}`,
      { cause: r.error, hint: `Set ${setting} to ${BackendName.options.join(" or ")}, or leave it unset to use the strongest usable backend` },
    );
  }
  return r.data;
}

/**
 * Checks a configured default: a backend name (reported as set by "defaultBackend")
 * or a name with its setting, which must be one of the `offered` backends.
 * @throws InvalidArgumentError for a bad name or one the engine does not offer
 */
export function resolveConfiguredDefault(
  given: BackendName | ConfiguredDefault | undefined,
  offered: readonly BackendName[],
): ConfiguredDefault | undefined {
  if (given === undefined) return undefined;
  const isObject = typeof given === "object" && given !== null;
  const setting = isObject ? given.setting : "defaultBackend";
  const backend = parseBackendName(isObject ? given.backend : given, setting);
  if (!offered.includes(backend)) {
    const names = offered.map((n) => `"${n}"`).join(", ") || "no backends";
    throw new InvalidArgumentError(`Invalid ${setting} "${backend}": this engine offers only ${names}`, {
      hint: `Set ${setting} to one of ${names}, or leave it unset`,
    });
  }
  return { backend, setting };
}

/** The failed checks of a probe, as "name: detail" joined by "; ". */
export function failedChecks(probe: ProbeResult): string {
  const failed = probe.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.detail}`);
  return failed.length > 0 ? failed.join("; ") : "no check failed, yet the backend reports itself unusable";
}

/** Indexes of the usable probes, strongest tier first; equal tiers keep their order. */
function usableByStrength(probes: readonly ProbeResult[]): number[] {
  return probes
    .map((p, i) => ({ p, i }))
    .filter(({ p }) => p.usable)
    .sort((a, b) => TIER_STRENGTH[b.p.tier] - TIER_STRENGTH[a.p.tier] || a.i - b.i)
    .map(({ i }) => i);
}

/** Chooses the backend of a create that names none, and says why in plain words. */
export function chooseDefault(probes: readonly ProbeResult[], configured: ConfiguredDefault | undefined): DefaultChoice {
  if (configured !== undefined) {
    const index = probes.findIndex((p) => p.backend === configured.backend);
    const probe = probes[index];
    const named = `${configured.setting} names "${configured.backend}"`;
    if (probe === undefined) return { index: -1, reason: `${named}, which this engine does not have` };
    if (!probe.usable) return { index: -1, reason: `${named}, which is not usable here: ${failedChecks(probe)}` };
    return { index, reason: `set by ${configured.setting}` };
  }
  const [best] = usableByStrength(probes);
  if (best === undefined) return { index: -1, reason: "no backend is usable on this host" };
  const chosen = probes[best]!;
  const stronger = probes.filter((p) => !p.usable && TIER_STRENGTH[p.tier] >= TIER_STRENGTH[chosen.tier]);
  let reason = `strongest usable tier: ${chosen.tier}`;
  for (const p of stronger) reason += `; "${p.backend}" is not usable: ${failedChecks(p)}`;
  return { index: best, reason };
}

/**
 * Resolves a create's backend: the requested one when usable, else the default.
 * @throws UnsupportedCapabilityError when the requested backend is missing or unusable, or when
 *   no default is usable; never substitutes another backend for a requested one
 */
export function chooseBackend(
  probes: readonly ProbeResult[],
  requested: BackendName | undefined,
  configured: ConfiguredDefault | undefined,
): { index: number; defaulted: boolean; reason?: string } {
  if (requested !== undefined) {
    const index = probes.findIndex((p) => p.backend === requested);
    const probe = probes[index];
    if (probe === undefined) {
      throw new UnsupportedCapabilityError(`Backend "${requested}" is not available in this engine`, { hint: "run `mvmctl doctor`" });
    }
    if (!probe.usable) {
      throw new UnsupportedCapabilityError(`Backend "${requested}" is not usable on this host: ${failedChecks(probe)}`, {
        hint: "run `mvmctl doctor` for fixes",
      });
    }
    return { index, defaulted: false };
  }
  const choice = chooseDefault(probes, configured);
  if (choice.index < 0) {
    const hint =
      configured === undefined
        ? "run `mvmctl doctor` for fixes"
        : `fix the failed checks (\`mvmctl doctor\`), or change or unset ${configured.setting}`;
    throw new UnsupportedCapabilityError(`No default backend can start sandboxes: ${choice.reason}`, { hint });
  }
  return { index: choice.index, defaulted: true, reason: choice.reason };
}

/** A minimum tier and the setting it came from (for messages), e.g. "minimumTier" or "MVM_MINIMUM_TIER". */
export interface TierMinimum {
  readonly tier: Tier;
  readonly setting: string;
}

/**
 * Checks a tier from configuration.
 * @throws InvalidArgumentError when `value` is not a tier name
 */
export function parseTier(value: unknown, setting: string): Tier {
  const r = Tier.safeParse(value);
  if (!r.success) {
    throw new InvalidArgumentError(
      `Invalid ${setting} ${JSON.stringify(typeof value === "string" ? value.slice(0, 200) : value)}: expected one of ${TIER_ORDER.map((t) => `"${t}"`).join(", ")}`,
      { cause: r.error, hint: `Set ${setting} to ${TIER_ORDER.join(", ")} (weakest to strongest), or leave it unset` },
    );
  }
  return r.data;
}

/** The stronger of several minimums (the first of equals), or undefined when there is none. */
export function strictestMinimum(...minimums: readonly (TierMinimum | undefined)[]): TierMinimum | undefined {
  let out: TierMinimum | undefined;
  for (const m of minimums) if (m !== undefined && (out === undefined || tierRank(m.tier) > tierRank(out.tier))) out = m;
  return out;
}

/** What decides whether the tier of a chosen backend may be used. */
export interface TierCheck {
  /** The backend was chosen by the engine (the create named none), not by the caller. */
  readonly defaulted: boolean;
  /** Why the engine chose it (for messages), when it did. */
  readonly reason?: string;
  readonly minimum?: TierMinimum | undefined;
  /** The caller accepted the container tier for a create that names no backend. */
  readonly acknowledgedContainer: boolean;
}

/**
 * Refuses a backend whose tier is below the minimum, and a container-tier backend the engine
 * chose by default that the caller did not acknowledge. Runs before anything is built or booted.
 * @throws UnsupportedCapabilityError naming the tier, the setting and (for the container tier)
 *   the isolation claims that do not hold there
 */
export function checkTier(probes: readonly ProbeResult[], probe: ProbeResult, check: TierCheck): void {
  const { minimum } = check;
  if (minimum !== undefined && !tierAtLeast(probe.tier, minimum.tier)) {
    const stronger = probes.filter((p) => p.usable && tierAtLeast(p.tier, minimum.tier)).map((p) => `"${p.backend}" (${p.tier})`);
    const how = check.defaulted ? `the engine chose it: ${check.reason ?? "its default"}` : "it was named";
    throw new UnsupportedCapabilityError(
      `Backend "${probe.backend}" gives the ${probe.tier} tier, below the minimum "${minimum.tier}" set by ${minimum.setting} (${how})`,
      {
        hint:
          stronger.length > 0
            ? `name a backend of that tier or stronger: ${stronger.join(", ")}`
            : `no usable backend here gives "${minimum.tier}" or stronger: run \`mvmctl doctor\`, or lower ${minimum.setting}`,
      },
    );
  }
  if (check.defaulted && probe.tier === "container" && !check.acknowledgedContainer) {
    throw new UnsupportedCapabilityError(
      `Refusing the container tier for a create that names no backend (backend "${probe.backend}", ${check.reason ?? "the engine's default"}) ` +
        `without acknowledgment: ${CONTAINER_TIER_CAVEATS.join("; ")}`,
      {
        hint:
          `to accept it, pass acknowledgeContainerTier: true (or set ${ACK_CONTAINER_TIER_ENV}=1 where the SDK runs) or name backend "namespace"; ` +
          "for VM isolation fix the vm backend (`mvmctl doctor`)",
      },
    );
  }
}
