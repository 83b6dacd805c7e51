/**
 * Plan files: what `mvmctl plan` and `mvmctl run --mode plan` write, and what `mvmctl run|create
 * --plan FILE` read. A file holds one signed plan, or a bundle of the plans found in a script.
 * Files are untrusted input: size-bounded, parsed, schema-checked (the engine still verifies the
 * signature, window and nonce when the plan is used).
 */
import { open } from "node:fs/promises";
import { z } from "zod";
import { InvalidArgumentError, NotFoundError, SignedPlan, canonicalJson, type WorkloadIR } from "@mvm/protocol";

/** Largest plan file read, in bytes. */
export const MAX_PLAN_FILE_BYTES = 32 * 1024 * 1024;

const Location = z.strictObject({ line: z.number().int().min(1), column: z.number().int().min(1) });

/** The plans `mvmctl plan` found in a script, with where they came from and the commands seen. */
export const PlanBundle = z.strictObject({
  version: z.literal(1),
  source: z.string().max(4096),
  mode: z.enum(["static", "record"]),
  workloads: z
    .array(
      z.strictObject({
        location: Location.optional(),
        /** Commands the script runs in this sandbox (for review; the plan admits a session). */
        commands: z.array(z.array(z.string().max(128 * 1024)).max(4096)).max(4096),
        plan: SignedPlan,
      }),
    )
    .max(1024),
  diagnostics: z.array(z.strictObject({ line: z.number().int(), column: z.number().int(), message: z.string().max(4096) })).max(10_000),
});
export type PlanBundle = z.infer<typeof PlanBundle>;

/**
 * Reads a plan file: a signed plan, or a bundle holding exactly one (or the `index`-th, from 0).
 * @throws NotFoundError when the file is missing; InvalidArgumentError for anything else wrong
 */
export async function readPlanFile(path: string, index?: number): Promise<SignedPlan> {
  let handle;
  try {
    handle = await open(path, "r");
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") throw new NotFoundError(`Plan file "${path}" does not exist`, { cause });
    throw new InvalidArgumentError(`Cannot read plan file "${path}": ${(cause as Error).message}`, { cause });
  }
  let text: string;
  try {
    const buffer = Buffer.alloc(MAX_PLAN_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_PLAN_FILE_BYTES) throw new InvalidArgumentError(`Plan file "${path}" is larger than ${MAX_PLAN_FILE_BYTES} bytes`);
    }
    text = new TextDecoder("utf-8", { fatal: true }).decode(buffer.subarray(0, length));
  } catch (cause) {
    if (cause instanceof InvalidArgumentError) throw cause;
    throw new InvalidArgumentError(`Cannot read plan file "${path}": ${(cause as Error).message}`, { cause });
  } finally {
    await handle.close();
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new InvalidArgumentError(`Plan file "${path}" is not JSON: ${(cause as Error).message}`, { cause });
  }
  const single = SignedPlan.safeParse(value);
  if (single.success) {
    if (index !== undefined && index !== 0) throw new InvalidArgumentError(`Plan file "${path}" holds one plan; there is no plan ${index}`);
    return single.data;
  }
  const bundle = PlanBundle.safeParse(value);
  if (!bundle.success) {
    const issue = single.error.issues[0];
    throw new InvalidArgumentError(
      `Plan file "${path}" is neither a signed plan nor a plan bundle (${issue ? `${issue.path.join(".") || "(root)"}: ${issue.message}` : "invalid"})`,
    );
  }
  const workloads = bundle.data.workloads;
  if (index === undefined && workloads.length !== 1) {
    throw new InvalidArgumentError(`Plan file "${path}" holds ${workloads.length} plans`, { hint: "Choose one with --plan-index N (from 0)" });
  }
  const chosen = workloads[index ?? 0];
  if (!chosen) throw new InvalidArgumentError(`Plan file "${path}" has no plan ${index} (it holds ${workloads.length})`);
  return chosen.plan;
}

/** The canonical JSON text of a plan or bundle, as written to files and stdout. */
export function planText(value: SignedPlan | PlanBundle): string {
  return `${canonicalJson(value)}\n`;
}

/** A plan for a human reviewer: what runs, under which limits, reaching what, with which secrets. */
export function describePlan(signed: SignedPlan): string {
  const { plan } = signed;
  const ir: WorkloadIR = plan.ir;
  const lines: string[] = [];
  lines.push(`plan ${plan.planId}`);
  lines.push(`  valid      ${new Date(plan.notBeforeMs).toISOString()} .. ${new Date(plan.notAfterMs).toISOString()} (once)`);
  lines.push(`  intent     ${ir.intent}    tier ${ir.requiredTier}`);
  lines.push(`  image      ${ir.imageDigest}`);
  lines.push(`  command    ${ir.command.kind === "argv" ? ir.command.argv.map(quote).join(" ") : ir.command.kind === "session" ? "(session: any command over exec)" : `(entrypoint) ${ir.command.args.join(" ")}`}`);
  const r = ir.resources;
  const limits = [
    r.memoryMiB !== undefined ? `memory ${r.memoryMiB} MiB` : "memory unlimited",
    r.pids !== undefined ? `pids ${r.pids}` : "pids unlimited",
    r.cpus !== undefined ? `cpus ${r.cpus}` : "cpus unlimited",
    r.workMiB !== undefined ? `/work ${r.workMiB} MiB` : undefined,
    `ttl ${ir.ttlSeconds} s${ir.onTtl === "pause" ? " (then paused, killed after 7 days paused)" : ""}`,
  ].filter((x) => x !== undefined);
  lines.push(`  limits     ${limits.join(", ")}`);
  lines.push(`  env        ${ir.envNames.length === 0 ? "(none)" : `${ir.envNames.join(", ")} (values bound by ${ir.envSha256.slice(0, 19)}…)`}`);
  if (ir.network.rules.length === 0) lines.push("  network    none (deny all)");
  for (const [i, rule] of ir.network.rules.entries()) lines.push(`  ${i === 0 ? "network   " : "          "} allow ${describeRule(rule)}`);
  if (ir.secrets.length === 0) lines.push("  secrets    (none)");
  for (const [i, s] of ir.secrets.entries()) {
    const hosts = s.ref.hosts && s.ref.hosts.length > 0 ? ` for ${s.ref.hosts.join(", ")}` : "";
    lines.push(`  ${i === 0 ? "secrets   " : "          "} ${s.name} <- ${s.ref.source}:${s.ref.name} (${s.ref.posture})${hosts}`);
  }
  if (ir.ports.length > 0) lines.push(`  ports      ${ir.ports.map((p) => (p.host ? `${p.guest}->127.0.0.1:${p.host}` : String(p.guest))).join(", ")}`);
  lines.push(`  profile    seccomp ${plan.profile.seccompTier}, secrets released: ${plan.profile.secretRelease}`);
  lines.push(`  signed by  ${signed.signature.keyId}`);
  return `${lines.join("\n")}\n`;
}

function describeRule(rule: WorkloadIR["network"]["rules"][number]): string {
  const r = rule as Record<string, unknown>;
  const target = r["host"] ?? r["cidr"] ?? "?";
  const ports = r["ports"] ?? r["port"];
  return `${String(r["kind"])} ${String(target)}${ports !== undefined ? ` ports ${JSON.stringify(ports)}` : ""}`;
}

function quote(word: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
