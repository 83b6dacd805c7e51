/**
 * The engine API: what the SDK asks of the engine, in the daemon's HTTP+JSON form and in the
 * embedded transport alike. Both sides validate with these schemas.
 */
import { z } from "zod";
import { ERROR_CODES, type ErrorCode } from "./errors.js";
import { Argv, Env, FileInfo, KillSignal, MAX_PTY_CELLS, ProcessInfo, SandboxPath } from "./messages.js";
import { NetworkPolicySchema, PortSchema } from "./network-policy.js";
import { SecretPosture, SecretsSpecSchema } from "./secret-ref.js";
import { BackendName, MAX_PUBLISHED_PORTS, PortSpec, Sha256DigestSchema, Tier } from "./api-base.js";
import { FunctionSpec, IntentSchema, SignedPlan } from "./plan.js";
import { SnapshotRefSchema } from "./snapshot-api.js";
import {
  MAX_EXEC_COMMAND_BYTES,
  MAX_EXEC_STDIN_BASE64_CHARS,
  MAX_LABEL_KEY_CHARS,
  MAX_LABEL_VALUE_CHARS,
  MAX_LABELS,
  MAX_LABELS_BYTES,
  MAX_PATH_LENGTH,
  MAX_SANDBOX_ENV_BYTES,
  jsonBytes,
} from "./limits.js";

export { BackendName, MAX_PUBLISHED_PORTS, PortSpec, Sha256DigestSchema, Tier } from "./api-base.js";
export type { Sha256Digest } from "./api-base.js";

export const API_VERSION = "v1";

/** `sbx_` + 20 lowercase base32 characters. */
export const SandboxIdSchema = z.string().regex(/^sbx_[a-z2-7]{20}$/);
export type SandboxId = string & { readonly __brand: "SandboxId" };


/** Image reference: `debian:<suite>[+pkg[+pkg...]]`, `sha256:<hex>`, or a local name. */
export const ImageRefSchema = z
  .string()
  .min(1)
  .max(512)
  .regex(/^[a-z0-9][a-z0-9._:+\-/]*(?:@sha256:[0-9a-f]{64})?$/, { message: "lowercase letters, digits and . _ : + - / only, optionally ending in @sha256:<hex>" });



export const Resources = z.strictObject({
  /**
   * Memory limit in MiB for every process of the sandbox, the agent included (~50 MiB). A full
   * /work is ENOSPC for its writer, never an OOM kill: on the namespace backend /work, /tmp and
   * /dev/shm are tmpfs mounts charged to the sandbox's memory cgroup, whose limit is this plus
   * their size caps; on the vm backend /work is a disk. At least 128.
   */
  memoryMiB: z.number().int().min(128).max(1024 * 1024).optional(),
  /** Maximum number of processes and threads. */
  pids: z.number().int().min(8).max(1_000_000).optional(),
  /** CPU quota in cores (may be fractional, e.g. 0.5). */
  cpus: z.number().min(0.01).max(1024).optional(),
});
export type Resources = z.infer<typeof Resources>;


/** The working directory of an exec that names none. */
export const DEFAULT_EXEC_CWD = "/work";

/**
 * UTF-8 bytes of an exec's `{ argv, env, cwd }` as JSON: its share of the agent's control frame
 * (see limits.ts). `cwd` absent counts as {@link DEFAULT_EXEC_CWD}.
 */
export function execCommandBytes(argv: readonly string[], env: Readonly<Record<string, string>> | undefined, cwd: string | undefined): number {
  return jsonBytes({ argv, env: env ?? {}, cwd: cwd ?? DEFAULT_EXEC_CWD });
}

function execCommandIssue(bytes: number): string {
  return `argv, env and cwd take ${bytes} bytes as JSON, more than the limit of ${MAX_EXEC_COMMAND_BYTES} bytes`;
}

/** Sandbox labels: at most MAX_LABELS, MAX_LABELS_BYTES as JSON (the count is checked before the entries). */
export const Labels = z
  .unknown()
  .superRefine((value, ctx) => {
    if (value !== null && typeof value === "object" && Object.keys(value).length > MAX_LABELS) {
      ctx.addIssue({ code: "custom", message: `at most ${MAX_LABELS} labels` });
    }
  })
  .pipe(
    z
      .record(z.string().max(MAX_LABEL_KEY_CHARS), z.string().max(MAX_LABEL_VALUE_CHARS))
      .refine((labels) => jsonBytes(labels) <= MAX_LABELS_BYTES, { message: `at most ${MAX_LABELS_BYTES} bytes as JSON` }),
  );

/** Warnings about a request (e.g. an argument that looks like a secret); never contain values. */
export const Warnings = z.array(z.string().max(512)).max(32);

export const CreateSandboxRequest = z.strictObject({
  image: ImageRefSchema.optional(),
  backend: BackendName.optional(),
  ttlSeconds: z.number().int().min(1).max(7 * 24 * 3600).optional(),
  resources: Resources.optional(),
  /** Size cap of the writable /work, in MiB. */
  workMiB: z.number().int().min(1).max(1024 * 1024).optional(),
  /** The sandbox's environment: at most MAX_SANDBOX_ENV_BYTES as JSON (secrets and egress variables included, checked at create). */
  env: z.optional(Env),
  /** At most MAX_LABELS labels, MAX_LABELS_BYTES as JSON. */
  labels: Labels.optional(),
  /** Egress policy. @default deny everything */
  network: NetworkPolicySchema.optional(),
  /** Environment variables filled from secrets on the host (see SecretRef). */
  secrets: SecretsSpecSchema.optional(),
  /** Guest ports to publish on host loopback ports; nothing else is reachable from outside. */
  ports: z.array(PortSpec).max(MAX_PUBLISHED_PORTS).optional(),
  /** What the workload is for, `domain:verb`. @default "code:execute" */
  intent: IntentSchema.optional(),
  /** The only command this sandbox may execute (its exec must fit MAX_EXEC_COMMAND_BYTES). Absent: any command (a session). */
  command: z.optional(Argv),
  /**
   * What happens when the TTL runs out: `"kill"` ends the sandbox; `"pause"` freezes it (state
   * kept, no CPU) until a resume or kill, for at most MAX_PAUSED_SECONDS. @default "kill"
   */
  onTtl: z.enum(["kill", "pause"]).optional(),
  /**
   * A signed execution plan (from `planSandbox`) to admit instead of one the engine signs itself.
   * The rest of the request must describe exactly the plan's workload (see `requestFromPlan`).
   */
  plan: SignedPlan.optional(),
  /**
   * The weakest tier the sandbox may get (container < vm-emulated < vm-hardware). A backend that
   * gives less is refused with UNSUPPORTED_CAPABILITY before anything boots; the engine's own
   * minimum (MVM_MINIMUM_TIER where it runs) applies too, the stronger of the two wins.
   */
  minimumTier: Tier.optional(),
  /**
   * The caller accepts the container tier for a create that names no backend. Without it such a
   * create that would land on the container tier is refused with UNSUPPORTED_CAPABILITY.
   */
  acknowledgeContainerTier: z.boolean().optional(),
  /** Refuse plain-text secrets in env instead of warning; the engine's own setting also applies. */
  strictSecrets: z.boolean().optional(),
  /** The function this sandbox serves (id, wrapper format, limits), recorded in its plan. */
  function: FunctionSpec.optional(),
  /**
   * Start from this snapshot (id or digest) instead of a fresh image: its files (and, on the VM
   * tier, its memory and running processes) come back. The image, backend and sizes are the
   * snapshot's; a request that names others is refused.
   */
  fromSnapshot: SnapshotRefSchema.optional(),
}).superRefine((req, ctx) => {
  if (req.env !== undefined) {
    const bytes = jsonBytes(req.env);
    if (bytes > MAX_SANDBOX_ENV_BYTES) {
      ctx.addIssue({ code: "custom", path: ["env"], message: `takes ${bytes} bytes as JSON, more than the limit of ${MAX_SANDBOX_ENV_BYTES} bytes` });
    }
  }
  if (req.command !== undefined) {
    const bytes = execCommandBytes(req.command, undefined, undefined);
    if (bytes > MAX_EXEC_COMMAND_BYTES) ctx.addIssue({ code: "custom", path: ["command"], message: execCommandIssue(bytes) });
  }
});
export type CreateSandboxRequest = z.infer<typeof CreateSandboxRequest>;

/** Body of POST /v1/plans: the create request to plan, and how long the plan may be admitted. */
export const PlanApiRequest = z.strictObject({
  request: CreateSandboxRequest,
  /** Seconds from now, 1 .. 86400. @default 3600 */
  validForSeconds: z.number().int().min(1).max(24 * 3600).optional(),
});
export type PlanApiRequest = z.infer<typeof PlanApiRequest>;

export const SandboxState = z.enum(["starting", "running", "paused", "stopped"]);
export type SandboxState = z.infer<typeof SandboxState>;

export const EndReason = z.enum(["killed", "expired", "crashed", "engine-exit"]);
export type EndReason = z.infer<typeof EndReason>;

/** `aud_<seq>_<first 16 hex digits of the entry hash>`: names one entry of the host's audit log. */
export const AuditEntryIdSchema = z.string().regex(/^aud_[1-9][0-9]{0,15}_[0-9a-f]{16}$/);

/** Where an action is recorded: the plan that admitted its sandbox and its audit log entry. */
export const AuditReceiptRef = z.strictObject({ planId: Sha256DigestSchema, auditEntryId: AuditEntryIdSchema });
export type AuditReceiptRef = z.infer<typeof AuditReceiptRef>;

export const SandboxInfo = z.strictObject({
  id: SandboxIdSchema,
  state: SandboxState,
  backend: BackendName,
  tier: Tier,
  image: z.strictObject({
    ref: z.string().max(512),
    digest: Sha256DigestSchema,
    /** For an OCI image: its manifest and config digests and the pinned reference it was pulled as. */
    oci: z
      .strictObject({ manifestDigest: Sha256DigestSchema.optional(), configDigest: Sha256DigestSchema, reference: z.string().max(1024).optional() })
      .optional(),
    /**
     * What the image's config supplied where the create did not: environment variable names, the
     * default exec working directory, the user workloads run as (never root); and, recorded, its
     * entrypoint and cmd (a create's `command` is never implied from them; `mvmctl run` uses them).
     */
    fromImage: z
      .strictObject({
        envNames: z.array(z.string().max(256)).max(4096).optional(),
        workingDir: z.string().max(1024).optional(),
        user: z.string().max(256).optional(),
        entrypoint: z.array(z.string().max(4096)).max(1024).optional(),
        cmd: z.array(z.string().max(4096)).max(1024).optional(),
      })
      .optional(),
  }),
  createdAt: z.string().max(64),
  expiresAt: z.string().max(64),
  /** Limits actually enforced; a field is absent when not limited. */
  resources: Resources,
  workMiB: z.number().int(),
  labels: z.record(z.string().max(64), z.string().max(256)),
  endReason: EndReason.optional(),
  /** What happens when the TTL runs out; absent: the sandbox is killed. */
  onTtl: z.literal("pause").optional(),
  /**
   * Present while paused: since when, who paused it, and whether its TTL runs on (`"running"`),
   * is stopped until resume (`"frozen"`, `remainingSeconds` kept) or ran out (`"spent"`, paused by
   * `onTtl: "pause"`). A frozen or spent pause ends in a kill at `killAt` (MAX_PAUSED_SECONDS).
   */
  pause: z
    .strictObject({
      since: z.string().max(64),
      by: z.enum(["caller", "ttl"]),
      ttl: z.enum(["running", "frozen", "spent"]),
      remainingSeconds: z.number().int().min(0).max(7 * 24 * 3600).optional(),
      killAt: z.string().max(64),
    })
    .optional(),
  /** The egress policy in force, how many times it was replaced, and when last. */
  network: z
    .strictObject({ policy: NetworkPolicySchema, revision: z.number().int().min(0), changedAt: z.string().max(64).optional() })
    .optional(),
  /** Which environment variables come from which secret, and how (never the values). */
  secrets: z
    .array(
      z.strictObject({
        env: z.string().max(128),
        source: z.enum(["store", "env", "file"]),
        name: z.string().max(4096),
        posture: SecretPosture,
        hosts: z.array(z.string().max(253)).max(32),
      }),
    )
    .max(64)
    .optional(),
  /** Published ports: connect to `127.0.0.1:host` on the engine's host to reach `guest`. */
  ports: z.array(z.strictObject({ guest: PortSchema, host: PortSchema })).max(MAX_PUBLISHED_PORTS).optional(),
  warnings: Warnings.optional(),
  /** The plan this sandbox was admitted through, and the audit entry of its latest lifecycle event. */
  receipt: AuditReceiptRef.optional(),
});
export type SandboxInfo = z.infer<typeof SandboxInfo>;

/** Output a process keeps for clients that attach later (`connectProcess`), in bytes, unless its exec says otherwise (256 KiB). */
export const DEFAULT_PROCESS_BACKLOG_BYTES = 256 * 1024;
/** Largest backlog an exec may ask for, in bytes (16 MiB). */
export const MAX_PROCESS_BACKLOG_BYTES = 16 * 1024 * 1024;

/** A terminal's size in character cells: an exec's `pty`, and the body of a resize. */
export const PtySizeApiRequest = z.strictObject({
  cols: z.number().int().min(1).max(MAX_PTY_CELLS),
  rows: z.number().int().min(1).max(MAX_PTY_CELLS),
});
export type PtySizeApiRequest = z.infer<typeof PtySizeApiRequest>;

export const ExecApiRequest = z.strictObject({
  argv: Argv,
  env: z.optional(Env),
  cwd: z.optional(SandboxPath),
  /** Bytes for stdin, base64. Absent: stdin is empty unless `openStdin`. */
  stdinBase64: z.string().max(MAX_EXEC_STDIN_BASE64_CHARS).optional(),
  /** Keep stdin open for later writes through the processes API. */
  openStdin: z.boolean().optional(),
  timeoutMs: z.number().int().min(0).max(7 * 24 * 3600 * 1000).optional(),
  killGraceMs: z.number().int().min(0).max(60_000).optional(),
  /** Per-stream cap on output kept and forwarded. */
  maxOutputBytes: z.number().int().min(0).max(1024 * 1024 * 1024).optional(),
  /** When true the process outlives the HTTP stream that started it. */
  background: z.boolean().optional(),
  /** Refuse plain-text secrets in argv or env instead of warning; the engine's own setting also applies. */
  strictSecrets: z.boolean().optional(),
  /**
   * Run on a pseudo-terminal of this size (docs/TERMINALS.md): stdin stays open for raw terminal
   * input, and all terminal output arrives as stdout (stderr stays empty).
   */
  pty: PtySizeApiRequest.optional(),
  /**
   * The latest output kept for clients that attach later (`connectProcess`), in bytes, stdout
   * and stderr together; 0 keeps none. @default 262144 (256 KiB)
   */
  backlogBytes: z.number().int().min(0).max(MAX_PROCESS_BACKLOG_BYTES).optional(),
}).superRefine((req, ctx) => {
  const bytes = execCommandBytes(req.argv, req.env, req.cwd);
  if (bytes > MAX_EXEC_COMMAND_BYTES) ctx.addIssue({ code: "custom", path: ["argv"], message: execCommandIssue(bytes) });
});
export type ExecApiRequest = z.infer<typeof ExecApiRequest>;

export const Receipt = z.strictObject({
  /** The plan that admitted the sandbox. */
  planId: Sha256DigestSchema.optional(),
  /** The audit entry recording how the process finished. */
  auditEntryId: AuditEntryIdSchema.optional(),
  sandboxId: SandboxIdSchema,
  proc: z.number().int().min(0),
  imageDigest: Sha256DigestSchema,
  backend: BackendName,
  startedAt: z.string().max(64),
  finishedAt: z.string().max(64),
});
export type Receipt = z.infer<typeof Receipt>;

/** How a process ended, as the engine reports it. Output is not included (it was streamed). */
export const ExitInfo = z.strictObject({
  exitCode: z.number().int().nullable(),
  signal: z.string().max(16).nullable(),
  timedOut: z.boolean(),
  /** The sandbox's memory limit was hit and the kernel killed a process while this one ran. */
  oomKilled: z.boolean(),
  durationMs: z.number().min(0),
  stdoutBytes: z.number().int().min(0),
  stderrBytes: z.number().int().min(0),
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
  receipt: Receipt,
  warnings: Warnings.optional(),
});
export type ExitInfo = z.infer<typeof ExitInfo>;

/** One line of the NDJSON stream answering an exec. */
export const ExecEvent = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("started"), proc: z.number().int().min(0), pid: z.number().int().min(1) }),
  z.strictObject({ type: z.literal("stdout"), data: z.string().max(512 * 1024) }),
  z.strictObject({ type: z.literal("stderr"), data: z.string().max(512 * 1024) }),
  z.strictObject({ type: z.literal("exit"), exit: ExitInfo }),
  z.strictObject({
    type: z.literal("error"),
    error: z.strictObject({ code: z.enum(ERROR_CODES as [ErrorCode, ...ErrorCode[]]), message: z.string().max(4096) }),
  }),
]);
export type ExecEvent = z.infer<typeof ExecEvent>;

/** Longest TTL a sandbox may have, at create or set later, in seconds (7 days). */
export const MAX_TTL_SECONDS = 7 * 24 * 3600;

/** Body of POST /v1/sandboxes/:id/timeout: the sandbox ends `ttlSeconds` from now. */
export const SetTimeoutApiRequest = z.strictObject({
  ttlSeconds: z.number().int().min(1).max(MAX_TTL_SECONDS),
});
export type SetTimeoutApiRequest = z.infer<typeof SetTimeoutApiRequest>;

/** Body of POST /v1/sandboxes/:id/pause. */
export const PauseApiRequest = z.strictObject({
  /** `"running"`: the TTL keeps counting while paused; `"frozen"`: it stops until resume. @default "running" */
  ttl: z.enum(["running", "frozen"]).optional(),
});
export type PauseApiRequest = z.infer<typeof PauseApiRequest>;

export const SignalApiRequest = z.strictObject({ signal: KillSignal });
export const ProcessList = z.strictObject({ processes: z.array(ProcessInfo).max(4096) });
export const DirListing = z.strictObject({ entries: z.array(FileInfo), truncated: z.boolean() });
export const MkdirApiRequest = z.strictObject({ path: SandboxPath, recursive: z.boolean().optional() });
export const RenameApiRequest = z.strictObject({ from: SandboxPath, to: SandboxPath });

export const ApiErrorBody = z.strictObject({
  error: z.strictObject({
    code: z.enum(ERROR_CODES as [ErrorCode, ...ErrorCode[]]),
    message: z.string().max(8192),
    hint: z.string().max(4096).optional(),
    details: z.unknown().optional(),
  }),
});

/** Body of POST /v1/images/import: a host path (absolute) and the name to give the image. */
export const ImportImageApiRequest = z.strictObject({
  path: z
    .string()
    .min(1)
    .max(MAX_PATH_LENGTH)
    .regex(/^(?:oci-layout:|docker-archive:)?\//, { message: "must be an absolute path, optionally after \"oci-layout:\" or \"docker-archive:\"" })
    .refine((p) => !p.includes("\0"), { message: "must not contain NUL" }),
  name: ImageRefSchema,
});

/** Body of POST /v1/images/build. */
export const BuildImageApiRequest = z.strictObject({ ref: ImageRefSchema, force: z.boolean().optional() });

/**
 * Body of POST /v1/images/pull: `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:<hex>` (the registry
 * host is required; no default registry is assumed).
 */
export const PullImageApiRequest = z.strictObject({
  reference: z.string().min(3).max(1024).regex(/^[A-Za-z0-9][A-Za-z0-9._:@\-/]*$/, { message: "REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:<hex>" }),
});
export type PullImageApiRequest = z.infer<typeof PullImageApiRequest>;

/** Largest JSON answer the SDK buffers from the daemon, in bytes (requests: see limits.ts). */
export const MAX_API_JSON_BYTES = 32 * 1024 * 1024;
