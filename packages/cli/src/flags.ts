/**
 * Flag tables shared by several commands, and the converters from flag strings to the typed
 * values of the engine API. Every converter throws UsageError naming the flag and the value.
 */
import { CreateSandboxRequest, ExecApiRequest, Resources, SandboxIdSchema, SnapshotRefSchema, isSandboxPath } from "@mvm/protocol";
import type { z } from "zod";
import type { FlagSpec, RawArgs } from "./command.js";
import { UsageError } from "./usage-error.js";
import { NETWORK_FLAGS, policyFrom, portsFrom, secretsFrom } from "./network-flags.js";

/** Flags of every command. */
export const GLOBAL_FLAGS = {
  json: { type: "boolean", description: "Print machine-readable JSON on stdout" },
  socket: { type: "string", valueName: "PATH", description: "Daemon socket (default: $MVM_DAEMON_SOCKET, else the standard path)" },
  embedded: { type: "boolean", description: "Run the engine inside mvmctl instead of using a daemon" },
  help: { type: "boolean", short: "h", description: "Show help" },
} as const satisfies Record<string, FlagSpec>;

/** The range of a resource limit, as the protocol's schema defines it. */
function schemaRange(field: "memoryMiB" | "pids" | "cpus", unit: string): { min: number; max: number; unit: string } {
  const n = Resources.shape[field].unwrap();
  return { min: n.minValue ?? 0, max: n.maxValue ?? Number.MAX_SAFE_INTEGER, unit };
}

/** The limits a sandbox's resources may take (from the protocol's schema), in each flag's unit. */
export const RESOURCE_RANGES = {
  memoryMiB: schemaRange("memoryMiB", "MiB"),
  pids: schemaRange("pids", "processes and threads"),
  cpus: schemaRange("cpus", "cores"),
} as const;

/** Flags that shape a new sandbox. */
export const SANDBOX_FLAGS = {
  image: { type: "string", valueName: "REF", description: "Image reference (default: the engine's default image)" },
  memory: { type: "string", valueName: "MiB", description: `Memory limit in MiB, ${RESOURCE_RANGES.memoryMiB.min} to ${RESOURCE_RANGES.memoryMiB.max}` },
  pids: { type: "string", valueName: "N", description: `Maximum number of processes and threads, ${RESOURCE_RANGES.pids.min} to ${RESOURCE_RANGES.pids.max}` },
  cpus: { type: "string", valueName: "N", description: `CPU quota in cores, may be fractional (0.5), ${RESOURCE_RANGES.cpus.min} to ${RESOURCE_RANGES.cpus.max}` },
  ttl: { type: "string", valueName: "SECONDS", description: "Lifetime; the engine kills the sandbox after it" },
  "on-ttl": { type: "string", valueName: "ACTION", description: "At the end of the TTL: kill (default) or pause (state kept, killed after 7 days paused)" },
  backend: { type: "string", valueName: "NAME", description: "Backend: namespace or vm (default: the engine's MVM_DEFAULT_BACKEND, else its strongest usable tier)" },
  "minimum-tier": {
    type: "string",
    valueName: "TIER",
    description: "Refuse a weaker tier: container, vm-emulated or vm-hardware (default: $MVM_MINIMUM_TIER)",
  },
  "from-snapshot": {
    type: "string",
    valueName: "REF",
    description: "Start from a snapshot (id or digest) instead of a fresh image; its image and backend are used",
  },
  ...NETWORK_FLAGS,
} as const satisfies Record<string, FlagSpec>;

/** Flags of a command run inside a sandbox. */
export const EXEC_FLAGS = {
  env: { type: "string", multiple: true, valueName: "K=V", description: "Set an environment variable (repeatable)" },
  cwd: { type: "string", valueName: "DIR", description: "Working directory inside the sandbox (absolute)" },
  timeout: { type: "string", valueName: "SECONDS", description: "Kill the command after this long; exit code 124" },
} as const satisfies Record<string, FlagSpec>;

/** `-i` and `-t` of `exec` and `run`, as `docker exec -it` has them (docs/TERMINALS.md). */
export const TERMINAL_FLAGS = {
  interactive: { type: "boolean", short: "i", description: "Forward stdin to the command, even from a terminal" },
  tty: { type: "boolean", short: "t", description: "Run the command on a terminal in the sandbox (with -i: keys, Ctrl-C and window size pass through)" },
} as const satisfies Record<string, FlagSpec>;

/** The string value of a single-valued flag, or undefined when it was not given. */
export function stringFlag(raw: RawArgs, name: string): string | undefined {
  const v = raw.values[name];
  return typeof v === "string" ? v : undefined;
}

/** The values of a repeatable flag, in order. */
export function listFlag(raw: RawArgs, name: string): readonly string[] {
  const v = raw.values[name];
  return Array.isArray(v) ? (v as readonly string[]) : [];
}

export function booleanFlag(raw: RawArgs, name: string): boolean {
  return raw.values[name] === true;
}

function badValue(flag: string, value: string, why: string): UsageError {
  return new UsageError(`Invalid value "${value}" for --${flag}: ${why}`);
}

/** `value` when it lies in `range`, else a UsageError saying the range in the flag's unit. */
function inRange(raw: RawArgs, flag: string, value: number | undefined, range: { min: number; max: number; unit: string }): number | undefined {
  if (value === undefined || (value >= range.min && value <= range.max)) return value;
  const given = stringFlag(raw, flag) ?? String(value);
  throw badValue(flag, given, `--${flag} is in ${range.unit}, from ${range.min} to ${range.max}${value < range.min ? ` (${given} is below the minimum)` : ""}`);
}

/** A whole decimal number such as "512"; undefined when the flag is absent. */
export function integerFlag(raw: RawArgs, name: string): number | undefined {
  const v = stringFlag(raw, name);
  if (v === undefined) return undefined;
  if (!/^[0-9]{1,15}$/.test(v)) throw badValue(name, v, "expected a whole number");
  return Number(v);
}

/** A non-negative decimal such as "0.5" or "30"; undefined when the flag is absent. */
export function decimalFlag(raw: RawArgs, name: string): number | undefined {
  const v = stringFlag(raw, name);
  if (v === undefined) return undefined;
  if (!/^[0-9]{1,15}(\.[0-9]{1,9})?$/.test(v)) throw badValue(name, v, "expected a number such as 2 or 0.5");
  return Number(v);
}

/** `K=V` pairs of a repeatable flag; a later pair overrides an earlier one with the same key. */
export function keyValueFlag(raw: RawArgs, name: string): Record<string, string> | undefined {
  const list = listFlag(raw, name);
  if (list.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw badValue(name, item, "expected KEY=VALUE");
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

/** A snapshot reference (positional or flag value), checked for the `snap_…` or `sha256:…` form. */
export function snapshotRefArg(value: string): string {
  if (!SnapshotRefSchema.safeParse(value).success) {
    throw new UsageError(`Invalid snapshot reference "${value}"`, {
      hint: 'A snapshot is named by its id ("snap_" and 20 letters and digits) or its digest ("sha256:" and 64 hex digits); "mvmctl snapshot ls" lists them',
    });
  }
  return value;
}

/** A sandbox id positional, checked for the `sbx_…` form. */
export function sandboxIdArg(value: string): string {
  if (!SandboxIdSchema.safeParse(value).success) {
    throw new UsageError(`Invalid sandbox id "${value}"`, {
      hint: 'A sandbox id looks like "sbx_" followed by 20 letters and digits; "mvmctl ls" lists them',
    });
  }
  return value;
}

/** Turns the first issue of a failed schema check into a UsageError naming the flag behind it. */
function usageFromIssues(error: z.ZodError, flagOf: (path: readonly PropertyKey[]) => string, input: unknown): UsageError {
  const issue = error.issues[0];
  const path = issue?.path ?? [];
  let value: unknown = input;
  for (const key of path) value = value !== null && typeof value === "object" ? (value as Record<PropertyKey, unknown>)[key] : undefined;
  // Inside a record (--env, --label) the offending entry is named by its key.
  const inRecord = path.length >= 2 && path[0] !== "resources";
  const shown = inRecord ? ` "${String(path[1])}"` : typeof value === "string" || typeof value === "number" ? ` "${String(value)}"` : "";
  return new UsageError(`Invalid value${shown} for ${flagOf(path)}: ${issue?.message ?? "invalid"}`, { cause: error });
}

const CREATE_FLAG_OF: Record<string, string> = {
  image: "--image",
  backend: "--backend",
  minimumTier: "--minimum-tier",
  ttlSeconds: "--ttl",
  onTtl: "--on-ttl",
  memoryMiB: "--memory",
  pids: "--pids",
  cpus: "--cpus",
  env: "--env",
  labels: "--label",
  network: "--allow-host/--allow-cidr",
  secrets: "--secret",
  ports: "--publish",
  fromSnapshot: "--from-snapshot",
};

/** The create request described by the sandbox flags (and `--label`/`--env` when the command has them). */
export function createRequestFrom(raw: RawArgs, extra: { labels?: Record<string, string> } = {}): CreateSandboxRequest {
  const resources: Record<string, number> = {};
  const memoryMiB = inRange(raw, "memory", integerFlag(raw, "memory"), RESOURCE_RANGES.memoryMiB);
  const pids = inRange(raw, "pids", integerFlag(raw, "pids"), RESOURCE_RANGES.pids);
  const cpus = inRange(raw, "cpus", decimalFlag(raw, "cpus"), RESOURCE_RANGES.cpus);
  if (memoryMiB !== undefined) resources["memoryMiB"] = memoryMiB;
  if (pids !== undefined) resources["pids"] = pids;
  if (cpus !== undefined) resources["cpus"] = cpus;
  const request: Record<string, unknown> = {};
  const image = stringFlag(raw, "image");
  const backend = stringFlag(raw, "backend");
  const ttlSeconds = integerFlag(raw, "ttl");
  const fromSnapshot = stringFlag(raw, "from-snapshot");
  if (fromSnapshot !== undefined) {
    const clash = ["image", "backend"].filter((k) => raw.values[k] !== undefined);
    if (clash.length > 0) {
      throw new UsageError(`--from-snapshot cannot be combined with ${clash.map((k) => `--${k}`).join(", ")}`, {
        hint: "A sandbox started from a snapshot has the snapshot's image and backend",
      });
    }
    request["fromSnapshot"] = snapshotRefArg(fromSnapshot);
  }
  if (image !== undefined) request["image"] = image;
  if (backend !== undefined) request["backend"] = backend;
  const minimumTier = stringFlag(raw, "minimum-tier");
  if (minimumTier !== undefined) request["minimumTier"] = minimumTier;
  if (ttlSeconds !== undefined) request["ttlSeconds"] = ttlSeconds;
  const onTtl = stringFlag(raw, "on-ttl");
  if (onTtl !== undefined) request["onTtl"] = onTtl;
  if (Object.keys(resources).length > 0) request["resources"] = resources;
  if (extra.labels !== undefined) request["labels"] = extra.labels;
  const network = policyFrom(raw);
  const secrets = secretsFrom(raw);
  const ports = portsFrom(raw);
  if (network !== undefined) request["network"] = network;
  if (secrets !== undefined) request["secrets"] = secrets;
  if (ports !== undefined) request["ports"] = ports;
  const r = CreateSandboxRequest.safeParse(request);
  if (!r.success) {
    const flagOf = (path: readonly PropertyKey[]): string =>
      CREATE_FLAG_OF[String(path[0] === "resources" ? path[1] : path[0])] ?? "the sandbox";
    throw usageFromIssues(r.error, flagOf, request);
  }
  return r.data;
}

/** Longest `--timeout` the engine accepts, in milliseconds (7 days). */
const MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000;

/** The exec request for `argv` with the exec flags. `extra` adds fields the flags do not cover. */
export function execRequestFrom(raw: RawArgs, argv: readonly string[], extra: Partial<ExecApiRequest> = {}): ExecApiRequest {
  if (argv.length === 0) {
    throw new UsageError("Missing the command to run", { hint: 'Put it after "--", e.g. "-- /bin/echo hi"' });
  }
  const request: Record<string, unknown> = { argv: [...argv], ...extra };
  const env = keyValueFlag(raw, "env");
  if (env !== undefined) {
    for (const name of Object.keys(env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw badValue("env", name, "a name is letters, digits and _, not starting with a digit");
    }
    request["env"] = env;
  }
  const cwd = stringFlag(raw, "cwd");
  if (cwd !== undefined) {
    if (!isSandboxPath(cwd)) throw badValue("cwd", cwd, "expected an absolute path without '.' or '..' segments");
    request["cwd"] = cwd;
  }
  const timeoutSeconds = decimalFlag(raw, "timeout");
  if (timeoutSeconds !== undefined) {
    const timeoutMs = Math.round(timeoutSeconds * 1000);
    const shown = stringFlag(raw, "timeout") ?? "";
    if (timeoutMs < 1) throw badValue("timeout", shown, "expected more than zero seconds");
    if (timeoutMs > MAX_TIMEOUT_MS) throw badValue("timeout", shown, `expected at most ${MAX_TIMEOUT_MS / 1000} seconds`);
    request["timeoutMs"] = timeoutMs;
  }
  const r = ExecApiRequest.safeParse(request);
  if (!r.success) {
    const flagOf = (path: readonly PropertyKey[]): string =>
      path[0] === "argv" ? "the command" : path[0] === "env" ? "--env" : path[0] === "timeoutMs" ? "--timeout" : path[0] === "cwd" ? "--cwd" : String(path[0] ?? "the command");
    throw usageFromIssues(r.error, flagOf, request);
  }
  return r.data;
}
