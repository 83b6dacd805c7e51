/**
 * The function-call contract shared by the host (SDK) and the call wrapper in the guest: ids,
 * limits and their MVM_FN_* knobs, the request header the host writes on the wrapper's stdin,
 * and the sealed result file the wrapper leaves for the host. docs/FUNCTIONS.md draws the
 * layouts; a Python wrapper implements the same contract.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import * as z from "zod/mini";
import { InvalidArgumentError, PolicyDeniedError, TransportError } from "./errors.js";
import { parseJsonStrict } from "./json-strict.js";
import { looksSecretName } from "./secret-names.js";

/** A function id: a lower-case letter, then up to 62 lower-case letters, digits or hyphens. */
export const FUNCTION_ID_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

/** Whether `id` is a valid function id. */
export function isFunctionId(id: unknown): id is string {
  return typeof id === "string" && FUNCTION_ID_PATTERN.test(id);
}

/** Throws InvalidArgumentError unless `id` is a valid function id. */
export function checkFunctionId(id: unknown): string {
  if (!isFunctionId(id)) {
    const shown = typeof id === "string" ? JSON.stringify(id.slice(0, 80)) : typeof id;
    throw new InvalidArgumentError(`Invalid function id ${shown}: must match ${FUNCTION_ID_PATTERN.source}`);
  }
  return id;
}

/** Payload formats: a closed set; neither can run code when decoded. */
export const FN_FORMATS = ["json", "msgpack"] as const;
export type FnFormat = (typeof FN_FORMATS)[number];
export const FnFormatSchema = z.enum(FN_FORMATS);

/** Error modes: production sanitizes errors, development adds the stack. Always chosen explicitly. */
export const FN_MODES = ["production", "development"] as const;
export type FnMode = (typeof FN_MODES)[number];

/** The wrapper's limits. Every one has a default and an MVM_FN_* environment knob. */
export interface FnLimits {
  /** Largest encoded `[args, kwargs]`, in bytes. MVM_FN_MAX_INPUT_BYTES. @default 16777216 */
  readonly maxInputBytes: number;
  /** Largest encoded result, in bytes. MVM_FN_MAX_OUTPUT_BYTES. @default 16777216 */
  readonly maxOutputBytes: number;
  /** Deepest nesting of arrays and maps; the top-level `[args, kwargs]` is depth 1. MVM_FN_MAX_DEPTH. @default 64 */
  readonly maxDepth: number;
  /** Wall-clock limit of one call, in milliseconds; past it the process group is killed. MVM_FN_INVOKE_TIMEOUT_SEC (seconds). @default 60000 */
  readonly invokeTimeoutMs: number;
  /** Time allowed to start a session's sandbox, in milliseconds. MVM_FN_SESSION_START_TIMEOUT_SEC. @default 60000 */
  readonly sessionStartTimeoutMs: number;
  /** Time allowed to stop a session's sandbox, in milliseconds. MVM_FN_SESSION_STOP_TIMEOUT_SEC. @default 30000 */
  readonly sessionStopTimeoutMs: number;
}

export const DEFAULT_FN_LIMITS: FnLimits = Object.freeze({
  maxInputBytes: 16 * 1024 * 1024,
  maxOutputBytes: 16 * 1024 * 1024,
  maxDepth: 64,
  invokeTimeoutMs: 60_000,
  sessionStartTimeoutMs: 60_000,
  sessionStopTimeoutMs: 30_000,
});

/** Hard ceilings: a knob may lower a limit freely but never raise it past these. */
export const FN_LIMIT_CEILINGS: FnLimits = Object.freeze({
  maxInputBytes: 256 * 1024 * 1024,
  maxOutputBytes: 256 * 1024 * 1024,
  maxDepth: 512,
  invokeTimeoutMs: 24 * 3600_000,
  sessionStartTimeoutMs: 3600_000,
  sessionStopTimeoutMs: 3600_000,
});

/** The environment knob of each limit, and its unit factor (seconds knobs are stored in ms). */
export const FN_LIMIT_ENV: { readonly [K in keyof FnLimits]: readonly [name: string, factor: number] } = {
  maxInputBytes: ["MVM_FN_MAX_INPUT_BYTES", 1],
  maxOutputBytes: ["MVM_FN_MAX_OUTPUT_BYTES", 1],
  maxDepth: ["MVM_FN_MAX_DEPTH", 1],
  invokeTimeoutMs: ["MVM_FN_INVOKE_TIMEOUT_SEC", 1000],
  sessionStartTimeoutMs: ["MVM_FN_SESSION_START_TIMEOUT_SEC", 1000],
  sessionStopTimeoutMs: ["MVM_FN_SESSION_STOP_TIMEOUT_SEC", 1000],
};

/** Lets a wrapper process run its entry more than once (the single-shot guard). Off unless "1". */
export const FN_ALLOW_REENTRY_ENV = "MVM_FN_ALLOW_REENTRY";
/** Selects development mode ("development"); anything else is production. */
export const FN_MODE_ENV = "MVM_FN_MODE";

const FnLimitsSchema = z.strictObject({
  maxInputBytes: z.int().check(z.minimum(1), z.maximum(FN_LIMIT_CEILINGS.maxInputBytes)),
  maxOutputBytes: z.int().check(z.minimum(1), z.maximum(FN_LIMIT_CEILINGS.maxOutputBytes)),
  maxDepth: z.int().check(z.minimum(2), z.maximum(FN_LIMIT_CEILINGS.maxDepth)),
  invokeTimeoutMs: z.int().check(z.minimum(1), z.maximum(FN_LIMIT_CEILINGS.invokeTimeoutMs)),
  sessionStartTimeoutMs: z.int().check(z.minimum(1), z.maximum(FN_LIMIT_CEILINGS.sessionStartTimeoutMs)),
  sessionStopTimeoutMs: z.int().check(z.minimum(1), z.maximum(FN_LIMIT_CEILINGS.sessionStopTimeoutMs)),
});

/**
 * The limits `env` sets, over `base` (the defaults unless given). A knob that is not a positive
 * integer, or is past its ceiling, is InvalidArgumentError naming it.
 * @example fnLimitsFromEnv({ MVM_FN_MAX_DEPTH: "32" }).maxDepth // 32
 */
export function fnLimitsFromEnv(env: Readonly<Record<string, string | undefined>>, base: FnLimits = DEFAULT_FN_LIMITS): FnLimits {
  const out: Record<string, number> = { ...base };
  for (const key of Object.keys(FN_LIMIT_ENV) as (keyof FnLimits)[]) {
    const [name, factor] = FN_LIMIT_ENV[key];
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    if (!/^[1-9][0-9]{0,11}$/.test(raw)) throw new InvalidArgumentError(`Invalid ${name} "${raw.slice(0, 40)}": expected a positive integer`);
    out[key] = Number(raw) * factor;
  }
  return checkFnLimits(out);
}

/** Validates a full set of limits (each within its ceiling). */
export function checkFnLimits(limits: unknown): FnLimits {
  const parsed = FnLimitsSchema.safeParse(limits);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidArgumentError(`Invalid function limit "${issue?.path.join(".") ?? "limits"}": ${issue?.message ?? "invalid"}`);
  }
  return parsed.data;
}

/** The lesser of each limit: a wrapper applies the stricter of the host's and its own. */
export function minFnLimits(a: FnLimits, b: FnLimits): FnLimits {
  const out: Record<string, number> = {};
  for (const key of Object.keys(FN_LIMIT_ENV) as (keyof FnLimits)[]) out[key] = Math.min(a[key], b[key]);
  return out as unknown as FnLimits;
}

// ---- secret-looking argument names (the rule is secret-names.ts) ----

/**
 * Applies the secret-argument rule to `names`: each suspect is passed to `warn`, or, when
 * `strict`, the first is PolicyDeniedError. Messages name the argument, never a value.
 */
export function checkSecretArgNames(
  functionId: string,
  names: Iterable<string>,
  strict: boolean,
  warn: (message: string) => void,
): void {
  for (const name of names) {
    if (!looksSecretName(name)) continue;
    const message = `Argument "${name.slice(0, 64)}" of function "${functionId}" looks like a secret: pass a SecretRef through the sandbox's secrets instead`;
    if (strict) throw new PolicyDeniedError(message, { hint: "MVM_STRICT_SECRETS=1 refuses secret-named arguments" });
    warn(message);
  }
}

// ---- the request header (host → wrapper, first line of stdin) ----

/** Longest request header line, in bytes (newline excluded). */
export const MAX_FN_HEADER_BYTES = 4096;
/** Largest function code (the bundle) a request may carry, in bytes. */
export const MAX_FN_CODE_BYTES = 64 * 1024 * 1024;

export const FnRequestHeader = z.strictObject({
  v: z.literal(1),
  /** The function id, checked again by the wrapper. */
  id: z.string().check(z.regex(FUNCTION_ID_PATTERN)),
  format: FnFormatSchema,
  mode: z.enum(FN_MODES),
  /** 32 random bytes as 64 hex digits: the key the result file is sealed with. Never reaches the function. */
  key: z.string().check(z.regex(/^[0-9a-f]{64}$/)),
  /** Absolute path where the wrapper creates the result file (must not exist). */
  resultPath: z.string().check(z.regex(/^\/[A-Za-z0-9._/-]{1,255}$/), z.refine((p) => !p.split("/").includes(".."))),
  /** Length of the function's code (one CommonJS module) that follows the header line on stdin. */
  codeBytes: z.int().check(z.minimum(1), z.maximum(MAX_FN_CODE_BYTES)),
  /** sha256 of that code, 64 hex digits: the wrapper refuses code that does not match. */
  codeSha256: z.string().check(z.regex(/^[0-9a-f]{64}$/)),
  /** Export of the bundle to call; "default" calls `module.exports` itself when it is a function. */
  exportName: z.string().check(z.regex(/^[A-Za-z_$][A-Za-z0-9_$]{0,127}$/)),
  limits: FnLimitsSchema,
});
export type FnRequestHeader = z.infer<typeof FnRequestHeader>;

// ---- the result file (wrapper → host) ----

/** First line of a result file. */
export const FN_RESULT_MAGIC = "mvm-fn-result v1";

/** What can go wrong in a call, as the caller sees it (`FunctionError.kind`). A closed set. */
export const FN_ERROR_KINDS = [
  "raised", // the function threw or rejected
  "timeout", // the invoke timeout passed; the process group was killed
  "input-too-large",
  "output-too-large",
  "bad-input", // the payload broke a decoding rule (depth, duplicate key, non-finite number, format)
  "bad-output", // the result cannot be encoded (non-finite number, unsupported type, too deep)
  "crashed", // the function's process ended without a result
  "not-found", // the bundle has no such export, or it is not a function
  "reentry", // the wrapper entry ran twice in one process
  "bad-request", // the request header was refused
] as const;
export type FnErrorKind = (typeof FN_ERROR_KINDS)[number];

/** Longest error message the caller sees, in characters. */
export const MAX_FN_ERROR_MESSAGE = 200;
/** Longest stack kept for the operator log (and development mode), in characters. */
export const MAX_FN_STACK_CHARS = 16 * 1024;

export const FnErrorBody = z.strictObject({
  kind: z.enum(FN_ERROR_KINDS),
  errorId: z.string().check(z.regex(/^fe_[0-9a-f]{24}$/)),
  message: z.string().check(z.maxLength(MAX_FN_ERROR_MESSAGE)),
});
export type FnErrorBody = z.infer<typeof FnErrorBody>;

export const FnResultHeader = z.discriminatedUnion("status", [
  z.strictObject({
    v: z.literal(1),
    status: z.literal("ok"),
    id: z.string().check(z.regex(FUNCTION_ID_PATTERN)),
    format: FnFormatSchema,
    /** Length of the encoded result after the header line. */
    resultBytes: z.int().check(z.minimum(0), z.maximum(FN_LIMIT_CEILINGS.maxOutputBytes)),
  }),
  z.strictObject({
    v: z.literal(1),
    status: z.literal("error"),
    id: z.string().check(z.regex(FUNCTION_ID_PATTERN)),
    error: FnErrorBody,
    /** The full stack, for the operator log (and the caller in development mode only). */
    stack: z.optional(z.string().check(z.maxLength(MAX_FN_STACK_CHARS))),
  }),
]);
export type FnResultHeader = z.infer<typeof FnResultHeader>;

/** Longest result header line, in bytes. */
export const MAX_FN_RESULT_HEADER_BYTES = 64 * 1024;

/** The seal of a result file: HMAC-SHA256 over the header line and the result bytes, hex. */
export function sealFnResult(keyHex: string, headerLine: string, result: Uint8Array): string {
  return createHmac("sha256", Buffer.from(keyHex, "hex")).update(headerLine).update("\n").update(result).digest("hex");
}

/**
 * Lays out a result file: magic line, seal line, header line, result bytes.
 * @example writeFileSync(path, encodeFnResultFile(key, { v: 1, status: "ok", id, format, resultBytes: b.length }, b))
 */
export function encodeFnResultFile(keyHex: string, header: FnResultHeader, result: Uint8Array = new Uint8Array(0)): Buffer {
  const headerLine = JSON.stringify(header);
  const seal = sealFnResult(keyHex, headerLine, result);
  return Buffer.concat([Buffer.from(`${FN_RESULT_MAGIC}\n${seal}\n${headerLine}\n`), result]);
}

/**
 * Reads a result file the guest wrote: checks the layout, the seal against `keyHex` (so nothing
 * but the wrapper holding the key could have written it), the header's schema and that the
 * result bytes are exactly as long as it says. Everything else is TransportError.
 */
export function decodeFnResultFile(keyHex: string, bytes: Uint8Array, expectId: string): { header: FnResultHeader; result: Uint8Array } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bad = (why: string): TransportError => new TransportError(`Bad function result file: ${why}`);
  const nl1 = buf.indexOf(0x0a);
  if (nl1 < 0 || buf.subarray(0, nl1).toString("latin1") !== FN_RESULT_MAGIC) throw bad("no magic line");
  const nl2 = buf.indexOf(0x0a, nl1 + 1);
  if (nl2 !== nl1 + 65) throw bad("no seal line");
  const seal = buf.subarray(nl1 + 1, nl2).toString("latin1");
  const nl3 = buf.indexOf(0x0a, nl2 + 1);
  if (nl3 < 0 || nl3 - nl2 - 1 > MAX_FN_RESULT_HEADER_BYTES) throw bad("no header line");
  const headerLine = buf.subarray(nl2 + 1, nl3).toString("utf8");
  const result = buf.subarray(nl3 + 1);
  const expected = Buffer.from(sealFnResult(keyHex, headerLine, result), "latin1");
  if (!/^[0-9a-f]{64}$/.test(seal) || !timingSafeEqual(expected, Buffer.from(seal, "latin1"))) throw bad("the seal does not match");
  const parsed = FnResultHeader.safeParse(parseJsonStrict(headerLine, { maxDepth: 4 }));
  if (!parsed.success) throw bad(`header: ${parsed.error.issues[0]?.message ?? "invalid"}`);
  const header = parsed.data;
  if (header.id !== expectId) throw bad(`it names function "${header.id}"`);
  const expectBytes = header.status === "ok" ? header.resultBytes : 0;
  if (result.length !== expectBytes) throw bad(`${result.length} result bytes, header says ${expectBytes}`);
  return { header, result };
}

/** Parses and checks a request header line (the wrapper's side). */
export function parseFnRequestHeader(line: string): FnRequestHeader {
  const parsed = FnRequestHeader.safeParse(parseJsonStrict(line, { maxDepth: 4 }));
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidArgumentError(`Bad function request header "${issue?.path.join(".") ?? ""}": ${issue?.message ?? "invalid"}`);
  }
  return parsed.data;
}

/**
 * The argv that runs the call wrapper inside a sandbox: the agent runtime's own Node.js (mounted
 * read-only at /.mvm on every backend) started through its loader, so the image needs no Node.js.
 */
export const FN_WRAPPER_COMMAND: readonly string[] = Object.freeze([
  "/.mvm/bin/ld-linux-x86-64.so.2",
  "--library-path",
  "/.mvm/lib",
  "/.mvm/bin/node",
  "/.mvm/fn-wrapper.cjs",
  "--via",
  "/.mvm/bin/ld-linux-x86-64.so.2",
  "/.mvm/lib",
  "/.mvm/bin/node",
]);
