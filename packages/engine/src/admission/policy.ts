/**
 * Operator policy v1: limits the operator sets for every workload, enforced at admission.
 * A field that is absent imposes nothing; a resource the IR leaves unlimited exceeds any maximum.
 */
import { open } from "node:fs/promises";
import { z } from "zod";
import { InvalidArgumentError, Sha256DigestSchema, Tier } from "@mvm/protocol";
import { IntentSchema, describeIssue, type WorkloadIR } from "./ir.js";

export const POLICY_VERSION = 1;
/** Largest policy file `loadPolicy` reads, in bytes. */
export const MAX_POLICY_FILE_BYTES = 1024 * 1024;

export const OperatorPolicy = z.strictObject({
  version: z.literal(POLICY_VERSION),
  /** Longest TTL a workload may ask for, in seconds. */
  maxTtlSeconds: z.number().int().min(1).optional(),
  /** Only these images may run. */
  allowedImageDigests: z.array(Sha256DigestSchema).max(10_000).optional(),
  /** The weakest tier a workload may run on (container < vm-emulated = vm-hardware). */
  requiredTier: Tier.optional(),
  maxResources: z
    .strictObject({
      memoryMiB: z.number().int().min(1).optional(),
      pids: z.number().int().min(1).optional(),
      cpus: z.number().min(0.01).optional(),
      workMiB: z.number().int().min(1).optional(),
    })
    .optional(),
  /** When true, the network policy must allow nothing (no rules). */
  forbidEgress: z.boolean().optional(),
  /** When true, no secret may have posture `env` (the value would be handed to the guest). */
  forbidEnvSecrets: z.boolean().optional(),
  /** Only these intents may be admitted. */
  allowedIntents: z.array(IntentSchema).max(1000).optional(),
  /** When true, no snapshot may be taken (and so no fork). */
  forbidSnapshots: z.boolean().optional(),
  /** When true, no workload may start from a snapshot (create from one, or fork). */
  forbidRestores: z.boolean().optional(),
  /**
   * When true, a create must name its image by digest: `sha256:<hex>` or `REGISTRY/REPO@sha256:<hex>`
   * (a plan always does). Tags, local names and `debian:` references are refused.
   */
  requireDigestPinnedImages: z.boolean().optional(),
  /**
   * Registries (`host` or `host:port`, exactly) images may be pulled from and run from. Pulls from
   * others are refused; an image pulled from one no longer listed is refused at create. Images
   * not pulled from a registry (builds, imports) are not affected by this rule.
   */
  allowedRegistries: z.array(z.string().min(1).max(261).regex(/^[a-z0-9.-]+(?::[0-9]{1,5})?$/)).max(1000).optional(),
  /** When true, an image must carry a verified provenance record (from the builder); others are refused. */
  requireImageProvenance: z.boolean().optional(),
});
export type OperatorPolicy = z.infer<typeof OperatorPolicy>;

/** Names of the rules `evaluatePolicy` can report. */
export type PolicyRule =
  | "maxTtlSeconds"
  | "allowedImageDigests"
  | "requiredTier"
  | "maxResources.memoryMiB"
  | "maxResources.pids"
  | "maxResources.cpus"
  | "maxResources.workMiB"
  | "forbidEgress"
  | "forbidEnvSecrets"
  | "allowedIntents"
  | "forbidRestores"
  | "requireDigestPinnedImages"
  | "allowedRegistries"
  | "requireImageProvenance";

export type PolicyDecision = { ok: true } | { ok: false; rule: PolicyRule; message: string };

/** Isolation strength of a tier: both VM tiers put a guest kernel between workload and host. */
const TIER_RANK: Record<Tier, number> = { container: 0, "vm-emulated": 1, "vm-hardware": 1 };

const RESOURCE_KEYS = ["memoryMiB", "pids", "cpus", "workMiB"] as const;

/**
 * Checks an IR against the operator policy. Rules are checked in a fixed order and the first one
 * broken is reported; the result is a value, not a throw (`admit` turns it into PolicyDeniedError).
 */
export function evaluatePolicy(ir: WorkloadIR, policy: OperatorPolicy): PolicyDecision {
  if (policy.maxTtlSeconds !== undefined && ir.ttlSeconds > policy.maxTtlSeconds) {
    return deny("maxTtlSeconds", `ttlSeconds "${ir.ttlSeconds}" exceeds the maximum of ${policy.maxTtlSeconds}`);
  }
  if (policy.allowedImageDigests !== undefined && !policy.allowedImageDigests.includes(ir.imageDigest)) {
    return deny("allowedImageDigests", `image "${ir.imageDigest}" is not in the allowed list`);
  }
  if (policy.requiredTier !== undefined && TIER_RANK[ir.requiredTier] < TIER_RANK[policy.requiredTier]) {
    return deny("requiredTier", `tier "${ir.requiredTier}" is weaker than the required "${policy.requiredTier}"`);
  }
  for (const key of RESOURCE_KEYS) {
    const max = policy.maxResources?.[key];
    if (max === undefined) continue;
    const asked = ir.resources[key];
    if (asked === undefined) return deny(`maxResources.${key}`, `${key} is unlimited; the maximum is ${max}`);
    if (asked > max) return deny(`maxResources.${key}`, `${key} "${asked}" exceeds the maximum of ${max}`);
  }
  if (policy.forbidEgress === true && ir.network.rules.length > 0) {
    return deny("forbidEgress", `the network policy has ${ir.network.rules.length} allow rule(s), and the policy forbids egress`);
  }
  if (policy.forbidEnvSecrets === true) {
    const exposed = ir.secrets.find((s) => s.ref.posture === "env");
    if (exposed !== undefined) return deny("forbidEnvSecrets", `secret "${exposed.name}" has posture "env", which the policy forbids`);
  }
  if (policy.allowedIntents !== undefined && !policy.allowedIntents.includes(ir.intent)) {
    return deny("allowedIntents", `intent "${ir.intent}" is not in the allowed list`);
  }
  if (policy.forbidRestores === true && ir.fromSnapshot !== undefined) {
    return deny("forbidRestores", `the workload starts from snapshot "${ir.fromSnapshot}", and the policy forbids restores`);
  }
  return { ok: true };
}

/** What the engine knows about the image a create asks for, for the image rules of the policy. */
export interface ImageFacts {
  /** The image reference as the create (or its plan) names it. */
  ref: string;
  /** `host[:port]` of the registry the image was pulled from; absent for builds and imports. */
  registry?: string;
  /**
   * True only when the image has a provenance record whose signature was verified; absent before
   * the image is resolved (the provenance rule is then left for the check after it).
   */
  provenanceVerified?: boolean;
}

/** True when `ref` names an image by digest. */
export function isDigestPinned(ref: string): boolean {
  return /^sha256:[0-9a-f]{64}$/.test(ref) || /^[^@]+@sha256:[0-9a-f]{64}$/.test(ref);
}

/**
 * Checks an image against the policy's image rules (digest pinning, registries, provenance), in
 * that order; the first broken is reported, as a value.
 */
export function evaluateImagePolicy(image: ImageFacts, policy: OperatorPolicy): PolicyDecision {
  if (policy.requireDigestPinnedImages === true && !isDigestPinned(image.ref)) {
    return deny("requireDigestPinnedImages", `image "${image.ref}" is not named by digest (sha256:<hex> or REGISTRY/REPO@sha256:<hex>)`);
  }
  if (image.registry !== undefined && !registryAllowed(image.registry, policy)) {
    return deny("allowedRegistries", `image "${image.ref}" comes from registry "${image.registry}", which is not in the allowed list`);
  }
  if (policy.requireImageProvenance === true && image.provenanceVerified === false) {
    return deny("requireImageProvenance", `image "${image.ref}" has no verified provenance record`);
  }
  return { ok: true };
}

/** Checks a pull from `registry` against `allowedRegistries`. */
export function evaluatePullPolicy(registry: string, policy: OperatorPolicy): PolicyDecision {
  if (!registryAllowed(registry, policy)) return deny("allowedRegistries", `registry "${registry}" is not in the allowed list`);
  return { ok: true };
}

function registryAllowed(registry: string, policy: OperatorPolicy): boolean {
  return policy.allowedRegistries === undefined || policy.allowedRegistries.includes(registry);
}

function deny(rule: PolicyRule, message: string): PolicyDecision {
  return { ok: false, rule, message };
}

/** Validates an unknown value as an operator policy; InvalidArgumentError names the first bad field. */
export function parsePolicy(value: unknown, source = "policy"): OperatorPolicy {
  const parsed = OperatorPolicy.safeParse(value);
  if (!parsed.success) throw new InvalidArgumentError(`Invalid ${source}: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  return parsed.data;
}

/**
 * Reads and validates an operator policy file (JSON, at most 1 MiB).
 * Throws InvalidArgumentError naming the file and the bad field; a file that cannot be read is an
 * InvalidArgumentError too, with the system error as cause.
 *
 * @example
 * const policy = await loadPolicy("/etc/mvm/policy.json");
 */
export async function loadPolicy(path: string): Promise<OperatorPolicy> {
  let bytes: Buffer;
  try {
    bytes = await readBounded(path, MAX_POLICY_FILE_BYTES + 1);
  } catch (err) {
    throw new InvalidArgumentError(`Cannot read policy file "${path}": ${(err as Error).message}`, { cause: err });
  }
  if (bytes.byteLength > MAX_POLICY_FILE_BYTES) {
    throw new InvalidArgumentError(`Policy file "${path}" is ${bytes.byteLength} bytes, over the limit of ${MAX_POLICY_FILE_BYTES}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString("utf8"));
  } catch (err) {
    throw new InvalidArgumentError(`Policy file "${path}" is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parsePolicy(value, `policy file "${path}"`);
}

/** Reads at most `limit` bytes of a file. */
async function readBounded(path: string, limit: number): Promise<Buffer> {
  const handle = await open(path, "r");
  try {
    const buffer = Buffer.alloc(limit);
    let length = 0;
    while (length < limit) {
      const { bytesRead } = await handle.read(buffer, length, limit - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}
