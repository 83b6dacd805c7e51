/**
 * `mvmctl ttl ID SECONDS`: make a live sandbox end SECONDS from now, extending or shortening its
 * TTL. Prints the id and the new expiry; `--json` prints the sandbox.
 */
import { MAX_TTL_SECONDS } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { sandboxIdArg } from "../flags.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

/** SECONDS as the API takes it: a whole number from 1 to 7 days. */
export function parseTtlSeconds(raw: string): number {
  const n = /^[0-9]{1,7}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(n >= 1 && n <= MAX_TTL_SECONDS)) {
    throw new UsageError(`Invalid TTL "${raw.slice(0, 32)}": expected whole seconds from 1 to ${MAX_TTL_SECONDS} (7 days)`, {
      hint: "e.g. mvmctl ttl ID 3600 for one more hour from now",
    });
  }
  return n;
}

export const ttlCommand = defineCommand<{ id: string; ttlSeconds: number }>({
  name: "ttl",
  summary: "Set when a live sandbox ends: SECONDS from now",
  usage: "ID SECONDS",
  details:
    `SECONDS is from 1 to ${MAX_TTL_SECONDS} (7 days), and at most the operator policy's maxTtlSeconds. It may ` +
    "extend or shorten the TTL. On a paused sandbox with a frozen TTL it becomes the time left at resume. " +
    "Recorded in the audit log (sandbox.ttl_set).",
  flags: {},
  positionals: { min: 2, max: 2 },
  connection: "daemon",
  parse: (raw) => ({ id: sandboxIdArg(raw.positionals[0] ?? ""), ttlSeconds: parseTtlSeconds(raw.positionals[1] ?? "") }),
  async run(ctx, { id, ttlSeconds }) {
    return withEngine(ctx, async (engine) => {
      const sandbox = await engine.setSandboxTimeout(id, ttlSeconds, { signal: ctx.signal });
      ctx.out.human(`${sandbox.id} expires ${sandbox.expiresAt}\n`);
      ctx.out.jsonResult(sandbox);
      return 0;
    });
  },
});
