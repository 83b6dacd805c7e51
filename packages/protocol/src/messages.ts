/**
 * Control messages of protocol v1 (JSON payloads of Control frames on stream 0).
 * Every schema is strict: unknown fields are rejected. Every string and array is bounded. The JSON
 * itself is strict (parseJsonStrict): a key twice in one object is rejected, not resolved.
 * Written with zod's tree-shakable "mini" API: the agent loads these schemas at startup, and the
 * full API would add ~90 ms to every sandbox's first call.
 */
import * as z from "zod/mini";
import { ERROR_CODES, type ErrorCode } from "./errors.js";
import { MAX_STREAM_ID } from "./frame.js";
import { StrictJsonError, parseJsonStrict } from "./json-strict.js";
import { MAX_ARGUMENT_CHARS, MAX_ARGV_ITEMS, MAX_ENV_VARS, MAX_PATH_LENGTH } from "./limits.js";

export { MAX_PATH_LENGTH } from "./limits.js";

export const PROTOCOL_VERSION = 1;

const u32 = z.int().check(z.minimum(0), z.maximum(0xffff_ffff));
export const StreamId = z.int().check(z.minimum(1), z.maximum(MAX_STREAM_ID));
export const RequestId = u32;

/** Largest request id a host sends: ids from 2^31 up name processes a previous session left running. */
export const MAX_REQUEST_ID = 0x7fff_ffff;
/**
 * First process handle the agent gives a process it kept running for a new host (after
 * `quiesce` and the start line): such handles never collide with the new host's request ids.
 */
export const DETACHED_PROC_BASE = 0x8000_0000;
/** The id of a request the host sends (a subrange of RequestId). */
export const HostRequestId = z.int().check(z.minimum(0), z.maximum(MAX_REQUEST_ID));

/** An absolute, normalized path inside the sandbox: no `.`/`..` segments, no empty segments, no NUL. */
export const SandboxPath = z
  .string()
  .check(
    z.minLength(1),
    z.maxLength(MAX_PATH_LENGTH),
    z.refine((p) => isSandboxPath(p), { message: "must be an absolute normalized path without '..' or NUL" }),
  );

export function isSandboxPath(p: string): boolean {
  if (!p.startsWith("/") || p.includes("\0")) return false;
  if (p === "/") return true;
  if (p.endsWith("/")) return false;
  return p
    .slice(1)
    .split("/")
    .every((seg) => seg !== "" && seg !== "." && seg !== "..");
}

export const EnvName = z.string().check(z.minLength(1), z.maxLength(256), z.regex(/^[A-Za-z_][A-Za-z0-9_]*$/));
const EnvValue = z
  .string()
  .check(z.maxLength(MAX_ARGUMENT_CHARS), z.refine((v) => !v.includes("\0"), { message: "must not contain NUL" }));
// zod's record silently skips an own "__proto__" key; map it to a name the EnvName rule rejects.
export const Env = z.pipe(
  z.transform((v: unknown) => (v !== null && typeof v === "object" && Object.hasOwn(v, "__proto__") ? { "__proto__!": "" } : v)),
  z.record(EnvName, EnvValue).check(z.refine((e) => Object.keys(e).length <= MAX_ENV_VARS, { message: `at most ${MAX_ENV_VARS} variables` })),
);

export const Argv = z
  .array(z.string().check(z.maxLength(MAX_ARGUMENT_CHARS), z.refine((a) => !a.includes("\0"), { message: "must not contain NUL" })))
  .check(z.minLength(1), z.maxLength(MAX_ARGV_ITEMS), z.refine((a) => a[0] !== "", { message: "argv[0] must not be empty" }));

/** Largest terminal width or height, in character cells. */
export const MAX_PTY_CELLS = 4096;
/** A terminal's size in character cells. */
export const PtySize = z.strictObject({
  cols: z.int().check(z.minimum(1), z.maximum(MAX_PTY_CELLS)),
  rows: z.int().check(z.minimum(1), z.maximum(MAX_PTY_CELLS)),
});
export type PtySize = z.infer<typeof PtySize>;

export const SIGNALS = ["SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT"] as const;
export const KillSignal = z.enum(SIGNALS);
export type KillSignal = z.infer<typeof KillSignal>;

// ---- handshake ----

/** First frame the agent sends. */
export const AgentHello = z.strictObject({
  t: z.literal("hello"),
  versions: z.array(u32).check(z.minLength(1), z.maxLength(8)),
  agent: z.string().check(z.maxLength(64)),
});
export type AgentHello = z.infer<typeof AgentHello>;

/** The host's answer: the version it chose. */
export const HostHello = z.strictObject({
  t: z.literal("hello"),
  version: z.literal(PROTOCOL_VERSION),
});
export type HostHello = z.infer<typeof HostHello>;

// ---- requests (host -> agent) ----

const req = <Op extends string, S extends z.core.$ZodShape>(op: Op, shape: S) =>
  z.strictObject({ t: z.literal("req"), id: HostRequestId, op: z.literal(op), ...shape });

export const ExecRequest = req("exec", {
  argv: Argv,
  env: Env,
  cwd: SandboxPath,
  /** Stream the host writes stdin on; null means /dev/null. */
  stdin: z.nullable(StreamId),
  stdout: StreamId,
  stderr: StreamId,
  /** 0 means no per-call timeout (the sandbox TTL still applies). */
  timeoutMs: z.int().check(z.minimum(0), z.maximum(7 * 24 * 3600 * 1000)),
  /** Time between SIGTERM and SIGKILL when the call times out or is killed. */
  killGraceMs: z.int().check(z.minimum(0), z.maximum(60_000)),
  /** Per-stream cap on forwarded output; bytes past it are drained and dropped. */
  maxOutputBytes: z.int().check(z.minimum(0), z.maximum(Number.MAX_SAFE_INTEGER)),
  /**
   * Run the command on a new pseudo-terminal of this size: its terminal output (stdout and stderr
   * together) comes on `stdout`, `stdin` carries raw terminal input, and `stderr` only ends.
   */
  pty: z.optional(PtySize),
}).check(
  z.refine((r) => r.stdout !== r.stderr && r.stdin !== r.stdout && r.stdin !== r.stderr, {
    message: "stdin, stdout and stderr need distinct stream ids",
  }),
  z.refine((r) => r.pty === undefined || r.stdin !== null, { message: "a pty needs a stdin stream" }),
);
export const SignalRequest = req("signal", { proc: RequestId, signal: KillSignal });
/** Sets the window size of a process's pseudo-terminal (it must have been started with `pty`). */
export const ResizeRequest = req("resize", { proc: RequestId, cols: PtySize.shape.cols, rows: PtySize.shape.rows });
export const ListProcessesRequest = req("listProcesses", {});
export const ReadFileRequest = req("readFile", {
  path: SandboxPath,
  stream: StreamId,
});
export const WriteFileRequest = req("writeFile", {
  path: SandboxPath,
  stream: StreamId,
  mode: z.int().check(z.minimum(0), z.maximum(0o777)),
  createParents: z.boolean(),
});
export const ListDirRequest = req("listDir", {
  path: SandboxPath,
  /** Cursor: only entries whose name sorts after this one (UTF-8 byte order). */
  after: z.optional(z.string().check(z.maxLength(4096))),
});
export const StatRequest = req("stat", { path: SandboxPath });
export const MkdirRequest = req("mkdir", { path: SandboxPath, recursive: z.boolean() });
export const RemoveRequest = req("remove", { path: SandboxPath, recursive: z.boolean() });
export const RenameRequest = req("rename", { from: SandboxPath, to: SandboxPath });
export const PingRequest = req("ping", {});
export const ShutdownRequest = req("shutdown", {});
/**
 * Asks the agent to go quiet so the sandbox can be snapshotted: it answers once it has stopped
 * writing frames, then reads a raw line (AGENT_RESUME_LINE or AGENT_START_LINE) instead of frames.
 */
export const QuiesceRequest = req("quiesce", {});

export const Request = z.discriminatedUnion("op", [
  ExecRequest,
  SignalRequest,
  ListProcessesRequest,
  ReadFileRequest,
  WriteFileRequest,
  ListDirRequest,
  StatRequest,
  MkdirRequest,
  RemoveRequest,
  RenameRequest,
  PingRequest,
  ShutdownRequest,
  QuiesceRequest,
  ResizeRequest,
]);
export type Request = z.infer<typeof Request>;
export type Op = Request["op"];
export type RequestOf<O extends Op> = Extract<Request, { op: O }>;

// ---- results (agent -> host), one schema per op ----

export const FileType = z.enum(["file", "dir", "symlink", "other"]);
export type FileType = z.infer<typeof FileType>;

export const FileInfo = z.strictObject({
  name: z.string().check(z.maxLength(4096)),
  type: FileType,
  size: z.int().check(z.minimum(0)),
  mode: z.int().check(z.minimum(0), z.maximum(0o7777)),
  mtimeMs: z.number(),
});
export type FileInfo = z.infer<typeof FileInfo>;

export const MAX_DIR_ENTRIES = 10_000;

export const ProcessInfo = z.strictObject({
  proc: RequestId,
  pid: z.int().check(z.minimum(1)),
  argv: z.array(z.string().check(z.maxLength(4096))).check(z.maxLength(64)),
  startedAtMs: z.number(),
});
export type ProcessInfo = z.infer<typeof ProcessInfo>;

const empty = z.strictObject({});
export const Results = {
  exec: z.strictObject({ pid: z.int().check(z.minimum(1)) }),
  signal: empty,
  listProcesses: z.strictObject({ processes: z.array(ProcessInfo).check(z.maxLength(4096)) }),
  readFile: z.strictObject({ size: z.int().check(z.minimum(0)) }),
  writeFile: z.strictObject({ bytes: z.int().check(z.minimum(0)) }),
  listDir: z.strictObject({ entries: z.array(FileInfo).check(z.maxLength(MAX_DIR_ENTRIES)), truncated: z.boolean() }),
  stat: FileInfo,
  mkdir: empty,
  remove: empty,
  rename: empty,
  ping: empty,
  shutdown: empty,
  quiesce: empty,
  resize: empty,
} satisfies Record<Op, z.ZodMiniType>;
export type ResultOf<O extends Op> = z.infer<(typeof Results)[O]>;

export const AgentErrorBody = z.strictObject({
  code: z.enum(ERROR_CODES as [ErrorCode, ...ErrorCode[]]),
  message: z.string().check(z.maxLength(4096)),
});

export const Response = z.discriminatedUnion("ok", [
  z.strictObject({ t: z.literal("res"), id: RequestId, ok: z.literal(true), result: z.unknown() }),
  z.strictObject({ t: z.literal("res"), id: RequestId, ok: z.literal(false), error: AgentErrorBody }),
]);
export type Response = z.infer<typeof Response>;

/** A process started by `exec` ended and its output streams are closed. */
export const ExitEvent = z.strictObject({
  t: z.literal("exit"),
  proc: RequestId,
  exitCode: z.nullable(z.int().check(z.minimum(0), z.maximum(255))),
  signal: z.nullable(z.string().check(z.maxLength(16))),
  timedOut: z.boolean(),
  durationMs: z.number().check(z.minimum(0)),
  stdoutBytes: z.int().check(z.minimum(0)),
  stderrBytes: z.int().check(z.minimum(0)),
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
});
export type ExitEvent = z.infer<typeof ExitEvent>;

/** Ends a data stream with an error (either direction). */
export const StreamAbort = z.strictObject({
  t: z.literal("abort"),
  stream: StreamId,
  error: AgentErrorBody,
});
export type StreamAbort = z.infer<typeof StreamAbort>;

/** Every control message the host may receive after the handshake. */
export const AgentToHost = z.union([Response, ExitEvent, StreamAbort]);
export type AgentToHost = z.infer<typeof AgentToHost>;

/** Every control message the agent may receive after the handshake. */
export const HostToAgent = z.union([Request, StreamAbort]);
export type HostToAgent = z.infer<typeof HostToAgent>;

/** Deepest nesting of objects and arrays in a control message (the deepest valid one has 5). */
export const MAX_CONTROL_DEPTH = 16;

/**
 * Parses a control payload against a schema. The payload is strict JSON in UTF-8 (see
 * parseJsonStrict: no key twice in one object, no `__proto__` key, at most MAX_CONTROL_DEPTH deep).
 * Throws a plain Error with a bounded message starting "Bad control message".
 */
export function parseControl<S extends z.ZodMiniType>(schema: S, payload: Uint8Array): z.infer<S> {
  let value: unknown;
  try {
    value = parseJsonStrict(new TextDecoder("utf-8", { fatal: true }).decode(payload), { maxDepth: MAX_CONTROL_DEPTH });
  } catch (err) {
    const detail = err instanceof StrictJsonError && err.fault !== "syntax" ? err.detail : "not UTF-8 JSON";
    throw new Error(`Bad control message: ${detail}`);
  }
  const r = schema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue ? issue.path.join(".") : "";
    throw new Error(`Bad control message: ${where ? `${where}: ` : ""}${issue?.message ?? "invalid"}`.slice(0, 512));
  }
  return r.data;
}

export function encodeControl(message: object): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(message));
}
