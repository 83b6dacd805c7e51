/**
 * Workload IR v1 and ExecutionPlan v1: the data every sandbox is admitted through. Schemas only
 * (no crypto, no I/O): the engine signs and admits plans, the SDK and CLI carry them for review.
 *
 * The IR says *what* runs: image digest, command, environment (names plus a digest of the whole
 * map, never values), resources, network policy, secret references and their posture, TTL,
 * ports, the tier it needs and its intent. The plan adds *under which rules*: an admission
 * profile, a validity window and a one-time nonce. `planId` is the sha256 of the canonical JSON
 * of the plan without `planId`.
 */
import { z } from "zod";
import { MAX_PUBLISHED_PORTS, PortSpec, Sha256DigestSchema, Tier, type BackendName } from "./api-base.js";
import type { CreateSandboxRequest } from "./api.js";
import { MAX_ARGUMENT_CHARS, MAX_ARGV_ITEMS, MAX_ENV_VARS, MAX_EXEC_COMMAND_BYTES, MAX_SECRETS_PER_SPEC, jsonBytes } from "./limits.js";
import { Argv, EnvName } from "./messages.js";
import { NetworkPolicySchema } from "./network-policy.js";
import { SecretRefSchema } from "./secret-ref.js";

export const IR_VERSION = 1;
export const PLAN_VERSION = 1;

/** `domain:verb`, e.g. `code:execute`. Lowercase letters, digits and `-`. */
export const IntentSchema = z
  .string()
  .max(64)
  .regex(/^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$/, { message: "must look like \"domain:verb\", e.g. \"code:execute\"" });
export type Intent = z.infer<typeof IntentSchema>;

/** The intent of a workload that names none. */
export const DEFAULT_INTENT = "code:execute";

/** A command fits an exec: its argv takes at most MAX_EXEC_COMMAND_BYTES as JSON. */
const fits = (args: readonly string[]): boolean => jsonBytes(args) <= MAX_EXEC_COMMAND_BYTES;
const fitsMessage = `must take at most ${MAX_EXEC_COMMAND_BYTES} bytes as JSON`;

/**
 * What the sandbox runs. `argv`: this command, and no other, may be executed in it. `entrypoint`:
 * the image's entrypoint with these arguments. `session`: only the guest agent boots; commands
 * arrive later over exec, under the plan's intent.
 */
export const WorkloadCommand = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("argv"), argv: Argv }).refine((c) => fits(c.argv), { message: fitsMessage, path: ["argv"] }),
  z
    .strictObject({ kind: z.literal("entrypoint"), args: z.array(z.string().max(MAX_ARGUMENT_CHARS)).max(MAX_ARGV_ITEMS) })
    .refine((c) => fits(c.args), { message: fitsMessage, path: ["args"] }),
  z.strictObject({ kind: z.literal("session") }),
]);
export type WorkloadCommand = z.infer<typeof WorkloadCommand>;

/**
 * The function a sandbox serves (`fn(...)`, docs/FUNCTIONS.md): its id, the call wrapper's payload
 * format and the limits the wrapper applies. Recorded in the IR so a plan says which function
 * runs and under which wrapper rules.
 */
export const FunctionSpec = z.strictObject({
  id: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/),
  format: z.enum(["json", "msgpack"]),
  limits: z.strictObject({
    maxInputBytes: z.number().int().min(1).max(256 * 1024 * 1024),
    maxOutputBytes: z.number().int().min(1).max(256 * 1024 * 1024),
    maxDepth: z.number().int().min(2).max(512),
    invokeTimeoutMs: z.number().int().min(1).max(24 * 3600_000),
  }),
});
export type FunctionSpec = z.infer<typeof FunctionSpec>;

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
    envNames: z.array(EnvName).max(MAX_ENV_VARS),
    /** `sha256:` of the canonical JSON of the whole environment map (names and values). */
    envSha256: Sha256DigestSchema,
    resources: IrResources,
    /** The egress policy, exactly as a create request carries it. */
    network: NetworkPolicySchema,
    secrets: z.array(SecretBinding).max(MAX_SECRETS_PER_SPEC),
    ttlSeconds: z.number().int().min(1).max(7 * 24 * 3600),
    /** `"pause"`: paused instead of killed at the TTL (then killed after MAX_PAUSED_SECONDS). Absent: killed at the TTL. */
    onTtl: z.literal("pause").optional(),
    ports: z.array(PortSpec).max(MAX_PUBLISHED_PORTS),
    requiredTier: Tier,
    intent: IntentSchema,
    /**
     * The snapshot the workload starts from: the sha256 of its manifest, which names every chunk of
     * its content. Absent: a fresh image.
     */
    fromSnapshot: Sha256DigestSchema.optional(),
    /** The function the sandbox serves, when it is a function's sandbox. */
    function: FunctionSpec.optional(),
    /**
     * The image's build provenance, when it has a record signed by this host: the sha256 of the
     * record's canonical JSON (see docs/BUILDS.md). Absent: an imported image, or no valid record.
     */
    imageProvenance: Sha256DigestSchema.optional(),
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

/** A named policy, optionally pinned to the digest of its content: `egress-default@sha256:…`. */
export const PolicyRef = z
  .string()
  .max(200)
  .regex(/^[a-z0-9][a-z0-9._-]{0,63}(@sha256:[0-9a-f]{64})?$/, { message: "must be a policy name, optionally @sha256:<hex>" });

/**
 * Under which rules the IR runs. `secretRelease` is the ceiling for the IR's secret postures:
 * `none` allows no secrets, `mediated` only mediated ones, `env` both.
 */
export const AdmissionProfile = z.strictObject({
  intent: IntentSchema,
  seccompTier: z.enum(["default", "strict"]),
  networkPolicyRef: PolicyRef.optional(),
  filesystemPolicyRef: PolicyRef.optional(),
  egressPolicyRef: PolicyRef.optional(),
  toolPolicyRef: PolicyRef.optional(),
  secretRelease: z.enum(["none", "mediated", "env"]),
  auditLabels: z
    .record(z.string().min(1).max(64).regex(/^[a-z0-9][a-z0-9._/-]*$/), z.string().max(256))
    .check(z.refine((l) => Object.keys(l).length <= 32, { message: "at most 32 labels" })),
});
export type AdmissionProfile = z.infer<typeof AdmissionProfile>;

export const NonceSchema = z.string().regex(/^[0-9a-f]{32}$/, { message: "must be 128 bits as 32 lowercase hex digits" });

export const UnsignedPlanFields = {
  version: z.literal(PLAN_VERSION),
  ir: WorkloadIR,
  profile: AdmissionProfile,
  /** Start of validity, milliseconds since the Unix epoch. */
  notBeforeMs: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  /** End of validity (inclusive), milliseconds since the Unix epoch. */
  notAfterMs: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  nonce: NonceSchema,
};

type PlanRules = { notBeforeMs: number; notAfterMs: number; ir: WorkloadIR; profile: AdmissionProfile };
export const PLAN_RULES = [
  z.refine<PlanRules>((p) => p.notAfterMs > p.notBeforeMs, { message: "notAfterMs must be after notBeforeMs", path: ["notAfterMs"] }),
  z.refine<PlanRules>((p) => p.profile.intent === p.ir.intent, { message: "profile intent must equal the IR intent", path: ["profile", "intent"] }),
  z.refine<PlanRules>((p) => secretsWithin(p.ir.secrets, p.profile.secretRelease), {
    message: "a secret posture exceeds the profile's secretRelease",
    path: ["profile", "secretRelease"],
  }),
];

export const ExecutionPlan = z.strictObject({ ...UnsignedPlanFields, planId: Sha256DigestSchema }).check(...PLAN_RULES);
export type ExecutionPlan = z.infer<typeof ExecutionPlan>;
export type UnsignedPlan = Omit<ExecutionPlan, "planId">;

export const PlanSignature = z.strictObject({
  alg: z.literal("ed25519"),
  /** `sha256:` of the signer's public key in SPKI DER form. */
  keyId: Sha256DigestSchema,
  /** 64 bytes, lowercase hex. */
  value: z.string().regex(/^[0-9a-f]{128}$/),
});
export const SignedPlan = z.strictObject({ plan: ExecutionPlan, signature: PlanSignature });
export type SignedPlan = z.infer<typeof SignedPlan>;

function secretsWithin(secrets: readonly { ref: { posture: "mediated" | "env" } }[], release: "none" | "mediated" | "env"): boolean {
  if (release === "env") return true;
  if (release === "none") return secrets.length === 0;
  return secrets.every((s) => s.ref.posture === "mediated");
}

/** The backend that provides a tier. */
export function backendForTier(tier: Tier): BackendName {
  return tier === "container" ? "namespace" : "vm";
}

/**
 * The create request a plan was made for, rebuilt from its IR: what a caller sends with the plan
 * to have it admitted. Environment values are not in a plan (only their digest): pass them as
 * `env`; the engine refuses the plan when their digest differs.
 *
 * @example
 * const sb = await engine.createSandbox(requestFromPlan(signed, { env: { MODE: "ci" } }));
 */
export function requestFromPlan(signed: SignedPlan, options: { env?: Record<string, string> } = {}): CreateSandboxRequest {
  const { ir } = signed.plan;
  const { workMiB, ...resources } = ir.resources;
  const request: CreateSandboxRequest = {
    image: ir.imageDigest,
    backend: backendForTier(ir.requiredTier),
    ttlSeconds: ir.ttlSeconds,
    resources,
    network: ir.network,
    ports: ir.ports,
    intent: ir.intent,
    plan: signed,
  };
  if (workMiB !== undefined) request.workMiB = workMiB;
  if (ir.onTtl !== undefined) request.onTtl = ir.onTtl;
  if (options.env !== undefined) request.env = options.env;
  if (ir.secrets.length > 0) request.secrets = Object.fromEntries(ir.secrets.map((s) => [s.name, s.ref]));
  if (ir.command.kind === "argv") request.command = ir.command.argv;
  if (ir.fromSnapshot !== undefined) request.fromSnapshot = ir.fromSnapshot;
  if (ir.function !== undefined) request.function = ir.function;
  return request;
}
