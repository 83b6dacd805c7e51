/**
 * A sandbox's logs on the API: what its agent wrote (its own log) and what its workload printed
 * (the output of its commands, kept by the engine in a bounded window), both with secret values
 * replaced, as the command output callers get is. Schemas only; the engine's side is
 * capabilities/logs.ts.
 */
import { z } from "zod";

/** Most lines one logs answer holds. */
export const MAX_LOG_LINES = 10_000;
/** Longest line kept, in UTF-16 code units; longer ones are cut and marked. */
export const MAX_LOG_LINE_CHARS = 4096;

export const LogSource = z.enum(["agent", "workload"]);
export type LogSource = z.infer<typeof LogSource>;

export const SandboxLogLine = z.strictObject({
  source: LogSource,
  /** For `workload`: the stream of the process that printed it. */
  stream: z.enum(["stdout", "stderr"]).optional(),
  /** For `workload`: the process's handle. */
  proc: z.int().min(0).optional(),
  /** When the engine received it (workload); absent for agent lines. */
  time: z.string().max(40).optional(),
  text: z.string().max(MAX_LOG_LINE_CHARS + 16),
});
export type SandboxLogLine = z.infer<typeof SandboxLogLine>;

/**
 * Where a logs answer ends, to ask for what came after it (`after`): `<workload seq>.<agent log
 * offset>`, two decimal numbers. Opaque to callers; valid for the sandbox that answered it.
 */
export const LogCursor = z.string().regex(/^[0-9]{1,15}\.[0-9]{1,15}$/, "expected a cursor of a previous logs answer");
export type LogCursor = z.infer<typeof LogCursor>;

export const SandboxLogs = z.strictObject({
  lines: z.array(SandboxLogLine).max(MAX_LOG_LINES),
  /**
   * True when lines were dropped (by the engine's bounds or `tail`); with `after`, when some of
   * what came after the cursor was dropped before this answer.
   */
  truncated: z.boolean(),
  /** Pass as `after` to get only the lines that arrive after this answer (`logs --follow`). */
  next: LogCursor.optional(),
});
export type SandboxLogs = z.infer<typeof SandboxLogs>;
