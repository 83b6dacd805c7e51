/**
 * Workload IR v1: one strict, versioned description of what a sandbox will run and with what.
 * It is the part of an ExecutionPlan that says *what*; the admission profile says *under which rules*.
 * Environment values are not carried: only their names and a digest of the whole map, so a plan can
 * be stored and audited without holding the values while the values are still bound by the signature.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import {
  DEFAULT_INTENT,
  IR_VERSION,
  InvalidArgumentError,
  UnsupportedCapabilityError,
  WorkloadIR,
  tierAtLeast,
  canonicalJson,
  type CreateSandboxRequest,
  type IrResources,
  type Sha256Digest,
  type Tier,
  type WorkloadCommand,
} from "@mvm/protocol";

export { IR_VERSION, IntentSchema, WorkloadCommand, SecretBinding, IrResources, WorkloadIR } from "@mvm/protocol";
export type { Intent } from "@mvm/protocol";

/** `sha256:` of the canonical JSON of an environment map; the digest of `{}` for no environment. */
export function envSha256(env: Readonly<Record<string, string>> | undefined): Sha256Digest {
  return `sha256:${createHash("sha256").update(canonicalJson(env ?? {})).digest("hex")}` as Sha256Digest;
}

/** What `irFromCreateRequest` needs beyond the request itself. */
export interface IrFromCreateOptions {
  /** The resolved digest of `request.image`. */
  imageDigest: string;
  /** The tier the workload requires. @default "vm-emulated" when `request.backend` is "vm", else "container" */
  requiredTier?: Tier;
  /** @default request.intent, else "code:execute" */
  intent?: string;
  /** @default request.command as `argv`, else { kind: "session" } */
  command?: WorkloadCommand;
  /** Used when the request has no ttlSeconds. @default 3600 */
  defaultTtlSeconds?: number;
  /** The digest of the snapshot the workload starts from (its manifest's sha256), when it does. */
  fromSnapshot?: string;
  /** The digest of the image's verified build provenance record, when it has one. */
  imageProvenance?: string;
}

/**
 * Maps today's `CreateSandboxRequest` plus the resolved image digest into a validated IR.
 * Throws InvalidArgumentError naming the field when the result is not a valid IR, and
 * UnsupportedCapabilityError when its `requiredTier` is below the request's `minimumTier`.
 *
 * @example
 * const ir = irFromCreateRequest({ image: "debian:bookworm", ttlSeconds: 600 }, { imageDigest });
 */
export function irFromCreateRequest(request: CreateSandboxRequest, options: IrFromCreateOptions): WorkloadIR {
  const env = request.env ?? {};
  const requiredTier = options.requiredTier ?? (request.backend === "vm" ? "vm-emulated" : "container");
  if (request.minimumTier !== undefined && !tierAtLeast(requiredTier, request.minimumTier)) {
    throw new UnsupportedCapabilityError(`Invalid workload IR: tier "${requiredTier}" is below the request's minimumTier "${request.minimumTier}"`);
  }
  const resources: IrResources = { ...request.resources };
  if (request.workMiB !== undefined) resources.workMiB = request.workMiB;
  return parseWorkloadIR({
    version: IR_VERSION,
    imageDigest: options.imageDigest,
    command: options.command ?? (request.command !== undefined ? { kind: "argv", argv: request.command } : { kind: "session" }),
    envNames: Object.keys(env).sort(),
    envSha256: envSha256(env),
    resources,
    network: request.network ?? { version: 1, default: "deny", rules: [] },
    secrets: Object.entries(request.secrets ?? {})
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, ref]) => ({ name, ref })),
    ttlSeconds: request.ttlSeconds ?? options.defaultTtlSeconds ?? 3600,
    ...(request.onTtl === "pause" ? { onTtl: "pause" as const } : {}),
    ports: request.ports ?? [],
    requiredTier,
    intent: options.intent ?? request.intent ?? DEFAULT_INTENT,
    ...(options.fromSnapshot !== undefined ? { fromSnapshot: options.fromSnapshot } : {}),
    ...(options.imageProvenance !== undefined ? { imageProvenance: options.imageProvenance } : {}),
    ...(request.function !== undefined ? { function: request.function } : {}),
  });
}

/** Validates an unknown value as a WorkloadIR v1; InvalidArgumentError names the first bad field. */
export function parseWorkloadIR(value: unknown): WorkloadIR {
  const parsed = WorkloadIR.safeParse(value);
  if (!parsed.success) {
    throw new InvalidArgumentError(`Invalid workload IR: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  }
  return parsed.data;
}

/** `field "a.b.0": message` for the first issue of a zod error. */
export function describeIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  if (issue === undefined) return "unknown error";
  const path = issue.path.map(String).join(".");
  return `field "${path === "" ? "(root)" : path}": ${issue.message}`;
}
