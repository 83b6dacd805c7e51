/**
 * Engine and sandbox lifetimes for commands: whatever a command opens is released on every path,
 * and a release that fails is reported, not swallowed.
 */
import { CleanupError, NotFoundError, type EngineApi } from "@mvm/protocol";
import type { CommandContext } from "../command.js";
import { formatErrorLines, reportOf } from "../output.js";

/**
 * Runs `body` with `release` afterwards. When only the release fails its error is thrown; when
 * both fail the body's error wins and the release's is printed on stderr.
 */
export async function withRelease<T>(ctx: CommandContext, body: () => Promise<T>, release: () => Promise<void>): Promise<T> {
  let result: T;
  try {
    result = await body();
  } catch (err) {
    try {
      await release();
    } catch (releaseErr) {
      ctx.out.note(formatErrorLines(reportOf(releaseErr)).replace(/^error:/, "warning: cleanup also failed:"));
    }
    throw err;
  }
  await release();
  return result;
}

/** Connects to the engine, runs `body`, and closes the connection (for an embedded engine: stops it). */
export async function withEngine<T>(ctx: CommandContext, body: (engine: EngineApi) => Promise<T>): Promise<T> {
  const engine = await ctx.connect();
  return withRelease(ctx, () => body(engine), () => engine.close());
}

/** Kills a sandbox this command created. A sandbox that is already gone counts as killed. */
export async function killCreated(engine: EngineApi, sandboxId: string): Promise<void> {
  try {
    await engine.killSandbox(sandboxId);
  } catch (err) {
    if (err instanceof NotFoundError) return;
    throw new CleanupError(`Cannot kill sandbox "${sandboxId}": ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      hint: `Retry with "mvmctl kill ${sandboxId}"; the engine also kills it when its TTL ends`,
    });
  }
}
