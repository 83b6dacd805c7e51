/**
 * The error-code registry shared by agent, engine, daemon, SDK and CLI, and one class per code.
 * A code is stable: callers may switch on it. `fromWire` rebuilds the right class on the far side
 * of a transport.
 */

export const ErrorCode = {
  PolicyDenied: "POLICY_DENIED",
  Admission: "ADMISSION_FAILED",
  CommandExit: "COMMAND_EXIT",
  Timeout: "TIMEOUT",
  Transport: "TRANSPORT",
  Cleanup: "CLEANUP_FAILED",
  SnapshotMismatch: "SNAPSHOT_MISMATCH",
  SandboxCrashed: "SANDBOX_CRASHED",
  SandboxPaused: "SANDBOX_PAUSED",
  UnsupportedCapability: "UNSUPPORTED_CAPABILITY",
  NotFound: "NOT_FOUND",
  InvalidArgument: "INVALID_ARGUMENT",
  PermissionDenied: "PERMISSION_DENIED",
  AlreadyExists: "ALREADY_EXISTS",
  Aborted: "ABORTED",
  Internal: "INTERNAL",
  FunctionFailed: "FUNCTION_FAILED",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export const ERROR_CODES: readonly ErrorCode[] = Object.values(ErrorCode);

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && (ERROR_CODES as readonly string[]).includes(value);
}

export interface MvmErrorOptions {
  cause?: unknown;
  /** Hint for a human: what to do about it. The CLI prints it on a `hint:` line. */
  hint?: string;
}

/** Base class of every error mvm raises on purpose. */
export abstract class MvmError extends Error {
  abstract readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(message: string, options: MvmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.hint = options.hint;
  }

  /** The serializable form sent across the daemon API. Never includes `cause`. */
  toWire(): WireError {
    return { code: this.code, message: this.message, ...(this.hint ? { hint: this.hint } : {}) };
  }
}

export interface WireError {
  code: ErrorCode;
  message: string;
  hint?: string;
  /** Code-specific detail, e.g. the command result for COMMAND_EXIT. */
  details?: unknown;
}

/** An operator or sandbox policy refused the operation. */
export class PolicyDeniedError extends MvmError {
  override readonly name = "PolicyDeniedError";
  readonly code = ErrorCode.PolicyDenied;
}
/** An image build, admission check or other precondition of starting a sandbox failed. */
export class AdmissionError extends MvmError {
  override readonly name = "AdmissionError";
  readonly code = ErrorCode.Admission;
}
/** The operation ran past its deadline. */
export class TimeoutError extends MvmError {
  override readonly name = "TimeoutError";
  readonly code = ErrorCode.Timeout;
}
/** The channel to the daemon or the agent broke, or the peer broke the protocol. */
export class TransportError extends MvmError {
  override readonly name = "TransportError";
  readonly code = ErrorCode.Transport;
}
/** A resource could not be released. */
export class CleanupError extends MvmError {
  override readonly name = "CleanupError";
  readonly code = ErrorCode.Cleanup;
}
/** A snapshot did not match what restoring it requires. */
export class SnapshotMismatchError extends MvmError {
  override readonly name = "SnapshotMismatchError";
  readonly code = ErrorCode.SnapshotMismatch;
}
/**
 * The sandbox died under the call: its VM's kernel panicked (a tampered disk block included), its
 * VMM or process tree crashed, or its agent stopped answering. The message says which.
 */
export class SandboxCrashedError extends MvmError {
  override readonly name = "SandboxCrashedError";
  readonly code = ErrorCode.SandboxCrashed;
}
/**
 * The sandbox is paused (its processes are frozen): exec, file and process calls are refused,
 * never queued. Resume it first (`sb.resume()`, `mvmctl resume ID`).
 */
export class SandboxPausedError extends MvmError {
  override readonly name = "SandboxPausedError";
  readonly code = ErrorCode.SandboxPaused;
}
/** The host cannot enforce a requested capability or limit. Never downgraded silently. */
export class UnsupportedCapabilityError extends MvmError {
  override readonly name = "UnsupportedCapabilityError";
  readonly code = ErrorCode.UnsupportedCapability;
}
export class NotFoundError extends MvmError {
  override readonly name = "NotFoundError";
  readonly code = ErrorCode.NotFound;
}
export class InvalidArgumentError extends MvmError {
  override readonly name = "InvalidArgumentError";
  readonly code = ErrorCode.InvalidArgument;
}
/** The sandbox refused a file operation (read-only path, mode bits). */
export class PermissionDeniedError extends MvmError {
  override readonly name = "PermissionDeniedError";
  readonly code = ErrorCode.PermissionDenied;
}
export class AlreadyExistsError extends MvmError {
  override readonly name = "AlreadyExistsError";
  readonly code = ErrorCode.AlreadyExists;
}
/** The caller's AbortSignal fired. */
export class AbortedError extends MvmError {
  override readonly name = "AbortedError";
  readonly code = ErrorCode.Aborted;
}
/** A bug or an unexpected failure inside mvm. */
export class InternalError extends MvmError {
  override readonly name = "InternalError";
  readonly code = ErrorCode.Internal;
}

/** A command exited non-zero (or by signal) where the caller asked for success. Carries the result. */
export class CommandExitError<R = unknown> extends MvmError {
  override readonly name = "CommandExitError";
  readonly code = ErrorCode.CommandExit;
  readonly result: R;
  constructor(message: string, result: R, options: MvmErrorOptions = {}) {
    super(message, options);
    this.result = result;
  }
  override toWire(): WireError {
    return { ...super.toWire(), details: this.result };
  }
}

/**
 * A function call (`fn(...).remote()`) did not return a value: it threw, timed out, broke a
 * wrapper limit, or its process died. `kind` says which (see docs/FUNCTIONS.md); `errorId` keys
 * the operator log entry holding the full stack.
 */
export class FunctionError extends MvmError {
  override readonly name = "FunctionError";
  readonly code = ErrorCode.FunctionFailed;
  readonly kind: string;
  readonly errorId: string | undefined;
  /** The function's stack, only in development mode. */
  readonly functionStack: string | undefined;
  constructor(message: string, options: MvmErrorOptions & { kind?: string; errorId?: string; functionStack?: string } = {}) {
    super(message, options);
    this.kind = options.kind ?? "failed";
    this.errorId = options.errorId;
    this.functionStack = options.functionStack;
  }
}

type PlainErrorClass = new (message: string, options?: MvmErrorOptions) => MvmError;

const CLASSES: Record<Exclude<ErrorCode, "COMMAND_EXIT">, PlainErrorClass> = {
  POLICY_DENIED: PolicyDeniedError,
  ADMISSION_FAILED: AdmissionError,
  TIMEOUT: TimeoutError,
  TRANSPORT: TransportError,
  CLEANUP_FAILED: CleanupError,
  SNAPSHOT_MISMATCH: SnapshotMismatchError,
  SANDBOX_CRASHED: SandboxCrashedError,
  SANDBOX_PAUSED: SandboxPausedError,
  UNSUPPORTED_CAPABILITY: UnsupportedCapabilityError,
  NOT_FOUND: NotFoundError,
  INVALID_ARGUMENT: InvalidArgumentError,
  PERMISSION_DENIED: PermissionDeniedError,
  ALREADY_EXISTS: AlreadyExistsError,
  ABORTED: AbortedError,
  INTERNAL: InternalError,
  FUNCTION_FAILED: FunctionError,
};

/** Rebuilds the typed error from its wire form. Unknown codes become InternalError. */
export function fromWire(wire: WireError, cause?: unknown): MvmError {
  const options: MvmErrorOptions = {};
  if (wire.hint !== undefined) options.hint = wire.hint;
  if (cause !== undefined) options.cause = cause;
  if (wire.code === ErrorCode.CommandExit) return new CommandExitError(wire.message, wire.details, options);
  const Cls = isErrorCode(wire.code) ? CLASSES[wire.code] : InternalError;
  return new Cls(wire.message, options);
}

/** Wraps anything thrown into an MvmError (MvmErrors pass through). */
export function toMvmError(err: unknown, fallback: PlainErrorClass = InternalError): MvmError {
  if (err instanceof MvmError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new fallback(message, { cause: err });
}
