/**
 * `mvmctl exec ID -- CMD...`: run a command in an existing sandbox with live output; mvmctl
 * exits with the command's exit code.
 */
import type { ExecApiRequest } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { EXEC_FLAGS, TERMINAL_FLAGS, booleanFlag, execRequestFrom, sandboxIdArg } from "../flags.js";
import { streamExec } from "../streaming.js";
import { checkTerminalUse, streamTerminal } from "../terminal.js";
import { withEngine } from "./_lifetime.js";

export interface ExecOptions {
  sandboxId: string;
  exec: ExecApiRequest;
  /** `-i`: forward stdin even from a terminal. */
  interactive: boolean;
  /** `-t`: run on a terminal in the sandbox. */
  tty: boolean;
}

export const execCommand = defineCommand<ExecOptions>({
  name: "exec",
  summary: "Run a command in an existing sandbox",
  usage: "[flags] ID -- CMD [ARGS...]",
  details:
    "Output is streamed live. Stdin is forwarded when it is not a terminal (or with -i). mvmctl exits\n" +
    "with the command's exit code: 124 when it ran past --timeout, 128+N when signal N killed it.\n" +
    "-it runs it on a terminal, like docker exec -it: mvmctl exec -it ID -- bash",
  flags: { ...EXEC_FLAGS, ...TERMINAL_FLAGS },
  positionals: { min: 1, max: 1 },
  trailingCommand: true,
  connection: "daemon",
  parse(raw) {
    const sandboxId = sandboxIdArg(raw.positionals[0] ?? "");
    const argv = raw.trailing ?? raw.positionals.slice(1);
    return { sandboxId, exec: execRequestFrom(raw, argv), interactive: booleanFlag(raw, "interactive"), tty: booleanFlag(raw, "tty") };
  },
  async run(ctx, options) {
    if (options.tty) checkTerminalUse(ctx, options);
    const warning = await ctx.tierWarning();
    return withEngine(ctx, async (engine) => {
      const sandbox = await engine.getSandbox(options.sandboxId, { signal: ctx.signal });
      warning.notice(sandbox.tier, sandbox.backend);
      if (options.tty) return streamTerminal(ctx, engine, sandbox.id, options.exec, options);
      const result = await streamExec(ctx, engine, sandbox.id, options.exec, { forwardStdin: options.interactive });
      if (result.json !== undefined) ctx.out.jsonResult(result.json);
      return result.exitCode;
    });
  },
});
