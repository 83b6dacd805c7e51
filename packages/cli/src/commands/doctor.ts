/**
 * `mvmctl doctor`: what the engine found on this host: a table of backends with their isolation
 * tier, whether each is usable and which is the default (and why), then each backend's checks
 * with what to fix.
 */
import type { BackendReport, HealthInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { formatTable, printable } from "../text.js";
import { tierLabel } from "../tier.js";
import { withEngine } from "./_lifetime.js";

/** One backend in `doctor --json`: the engine's report plus the tier in words and the default mark. */
export interface DoctorBackendJson extends BackendReport {
  /** What the tier protects, e.g. "hardware VM isolation (KVM)". */
  isolation: string;
  /** True for the backend a create without `backend` runs on. */
  default: boolean;
}

/** `doctor --json` output: the engine's health report, each backend labelled, and the verdict mvmctl exits on. */
export interface DoctorJsonResult extends Omit<HealthInfo, "backends"> {
  backends: DoctorBackendJson[];
  /** True when a create that names no backend can start a sandbox (doctor then exits 0). */
  usable: boolean;
}

export function doctorJson(health: HealthInfo): DoctorJsonResult {
  return {
    ...health,
    backends: health.backends.map((b) => ({ ...b, isolation: tierLabel(b.tier), default: b.backend === health.defaultBackend })),
    usable: health.defaultBackend !== null,
  };
}

export function formatBackend(report: BackendReport): string {
  const limits = (["memory", "pids", "cpu"] as const).map((k) => `${k} ${report.enforceable[k] ? "yes" : "no"}`).join(", ");
  let text = `${report.backend}: tier ${printable(report.tier, 32)} (${tierLabel(report.tier)}), ${report.usable ? "usable" : "NOT usable"}\n`;
  for (const check of report.checks) {
    text += `  ${check.ok ? "ok  " : "FAIL"}  ${printable(check.name, 64)}: ${printable(check.detail, 1024)}\n`;
    if (!check.ok && check.hint !== undefined) text += `        fix: ${printable(check.hint, 1024)}\n`;
  }
  text += `  limits enforceable: ${limits}\n`;
  return text;
}

/** The line naming the default backend, its tier, and the engine's reason when it gave one. */
export function formatDefault(health: HealthInfo): string {
  const chosen = health.backends.find((b) => b.backend === health.defaultBackend);
  const what = chosen === undefined ? "none" : `${chosen.backend}, tier ${printable(chosen.tier, 32)}`;
  const why = health.defaultReason === undefined ? "" : ` (${printable(health.defaultReason, 2048)})`;
  return `default backend: ${what}${why}\n`;
}

export function formatHealth(health: HealthInfo): string {
  let text = `engine ${printable(health.version, 64)}\n${formatDefault(health)}\n`;
  text += formatTable(
    ["BACKEND", "TIER", "ISOLATION", "USABLE", "DEFAULT"],
    health.backends.map((b) => [b.backend, b.tier, tierLabel(b.tier), b.usable ? "yes" : "no", b.backend === health.defaultBackend ? "yes" : ""]),
  );
  for (const backend of health.backends) text += `\n${formatBackend(backend)}`;
  return text;
}

export const doctorCommand = defineCommand<Record<string, never>>({
  name: "doctor",
  summary: "Check this host: backends, their isolation tier, the default, and what to fix",
  usage: "",
  details:
    "A create that names no backend runs on the default: MVM_DEFAULT_BACKEND (namespace or vm) where\n" +
    "the engine runs, else the strongest usable tier (vm-hardware, vm-emulated, container).\n" +
    "When that default is the container tier, an SDK create that names no backend must acknowledge it\n" +
    "(acknowledgeContainerTier, or MVM_ACK_CONTAINER_TIER=1 where the SDK runs); mvmctl warns instead.\n" +
    "Exits 1 when such a create cannot start a sandbox on this host.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "auto",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const health = await engine.health({ signal: ctx.signal });
      const json = doctorJson(health);
      ctx.out.jsonResult(json);
      ctx.out.human(formatHealth(health));
      if (json.usable) return 0;
      if (health.backends.some((b) => b.usable)) {
        ctx.out.note(`error: the default backend cannot start sandboxes: ${printable(health.defaultReason ?? "the engine gave no reason", 2048)}`);
        ctx.out.note("hint: fix its failed checks above, or change the default (MVM_DEFAULT_BACKEND where the engine runs), or pass --backend");
      } else {
        ctx.out.note("error: no backend can start sandboxes on this host");
        ctx.out.note("hint: fix the failed checks above (each has a fix: line), then run mvmctl doctor again");
      }
      return 1;
    });
  },
});
