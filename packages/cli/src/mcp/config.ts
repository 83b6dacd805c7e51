/**
 * The operator's MCP config: the most a model may get through `mvmctl mcp` (which images, which
 * egress rules, which secrets, how long, how much output). Tool arguments are checked against it
 * by `narrowCreate`: they can choose less, never more.
 */
import { readFile } from "node:fs/promises";
import { z } from "zod";
import {
  BackendName,
  ImageRefSchema,
  InvalidArgumentError,
  NetworkPolicySchema,
  PolicyDeniedError,
  Resources,
  SecretRefSchema,
  canonicalJson,
  parseJsonStrict,
  type CreateSandboxRequest,
  type NetworkPolicyJson,
  type NetworkRule,
  type SecretRefJson,
} from "@mvm/protocol";

/** Largest config file read, in bytes. */
export const MAX_MCP_CONFIG_BYTES = 256 * 1024;
/** The output budget when the config names none, in bytes per tool answer. */
export const DEFAULT_OUTPUT_BUDGET_BYTES = 16 * 1024;
/** Label that marks the sandboxes the MCP server made; only those are visible to a model. */
export const MCP_LABEL = "mvm-mcp";

const EnvName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, { message: "an environment variable name" });

export const McpConfigSchema = z.strictObject({
  /** Images a model may start; the first is the default. */
  images: z.array(ImageRefSchema).min(1).max(64),
  /** The most egress a sandbox may get. @default deny everything */
  network: NetworkPolicySchema.optional(),
  /** Secrets a model may ask for, by environment variable name. @default none */
  secrets: z.record(EnvName, SecretRefSchema).optional(),
  /** Backend of every sandbox. @default the engine's choice */
  backend: BackendName.optional(),
  /** Accept the container tier for creates that name no backend. @default false */
  acknowledgeContainerTier: z.boolean().optional(),
  /** Resources of every sandbox. @default the engine's */
  resources: Resources.optional(),
  /** TTL of a sandbox a model creates, in seconds: its default and the most it may ask for. */
  ttlSeconds: z.strictObject({ default: z.number().int().min(1).max(7 * 24 * 3600), max: z.number().int().min(1).max(7 * 24 * 3600) }).optional(),
  /** Bytes of command output or file text in one tool answer; a model may ask for less. @default 16384 */
  outputBudgetBytes: z.number().int().min(256).max(16 * 1024 * 1024).optional(),
  /** Most sandboxes made through MCP alive at once (all sessions). @default 8 */
  maxSandboxes: z.number().int().min(1).max(1024).optional(),
  /** Whether a model may keep a sandbox past its MCP session. @default true */
  allowKeep: z.boolean().optional(),
  /** Longest a `run_code` or `exec` may take, in seconds. @default 300 */
  maxCommandSeconds: z.number().int().min(1).max(24 * 3600).optional(),
});
export type McpConfigJson = z.infer<typeof McpConfigSchema>;

/** The config with every default filled in. */
export interface McpConfig {
  readonly images: readonly string[];
  readonly network: NetworkPolicyJson;
  readonly secrets: Readonly<Record<string, SecretRefJson>>;
  readonly backend: "namespace" | "vm" | undefined;
  readonly acknowledgeContainerTier: boolean;
  readonly resources: CreateSandboxRequest["resources"];
  readonly ttlSeconds: { readonly default: number; readonly max: number };
  readonly outputBudgetBytes: number;
  readonly maxSandboxes: number;
  readonly allowKeep: boolean;
  readonly maxCommandSeconds: number;
}

/** Validates a parsed config and fills its defaults; throws InvalidArgumentError naming the field. */
export function mcpConfigFrom(value: unknown): McpConfig {
  const parsed = McpConfigSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.join(".") : "config";
    throw new InvalidArgumentError(`Invalid MCP config field "${where}": ${issue?.message ?? "invalid"}`, { cause: parsed.error });
  }
  const c = parsed.data;
  const ttl = c.ttlSeconds ?? { default: 600, max: 3600 };
  if (ttl.default > ttl.max) throw new InvalidArgumentError(`Invalid MCP config field "ttlSeconds": default ${ttl.default} is over max ${ttl.max}`);
  return {
    images: c.images,
    network: c.network ?? { version: 1, default: "deny", rules: [] },
    secrets: c.secrets ?? {},
    backend: c.backend,
    acknowledgeContainerTier: c.acknowledgeContainerTier ?? false,
    resources: c.resources,
    ttlSeconds: ttl,
    outputBudgetBytes: c.outputBudgetBytes ?? DEFAULT_OUTPUT_BUDGET_BYTES,
    maxSandboxes: c.maxSandboxes ?? 8,
    allowKeep: c.allowKeep ?? true,
    maxCommandSeconds: c.maxCommandSeconds ?? 300,
  };
}

/** Reads and validates the config file at `path` (strict JSON, at most MAX_MCP_CONFIG_BYTES). */
export async function loadMcpConfig(path: string): Promise<McpConfig> {
  let text: Buffer;
  try {
    text = await readFile(path);
  } catch (err) {
    throw new InvalidArgumentError(`Cannot read MCP config "${path}": ${(err as Error).message}`, { cause: err });
  }
  if (text.byteLength > MAX_MCP_CONFIG_BYTES) throw new InvalidArgumentError(`MCP config "${path}" is over ${MAX_MCP_CONFIG_BYTES} bytes`);
  let json: unknown;
  try {
    json = parseJsonStrict(text.toString("utf8"));
  } catch (err) {
    throw new InvalidArgumentError(`MCP config "${path}" is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return mcpConfigFrom(json);
}

/** What a model asked for in `create_sandbox`, already schema-checked. */
export interface CreateAsk {
  image?: string | undefined;
  /** Rules wanted, each one of the config's; absent: all of the config's. */
  network?: readonly NetworkRule[] | undefined;
  /** Secret names wanted, each one of the config's; absent: none. */
  secrets?: readonly string[] | undefined;
  ttlSeconds?: number | undefined;
}

/**
 * The create request for `ask` under `config`. Anything outside the config is refused with
 * PolicyDeniedError naming it: an image not listed, a rule the config does not hold, a secret it
 * does not name, a TTL over its max.
 */
export function narrowCreate(config: McpConfig, ask: CreateAsk): CreateSandboxRequest {
  const image = ask.image ?? config.images[0]!;
  if (!config.images.includes(image)) throw new PolicyDeniedError(`Image "${image}" is not allowed by the MCP config: allowed are ${config.images.map((i) => `"${i}"`).join(", ")}`);
  const allowed = new Set(config.network.rules.map((r) => canonicalJson(r)));
  const rules = ask.network ?? config.network.rules;
  for (const rule of rules) {
    if (!allowed.has(canonicalJson(rule))) throw new PolicyDeniedError(`Network rule ${canonicalJson(rule)} is not allowed by the MCP config: a sandbox may get only rules the config lists`);
  }
  const secrets: Record<string, SecretRefJson> = {};
  for (const name of ask.secrets ?? []) {
    const ref = Object.hasOwn(config.secrets, name) ? config.secrets[name] : undefined;
    if (ref === undefined) throw new PolicyDeniedError(`Secret "${name}" is not allowed by the MCP config`);
    secrets[name] = ref;
  }
  const ttlSeconds = ask.ttlSeconds ?? config.ttlSeconds.default;
  if (ttlSeconds > config.ttlSeconds.max) throw new PolicyDeniedError(`TTL ${ttlSeconds} s is over the MCP config's max of ${config.ttlSeconds.max} s`);
  const request: CreateSandboxRequest = {
    image,
    ttlSeconds,
    network: { version: 1, default: "deny", rules: [...rules] },
    labels: { [MCP_LABEL]: "1" },
  };
  if (Object.keys(secrets).length > 0) request.secrets = secrets;
  if (config.backend !== undefined) request.backend = config.backend;
  if (config.acknowledgeContainerTier) request.acknowledgeContainerTier = true;
  if (config.resources !== undefined) request.resources = config.resources;
  return request;
}
