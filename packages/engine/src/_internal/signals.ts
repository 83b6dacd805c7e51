import { AbortedError, TimeoutError, type CallOptions, type MvmError } from "@mvm/protocol";

/** The signal for a call: the caller's, its deadline, both, or none. */
export function callSignal(options: CallOptions): AbortSignal | undefined {
  const parts: AbortSignal[] = [];
  if (options.signal) parts.push(options.signal);
  if (options.timeoutMs !== undefined) parts.push(AbortSignal.timeout(options.timeoutMs));
  if (parts.length === 0) return undefined;
  return parts.length === 1 ? parts[0] : AbortSignal.any(parts);
}

/** Converts an aborted signal's reason into the matching typed error. */
export function abortError(signal: AbortSignal, what: string): MvmError {
  const reason: unknown = signal.reason;
  if (reason instanceof DOMException && reason.name === "TimeoutError") return new TimeoutError(`${what} timed out`, { cause: reason });
  return new AbortedError(`${what} was aborted`, { cause: reason });
}
