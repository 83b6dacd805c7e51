/**
 * `mvmctl kill ID...`: kill sandboxes. Every id is tried; the exit code is 1 when any failed.
 */
import type { SandboxInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { sandboxIdArg } from "../flags.js";
import { formatErrorLines, reportOf } from "../output.js";
import { withEngine } from "./_lifetime.js";

/** One entry of `kill --json` output. */
export type KillJsonEntry = { id: string; ok: true; sandbox: SandboxInfo } | { id: string; ok: false; error: { code: string; message: string } };

export const killCommand = defineCommand<{ ids: string[] }>({
  name: "kill",
  summary: "Kill sandboxes",
  usage: "ID [ID...]",
  details: "With --json an array of {id, ok, sandbox | error} is printed, one entry per id.",
  flags: {},
  positionals: { min: 1, max: Number.POSITIVE_INFINITY },
  connection: "daemon",
  parse: (raw) => ({ ids: [...new Set(raw.positionals.map(sandboxIdArg))] }),
  async run(ctx, { ids }) {
    return withEngine(ctx, async (engine) => {
      const entries: KillJsonEntry[] = [];
      for (const id of ids) {
        try {
          const sandbox = await engine.killSandbox(id, { signal: ctx.signal });
          entries.push({ id, ok: true, sandbox });
          ctx.out.human(`${id}\n`);
        } catch (err) {
          const report = reportOf(err);
          entries.push({ id, ok: false, error: { code: report.code, message: report.message } });
          ctx.out.note(formatErrorLines(report));
        }
      }
      ctx.out.jsonResult(entries);
      return entries.every((e) => e.ok) ? 0 : 1;
    });
  },
});
