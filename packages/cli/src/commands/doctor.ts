/**
 * `mvmctl doctor`: what the engine found on this host, backend by backend, and what to fix.
 */
import type { BackendReport, HealthInfo, Tier } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { printable } from "../text.js";
import { withEngine } from "./_lifetime.js";

/** What each tier protects, as doctor explains it. */
export const TIER_MEANING: Record<Tier, string> = {
  container: "shared host kernel",
  "vm-hardware": "own guest kernel, hardware virtualization",
  "vm-emulated": "own guest kernel, emulated CPU (slow)",
};

/** `doctor --json` output: the engine's health report plus the verdict mvmctl exits on. */
export interface DoctorJsonResult extends HealthInfo {
  usable: boolean;
}

export function formatBackend(report: BackendReport): string {
  const limits = (["memory", "pids", "cpu"] as const).map((k) => `${k} ${report.enforceable[k] ? "yes" : "no"}`).join(", ");
  let text = `${report.backend}: tier ${report.tier} (${TIER_MEANING[report.tier] ?? "unknown tier"}), ${report.usable ? "usable" : "NOT usable"}\n`;
  for (const check of report.checks) {
    text += `  ${check.ok ? "ok  " : "FAIL"}  ${printable(check.name, 64)}: ${printable(check.detail, 1024)}\n`;
    if (!check.ok && check.hint !== undefined) text += `        fix: ${printable(check.hint, 1024)}\n`;
  }
  text += `  limits enforceable: ${limits}\n`;
  return text;
}

export function formatHealth(health: HealthInfo): string {
  let text = `engine ${printable(health.version, 64)}; default backend: ${health.defaultBackend ?? "none"}\n`;
  for (const backend of health.backends) text += `\n${formatBackend(backend)}`;
  return text;
}

export const doctorCommand = defineCommand<Record<string, never>>({
  name: "doctor",
  summary: "Check this host: backends, their isolation tier, and what to fix",
  usage: "",
  details: "Exits 1 when no backend can start sandboxes on this host.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "auto",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const health = await engine.health({ signal: ctx.signal });
      const usable = health.backends.some((b) => b.usable);
      const json: DoctorJsonResult = { ...health, usable };
      ctx.out.jsonResult(json);
      ctx.out.human(formatHealth(health));
      if (!usable) {
        ctx.out.note("error: no backend can start sandboxes on this host");
        ctx.out.note("hint: fix the failed checks above (each has a fix: line), then run mvmctl doctor again");
        return 1;
      }
      return 0;
    });
  },
});
