/**
 * Failure handling inside the agent: errno → protocol error code, bounded messages, and the
 * conversion of anything thrown into the wire error body of a response.
 */
import {
  AlreadyExistsError,
  ErrorCode,
  InternalError,
  InvalidArgumentError,
  MvmError,
  NotFoundError,
  PermissionDeniedError,
  isSandboxPath,
} from "@mvm/protocol";

/** Longest error message the protocol carries, in UTF-16 code units. */
export const MAX_ERROR_MESSAGE = 4096;
/** Longest quoted value (path, argv[0]) inside a message, before quoting. */
const MAX_QUOTED = 1024;

/** The wire body of an error response or stream abort. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
}

/** The host broke the protocol: the session must end with exit code 2. */
export class ProtocolViolation extends Error {
  override readonly name = "ProtocolViolation";
}

const ERRNO_CODES: Readonly<Record<string, ErrorCode>> = {
  ENOENT: ErrorCode.NotFound,
  EEXIST: ErrorCode.AlreadyExists,
  EACCES: ErrorCode.PermissionDenied,
  EPERM: ErrorCode.PermissionDenied,
  EROFS: ErrorCode.PermissionDenied,
  EISDIR: ErrorCode.InvalidArgument,
  ENOTDIR: ErrorCode.InvalidArgument,
  ENOTEMPTY: ErrorCode.InvalidArgument,
  EINVAL: ErrorCode.InvalidArgument,
  ELOOP: ErrorCode.InvalidArgument,
  ENAMETOOLONG: ErrorCode.InvalidArgument,
  EXDEV: ErrorCode.InvalidArgument,
};

const ERRNO_TEXT: Readonly<Record<string, string>> = {
  ENOENT: "no such file or directory",
  EEXIST: "already exists",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  EISDIR: "is a directory",
  ENOTDIR: "not a directory",
  ENOTEMPTY: "directory not empty",
  EINVAL: "invalid argument",
  ELOOP: "too many levels of symbolic links",
  ENAMETOOLONG: "name too long",
  EXDEV: "crosses a file system boundary",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EMFILE: "too many open files",
  ENFILE: "too many open files in system",
  EIO: "input/output error",
  EBUSY: "resource busy",
  EAGAIN: "resource temporarily unavailable",
  ENOMEM: "out of memory",
  ENOEXEC: "exec format error",
  E2BIG: "argument list too long",
  ETXTBSY: "text file busy",
};

/** The errno name (e.g. "ENOENT") of a Node system error, if it has one. */
export function errnoOf(err: unknown): string | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === "string" && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/** Maps an errno name to a protocol error code; unknown ones are INTERNAL. */
export function codeForErrno(errno: string | undefined): ErrorCode {
  return (errno !== undefined ? ERRNO_CODES[errno] : undefined) ?? ErrorCode.Internal;
}

/** Human text for an errno name, e.g. "no such file or directory (ENOENT)". */
export function describeErrno(errno: string | undefined): string {
  if (errno === undefined) return "unexpected error";
  const text = ERRNO_TEXT[errno];
  return text === undefined ? errno : `${text} (${errno})`;
}

/** Quotes a value for a message, cut to a bounded length. */
export function quote(value: string): string {
  return JSON.stringify(value.length > MAX_QUOTED ? `${value.slice(0, MAX_QUOTED)}...` : value);
}

/** Cuts a message to the protocol's bound. */
export function boundMessage(message: string): string {
  return message.length > MAX_ERROR_MESSAGE ? `${message.slice(0, MAX_ERROR_MESSAGE - 3)}...` : message;
}

const CLASS_FOR_CODE: Partial<Record<ErrorCode, new (message: string, options?: { cause?: unknown }) => MvmError>> = {
  NOT_FOUND: NotFoundError,
  ALREADY_EXISTS: AlreadyExistsError,
  PERMISSION_DENIED: PermissionDeniedError,
  INVALID_ARGUMENT: InvalidArgumentError,
};

/**
 * Wraps a failed file-system call into a typed error.
 * @example fsError(err, "Cannot open", "/work/a") // NotFoundError: Cannot open "/work/a": no such file or directory (ENOENT)
 */
export function fsError(err: unknown, action: string, path: string): MvmError {
  const errno = errnoOf(err);
  const Cls = CLASS_FOR_CODE[codeForErrno(errno)] ?? InternalError;
  return new Cls(boundMessage(`${action} ${quote(path)}: ${describeErrno(errno)}`), { cause: err });
}

/** Throws InvalidArgumentError unless `path` is absolute and normalized. */
export function assertSandboxPath(path: string): void {
  if (!isSandboxPath(path)) {
    throw new InvalidArgumentError(`Path ${quote(path)} must be absolute and normalized`);
  }
}

/**
 * The wire body for anything thrown by a request handler. Never includes a stack; errors that
 * are not MvmErrors become INTERNAL and are also logged (with their stack) to stderr.
 */
export function toErrorBody(err: unknown): ErrorBody {
  if (err instanceof MvmError) return { code: err.code, message: boundMessage(err.message) };
  const errno = errnoOf(err);
  if (errno !== undefined) return { code: codeForErrno(errno), message: boundMessage(describeErrno(errno)) };
  logError("unexpected failure", err);
  const text = err instanceof Error ? err.message : String(err);
  return { code: ErrorCode.Internal, message: boundMessage(`Internal error in the agent: ${text}`) };
}

/** Writes one diagnostic line (and a stack, if any) to stderr. Never throws. */
export function logError(context: string, err?: unknown): void {
  try {
    const detail = err === undefined ? "" : `: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
    process.stderr.write(`mvm-agent: ${context}${detail}\n`);
  } catch {
    // stderr is gone: nothing left to report to.
  }
}
