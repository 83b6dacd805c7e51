/**
 * Workload IR v1: one strict, versioned description of what a sandbox will run and with what.
 * It is the part of an ExecutionPlan that says *what*; the admission profile says *under which rules*.
 * Environment values are not carried: only their names and a digest of the whole map, so a plan can
 * be stored and audited without holding the values while the values are still bound by the signature.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import {
  Argv,
  EnvName,
  InvalidArgumentError,
  MAX_PUBLISHED_PORTS,
  NetworkPolicySchema,
  PortSpec,
  SecretRefSchema,
  Sha256DigestSchema,
  Tier,
  canonicalJson,
  type CreateSandboxRequest,
  type Sha256Digest,
} from "@mvm/protocol";

export const IR_VERSION = 1;

/** `domain:verb`, e.g. `code:execute`. Lowercase letters, digits and `-`. */
export const IntentSchema = z
  .string()
  .max(64)
  .regex(/^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$/, { message: "must look like \"domain:verb\", e.g. \"code:execute\"" });
export type Intent = z.infer<typeof IntentSchema>;

/**
 * What the sandbox runs. `argv`: this command is the workload. `entrypoint`: the image's entrypoint
 * with these arguments. `session`: only the guest agent boots; commands arrive later over exec,
 * under the plan's intent (what a `createSandbox` call asks for today).
 */
export const WorkloadCommand = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("argv"), argv: Argv }),
  z.strictObject({ kind: z.literal("entrypoint"), args: z.array(z.string().max(128 * 1024)).max(4096) }),
  z.strictObject({ kind: z.literal("session") }),
]);
export type WorkloadCommand = z.infer<typeof WorkloadCommand>;

/**
 * A secret the workload may use: the environment variable it fills and where its value comes from
 * (a SecretRef: store, host environment or file; never the value). `ref.posture` "mediated": the
 * guest sees a placeholder and the gateway substitutes the value; "env": the value is handed over.
 */
export const SecretBinding = z.strictObject({ name: EnvName, ref: SecretRefSchema });
export type SecretBinding = z.infer<typeof SecretBinding>;

export const IrResources = z.strictObject({
  memoryMiB: z.number().int().min(128).max(1024 * 1024).optional(),
  pids: z.number().int().min(8).max(1_000_000).optional(),
  cpus: z.number().min(0.01).max(1024).optional(),
  /** Size cap of the writable /work, in MiB. */
  workMiB: z.number().int().min(1).max(1024 * 1024).optional(),
});
export type IrResources = z.infer<typeof IrResources>;


function unique<T>(items: readonly T[], key: (item: T) => string): boolean {
  return new Set(items.map(key)).size === items.length;
}

export const WorkloadIR = z
  .strictObject({
    version: z.literal(IR_VERSION),
    imageDigest: Sha256DigestSchema,
    command: WorkloadCommand,
    /** Names of the environment variables the workload gets, sorted, without duplicates. */
    envNames: z.array(EnvName).max(1024),
    /** `sha256:` of the canonical JSON of the whole environment map (names and values). */
    envSha256: Sha256DigestSchema,
    resources: IrResources,
    /** The egress policy, exactly as a create request carries it. */
    network: NetworkPolicySchema,
    secrets: z.array(SecretBinding).max(256),
    ttlSeconds: z.number().int().min(1).max(7 * 24 * 3600),
    ports: z.array(PortSpec).max(MAX_PUBLISHED_PORTS),
    requiredTier: Tier,
    intent: IntentSchema,
  })
  .check(
    z.refine((ir) => ir.envNames.every((n, i) => i === 0 || ir.envNames[i - 1]! < n), {
      message: "envNames must be sorted and unique",
      path: ["envNames"],
    }),
    z.refine((ir) => unique(ir.secrets, (s) => s.name), { message: "secret names must be unique", path: ["secrets"] }),
    z.refine((ir) => !ir.secrets.some((s) => ir.envNames.includes(s.name)), {
      message: "a secret name must not also be an environment variable name",
      path: ["secrets"],
    }),
    z.refine((ir) => unique(ir.ports, (p) => String(p.guest)), { message: "ports must be unique", path: ["ports"] }),
  );
export type WorkloadIR = z.infer<typeof WorkloadIR>;

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
  /** @default "code:execute" */
  intent?: string;
  /** @default { kind: "session" } */
  command?: WorkloadCommand;
  /** Used when the request has no ttlSeconds. @default 3600 */
  defaultTtlSeconds?: number;
}

/**
 * Maps today's `CreateSandboxRequest` plus the resolved image digest into a validated IR.
 * Throws InvalidArgumentError naming the field when the result is not a valid IR.
 *
 * @example
 * const ir = irFromCreateRequest({ image: "debian:bookworm", ttlSeconds: 600 }, { imageDigest });
 */
export function irFromCreateRequest(request: CreateSandboxRequest, options: IrFromCreateOptions): WorkloadIR {
  const env = request.env ?? {};
  const resources: IrResources = { ...request.resources };
  if (request.workMiB !== undefined) resources.workMiB = request.workMiB;
  return parseWorkloadIR({
    version: IR_VERSION,
    imageDigest: options.imageDigest,
    command: options.command ?? { kind: "session" },
    envNames: Object.keys(env).sort(),
    envSha256: envSha256(env),
    resources,
    network: request.network ?? { version: 1, default: "deny", rules: [] },
    secrets: Object.entries(request.secrets ?? {})
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, ref]) => ({ name, ref })),
    ttlSeconds: request.ttlSeconds ?? options.defaultTtlSeconds ?? 3600,
    ports: request.ports ?? [],
    requiredTier: options.requiredTier ?? (request.backend === "vm" ? "vm-emulated" : "container"),
    intent: options.intent ?? "code:execute",
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
