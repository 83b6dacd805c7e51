/**
 * `mvmctl exec ID -- CMD...`: run a command in an existing sandbox with live output; mvmctl
 * exits with the command's exit code.
 */
import type { ExecApiRequest } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { EXEC_FLAGS, execRequestFrom, sandboxIdArg } from "../flags.js";
import { streamExec } from "../streaming.js";
import { withEngine } from "./_lifetime.js";

export interface ExecOptions {
  sandboxId: string;
  exec: ExecApiRequest;
}

export const execCommand = defineCommand<ExecOptions>({
  name: "exec",
  summary: "Run a command in an existing sandbox",
  usage: "[flags] ID -- CMD [ARGS...]",
  details:
    "Output is streamed live. Stdin is forwarded when it is not a terminal. mvmctl exits with the\n" +
    "command's exit code: 124 when it ran past --timeout, 128+N when signal N killed it.",
  flags: { ...EXEC_FLAGS },
  positionals: { min: 1, max: 1 },
  trailingCommand: true,
  connection: "daemon",
  parse(raw) {
    const sandboxId = sandboxIdArg(raw.positionals[0] ?? "");
    const argv = raw.trailing ?? raw.positionals.slice(1);
    return { sandboxId, exec: execRequestFrom(raw, argv) };
  },
  async run(ctx, options) {
    const warning = await ctx.tierWarning();
    return withEngine(ctx, async (engine) => {
      const sandbox = await engine.getSandbox(options.sandboxId, { signal: ctx.signal });
      warning.notice(sandbox.tier, sandbox.backend);
      const result = await streamExec(ctx, engine, sandbox.id, options.exec);
      if (result.json !== undefined) ctx.out.jsonResult(result.json);
      return result.exitCode;
    });
  },
});
