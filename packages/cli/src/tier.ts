/**
 * What each isolation tier means, in the plain words doctor and the create notice use.
 */
import type { CreateSandboxRequest, SandboxInfo, Tier } from "@mvm/protocol";
import type { Output } from "./output.js";
import { printable } from "./text.js";

/** What each tier protects, in a few words. */
export const TIER_LABEL: Readonly<Record<Tier, string>> = {
  "vm-hardware": "hardware VM isolation (KVM)",
  "vm-emulated": "VM isolation, emulated (TCG): slow",
  container: "shared host kernel",
};

/** The label of `tier`; a tier this mvmctl does not know is shown as unknown. */
export function tierLabel(tier: string): string {
  return Object.hasOwn(TIER_LABEL, tier) ? TIER_LABEL[tier as Tier] : "unknown tier";
}

/** The one line naming the tier the engine chose: `sandbox ID on TIER (LABEL)`. */
export function defaultTierNotice(sandbox: Pick<SandboxInfo, "id" | "tier">): string {
  return `sandbox ${printable(sandbox.id, 64)} on ${printable(sandbox.tier, 32)} (${tierLabel(sandbox.tier)})\n`;
}

/**
 * Prints the tier notice on stderr when the request named no backend (the engine chose it),
 * except in JSON mode, where the sandbox record carries backend and tier.
 */
export function noticeChosenTier(out: Output, request: CreateSandboxRequest, sandbox: Pick<SandboxInfo, "id" | "tier">): void {
  if (request.backend !== undefined || out.json) return;
  out.note(defaultTierNotice(sandbox));
}
