/**
 * Every size and count limit of the daemon API's requests, in one place. The schemas in api.ts,
 * api-base.ts, plan.ts, network-policy.ts and secret-ref.ts import these; nothing else defines
 * a request limit.
 *
 * The limits that feed an agent frame add up to less than the agent's control frame
 * ({@link MAX_CONTROL_PAYLOAD}). An exec reaches the agent as one control message carrying its
 * argv, cwd and the sandbox's environment merged with the exec's own:
 *
 * ```
 *  exec request {argv, env, cwd}      <= MAX_EXEC_COMMAND_BYTES   (32 KiB, checked by the API schema)
 *  sandbox env (request env, secrets, <= MAX_SANDBOX_ENV_BYTES    (24 KiB, checked at create)
 *    egress variables)
 *  fixed fields (t, id, op, stream ids,  EXEC_FRAME_RESERVE_BYTES  (8 KiB; they take under 300 bytes)
 *    timeouts, output cap)
 *  --------------------------------------------------------------------------------------
 *  total                              <= MAX_CONTROL_PAYLOAD      (64 KiB)
 * ```
 *
 * Sizes of strings and collections are measured as UTF-8 bytes of their JSON text (the form
 * they take in a frame), so escapes (`\u0001` is 6 bytes) are counted.
 */
import { MAX_CONTROL_PAYLOAD } from "./frame.js";

/** Largest JSON encoding of one exec's `{ argv, env, cwd }` (cwd "/work" when absent), in bytes. */
export const MAX_EXEC_COMMAND_BYTES = 32 * 1024;
/**
 * Largest JSON encoding of a sandbox's environment, in bytes: the create request's `env` alone,
 * and again at create time with the secrets' variables and the egress variables added.
 */
export const MAX_SANDBOX_ENV_BYTES = 24 * 1024;
/** What is left of the control frame for an exec's fixed fields, in bytes. */
export const EXEC_FRAME_RESERVE_BYTES = MAX_CONTROL_PAYLOAD - MAX_EXEC_COMMAND_BYTES - MAX_SANDBOX_ENV_BYTES;

/** Most environment variables in one map (a request's `env`, a plan's `envNames`). */
export const MAX_ENV_VARS = 1024;
/** Most argv items. */
export const MAX_ARGV_ITEMS = 4096;
/**
 * Longest single argument or environment value the agent accepts, in UTF-16 code units. The
 * API's byte budgets above are tighter; this is the agent's own bound.
 */
export const MAX_ARGUMENT_CHARS = 128 * 1024;

/** Most labels on one sandbox. */
export const MAX_LABELS = 64;
/** Longest label key, in UTF-16 code units. */
export const MAX_LABEL_KEY_CHARS = 64;
/** Longest label value, in UTF-16 code units. */
export const MAX_LABEL_VALUE_CHARS = 256;
/** Largest JSON encoding of a sandbox's labels, in bytes. */
export const MAX_LABELS_BYTES = 16 * 1024;

/** Most guest ports one sandbox may publish. */
export const MAX_PUBLISHED_PORTS = 16;
/** Most rules one network policy may hold (each rule is under 500 bytes of JSON). */
export const MAX_POLICY_RULES = 256;
/** Most ports one cidr rule may list. */
export const MAX_CIDR_PORTS = 64;

/** Most secrets one sandbox spec (and one plan) may reference. */
export const MAX_SECRETS_PER_SPEC = 64;
/** Most host patterns one secret reference (or stored secret) may be bound to. */
export const MAX_SECRET_REF_HOSTS = 32;
/** Largest secret value, in UTF-8 bytes. */
export const MAX_SECRET_VALUE_BYTES = 64 * 1024;

/** Longest path accepted anywhere in the protocol, in UTF-16 code units (its JSON is under 24 KiB). */
export const MAX_PATH_LENGTH = 4096;

/** Largest stdin carried inline by an exec request, base64 characters. */
export const MAX_EXEC_STDIN_BASE64_CHARS = 16 * 1024 * 1024;

/** Largest JSON body of any request but an exec, in bytes: the largest valid create (every bound reached, a plan carried) is under 5 MiB. */
export const MAX_API_REQUEST_JSON_BYTES = 8 * 1024 * 1024;
/** Largest JSON body of an exec request (its inline stdin plus the command), in bytes. */
export const MAX_EXEC_REQUEST_JSON_BYTES = MAX_EXEC_STDIN_BASE64_CHARS + 1024 * 1024;

/** Longest time a client may take to send a request's headers, in milliseconds. */
export const DAEMON_HEADERS_TIMEOUT_MS = 30_000;
/**
 * Longest time a client may take to send a whole request (headers and body), in milliseconds.
 * A file upload must finish within it; larger files are written in several calls.
 */
export const DAEMON_REQUEST_TIMEOUT_MS = 30 * 60_000;
/** Longest wait for the next byte of a request body the daemon is reading, in milliseconds. */
export const DAEMON_BODY_IDLE_TIMEOUT_MS = 30_000;
/** Most connections the daemon holds open at once; it answers one more with 503 and closes it. */
export const DAEMON_MAX_CONNECTIONS = 256;

const utf8 = new TextEncoder();

/** UTF-8 bytes of `value`'s JSON text: the size it takes in a frame or a request body. */
export function jsonBytes(value: unknown): number {
  return utf8.encode(JSON.stringify(value) ?? "").byteLength;
}

/**
 * Why a sandbox environment (as the engine builds it: request env, secrets, egress variables)
 * does not fit the agent's frame budget, or undefined when it does.
 */
export function sandboxEnvProblem(env: Readonly<Record<string, string>>): string | undefined {
  const bytes = jsonBytes(env);
  return bytes > MAX_SANDBOX_ENV_BYTES
    ? `the sandbox environment takes ${bytes} bytes as JSON, more than the limit of ${MAX_SANDBOX_ENV_BYTES} bytes`
    : undefined;
}

/**
 * Longest a sandbox stays paused with no TTL running (paused by its TTL with `onTtl: "pause"`, or
 * paused with `{ ttl: "frozen" }`), in seconds: then it is killed. The same 7 days as the longest TTL.
 */
export const MAX_PAUSED_SECONDS = 7 * 24 * 3600;
