/**
 * The exit codes mvmctl returns, and how a sandboxed command's end maps onto one.
 */
import { constants } from "node:os";
import type { ExitInfo } from "@mvm/protocol";

/** Exit codes of mvmctl itself. A passed-through command may exit with any value 0..255. */
export const ExitCode = {
  Ok: 0,
  /** mvmctl or the engine failed: the message says why. */
  Error: 1,
  /** The command line was wrong. */
  Usage: 2,
  /** The command ran past `--timeout` (as coreutils `timeout`). */
  Timeout: 124,
  /** Added to a signal number when the command was killed by that signal. */
  SignalBase: 128,
} as const;

/**
 * The number of a POSIX signal name such as "SIGKILL", or undefined when the name is unknown
 * or not a signal name at all.
 */
export function signalNumber(name: string): number | undefined {
  if (!/^SIG[A-Z0-9]{1,12}$/.test(name)) return undefined;
  const n = (constants.signals as Record<string, number | undefined>)[name];
  return typeof n === "number" && Number.isInteger(n) && n > 0 && n < 128 ? n : undefined;
}

/**
 * The exit code mvmctl returns for a command that ran in a sandbox: 124 when it timed out, its
 * own exit code when it exited, 128 + the signal number when a signal killed it. A report that
 * fits none of these (an exit code outside 0..255, an unknown signal) maps to 1, never to 0.
 */
export function exitCodeOf(exit: Pick<ExitInfo, "exitCode" | "signal" | "timedOut">): number {
  if (exit.timedOut) return ExitCode.Timeout;
  if (exit.exitCode !== null) {
    const code = exit.exitCode;
    return Number.isInteger(code) && code >= 0 && code <= 255 ? code : ExitCode.Error;
  }
  if (exit.signal !== null) {
    const n = signalNumber(exit.signal);
    return n === undefined ? ExitCode.Error : ExitCode.SignalBase + n;
  }
  return ExitCode.Error;
}
