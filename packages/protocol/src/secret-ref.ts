/**
 * Secret references as data: where the host finds a secret's value and how the sandbox sees it.
 * A reference never carries the value itself, so specs holding refs can be logged and sent over
 * the daemon API freely.
 */
import { z } from "zod";
import { InvalidArgumentError } from "./errors.js";
import { MAX_SECRET_REF_HOSTS, MAX_SECRETS_PER_SPEC } from "./limits.js";
import { hostPatternProblem } from "./network-policy.js";

/** Valid names of secrets in the host secret store. */
export const SECRET_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,127}$/;
/** Valid environment variable names (host env sources and sandbox env names). */
export const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
/** Longest `file` source path, in characters. */
export const MAX_SECRET_FILE_PATH_CHARS = 4096;
export { MAX_SECRET_REF_HOSTS, MAX_SECRET_VALUE_BYTES, MAX_SECRETS_PER_SPEC } from "./limits.js";

/**
 * How a sandbox sees a secret:
 * - `mediated`: the sandbox gets a placeholder; the host gateway swaps in the value on the way
 *   to an allowed host, so the value never enters the sandbox.
 * - `env`: the value is put in the sandbox's environment (the workload can read and leak it).
 */
export const SecretPosture = z.enum(["mediated", "env"]);
export type SecretPosture = z.infer<typeof SecretPosture>;

/** Where the host reads a secret's value. */
export const SecretSource = z.enum(["store", "env", "file"]);
export type SecretSource = z.infer<typeof SecretSource>;

const HostPattern = z.string().superRefine((host, ctx) => {
  const problem = hostPatternProblem(host);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
});

/** Why `name` is not valid for `source`, or undefined when it is. */
function nameProblem(source: SecretSource, name: string): string | undefined {
  switch (source) {
    case "store":
      return SECRET_NAME_PATTERN.test(name) ? undefined : "must be 1 to 128 of [a-z0-9._-], starting with [a-z0-9]";
    case "env":
      return ENV_NAME_PATTERN.test(name) ? undefined : "must be an environment variable name: 1 to 128 of [A-Za-z0-9_], not starting with a digit";
    case "file":
      if (name.length < 2 || name.length > MAX_SECRET_FILE_PATH_CHARS) return `must be 2 to ${MAX_SECRET_FILE_PATH_CHARS} characters`;
      if (!name.startsWith("/")) return "must be an absolute path";
      if (name.includes("\0")) return "must not contain NUL";
      return undefined;
  }
}

export const SecretRefSchema = z
  .strictObject({
    kind: z.literal("secret-ref"),
    source: SecretSource,
    name: z.string(),
    posture: SecretPosture,
    hosts: z.array(HostPattern).max(MAX_SECRET_REF_HOSTS).optional(),
  })
  .superRefine((ref, ctx) => {
    const problem = nameProblem(ref.source, ref.name);
    if (problem !== undefined) ctx.addIssue({ code: "custom", path: ["name"], message: problem });
  });
export type SecretRefJson = z.infer<typeof SecretRefSchema>;

/** A sandbox env name filled from a secret. */
export const SecretEnvName = z.string().regex(ENV_NAME_PATTERN, "must be 1 to 128 of [A-Za-z0-9_], not starting with a digit");

// zod's record skips an own "__proto__" key without an issue; refuse it before the record sees it.
const NoProtoKey = z.unknown().superRefine((value, ctx) => {
  if (value !== null && typeof value === "object" && Object.hasOwn(value, "__proto__")) {
    ctx.addIssue({ code: "custom", path: ["__proto__"], message: "must not be __proto__" });
  }
});

/** Sandbox env name -> the secret that fills it. At most 64 entries. */
export const SecretsSpecSchema = NoProtoKey.pipe(
  z
    .record(SecretEnvName, SecretRefSchema)
    .refine((spec) => Object.keys(spec).length <= MAX_SECRETS_PER_SPEC, `must hold at most ${MAX_SECRETS_PER_SPEC} secrets`),
);
export type SecretsSpec = z.infer<typeof SecretsSpecSchema>;

/** Options shared by the SecretRef builders. */
export interface SecretRefOptions {
  /** @default "mediated" */
  readonly posture?: SecretPosture;
  /** Host patterns (DNS names or `*.suffix`) the secret may be sent to. */
  readonly hosts?: readonly string[];
}

function fieldPath(root: string, path: readonly PropertyKey[]): string {
  return [root, ...path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`))].join("");
}

function parseOrThrow<T>(schema: z.ZodType<T>, value: unknown, what: string, root: string): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = fieldPath(root, issue?.path ?? []);
  throw new InvalidArgumentError(`Invalid ${what} field "${field}": ${issue?.message ?? "invalid"}`, { cause: result.error });
}

/**
 * An immutable, validated reference to a secret held by the host.
 *
 * @example
 * const ref = SecretRef.from("openai-key", { hosts: ["api.openai.com"] });
 * const pat = SecretRef.fromEnv("GITHUB_TOKEN", { hosts: ["api.github.com"] });
 */
export class SecretRef {
  readonly #json: SecretRefJson;

  private constructor(json: SecretRefJson) {
    if (json.hosts !== undefined) Object.freeze(json.hosts);
    this.#json = Object.freeze(json);
  }

  /** A secret from the host secret store (`mvmctl secret set <name>`). */
  static from(name: string, options: SecretRefOptions = {}): SecretRef {
    return SecretRef.#build("store", name, options);
  }

  /** A secret read from the host process's environment variable `variable`. */
  static fromEnv(variable: string, options: SecretRefOptions = {}): SecretRef {
    return SecretRef.#build("env", variable, options);
  }

  /** A secret read from the host file at absolute `path` (one trailing newline is dropped). */
  static fromFile(path: string, options: SecretRefOptions = {}): SecretRef {
    return SecretRef.#build("file", path, options);
  }

  /** Validate JSON; throws InvalidArgumentError naming the first bad field. */
  static fromJSON(value: unknown): SecretRef {
    return new SecretRef(parseOrThrow(SecretRefSchema, value, "secret ref", "secretRef"));
  }

  get source(): SecretSource {
    return this.#json.source;
  }

  get name(): string {
    return this.#json.name;
  }

  get posture(): SecretPosture {
    return this.#json.posture;
  }

  /** Host patterns, or undefined when the reference defers to the store entry's hosts. */
  get hosts(): readonly string[] | undefined {
    return this.#json.hosts;
  }

  /** The JSON form: a fresh, mutable copy. */
  toJSON(): SecretRefJson {
    return structuredClone(this.#json);
  }

  static #build(source: SecretSource, name: string, options: SecretRefOptions): SecretRef {
    const json: Record<string, unknown> = { kind: "secret-ref", source, name, posture: options.posture ?? "mediated" };
    if (options.hosts !== undefined) json["hosts"] = [...options.hosts];
    return SecretRef.fromJSON(json);
  }
}

/** Validate a secrets spec (env name -> SecretRef JSON); throws InvalidArgumentError naming the field. */
export function parseSecretsSpec(value: unknown): SecretsSpec {
  return parseOrThrow(SecretsSpecSchema, value, "secrets", "secrets");
}
