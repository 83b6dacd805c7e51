/**
 * What the mvmctl executable does, shared by the compiled entry (main.ts) and the bundle that
 * bin/mvmctl.cjs runs.
 */
import { runCli } from "./cli.js";
import { processIo } from "./process-io.js";

/** Runs the CLI on `argv` and sets this process's exit code; exits once everything it opened is closed. */
export async function runMain(argv: readonly string[]): Promise<number> {
  const code = await runCli(argv, processIo());
  process.exitCode = code;
  // Everything mvmctl opened is closed by now; a handle left open by a dependency must not keep it running.
  setTimeout(() => process.exit(code), 2000).unref();
  return code;
}
