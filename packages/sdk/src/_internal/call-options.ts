import type { CallOptions } from "@mvm/protocol";

/** Only the `signal` and `timeoutMs` of a larger options object. */
export function callOptions(options: CallOptions): CallOptions {
  const out: CallOptions = {};
  if (options.signal !== undefined) out.signal = options.signal;
  if (options.timeoutMs !== undefined) out.timeoutMs = options.timeoutMs;
  return out;
}
