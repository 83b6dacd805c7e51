/**
 * `mvmctl run`: create a sandbox, run one command in it with live output, kill the sandbox,
 * exit with the command's exit code.
 */
import type { CreateSandboxRequest, ExecApiRequest, SandboxInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { noticeChosenTier } from "../tier.js";
import { isImageWork } from "../progress.js";
import { EXEC_FLAGS, SANDBOX_FLAGS, createRequestFrom, execRequestFrom } from "../flags.js";
import { streamExec, type ExecJsonResult } from "../streaming.js";
import { killCreated, withEngine, withRelease } from "./_lifetime.js";

export interface RunOptions {
  create: CreateSandboxRequest;
  exec: ExecApiRequest;
}

/** `run --json` output. */
export interface RunJsonResult extends ExecJsonResult {
  sandbox: SandboxInfo;
}

export const runCommand = defineCommand<RunOptions>({
  name: "run",
  summary: "Run one command in a new sandbox, then kill the sandbox",
  usage: "[flags] -- CMD [ARGS...]",
  details:
    "Output is streamed live. Stdin is forwarded when it is not a terminal. mvmctl exits with the\n" +
    "command's exit code: 124 when it ran past --timeout, 128+N when signal N killed it.\n" +
    "An interrupt (Ctrl-C) is passed to the command; a second one kills it.",
  flags: { ...SANDBOX_FLAGS, ...EXEC_FLAGS },
  positionals: { min: 0, max: 0 },
  trailingCommand: true,
  connection: "auto",
  parse(raw) {
    const argv = raw.trailing ?? raw.positionals;
    const create = createRequestFrom(raw);
    const exec = execRequestFrom(raw, argv);
    // A one-shot sandbox lives as long as its command may run (plus a minute), unless --ttl says otherwise.
    if (create.ttlSeconds === undefined && exec.timeoutMs !== undefined) {
      create.ttlSeconds = Math.min(7 * 24 * 3600, Math.max(600, Math.ceil(exec.timeoutMs / 1000) + 60));
    }
    return { create, exec };
  },
  async run(ctx, options) {
    const warning = await ctx.tierWarning();
    return withEngine(ctx, async (engine) => {
      const progress = ctx.out.progress(isImageWork);
      let sandbox: SandboxInfo;
      try {
        sandbox = await engine.createSandbox(options.create, { signal: ctx.signal, onProgress: (e) => progress.update(e) });
      } finally {
        progress.done();
      }
      noticeChosenTier(ctx.out, options.create, sandbox);
      for (const w of sandbox.warnings ?? []) ctx.out.note(`warning: ${w}`);
      for (const p of sandbox.ports ?? []) ctx.out.note(`port ${p.guest} published on 127.0.0.1:${p.host}`);
      warning.notice(sandbox.tier, sandbox.backend);
      const result = await withRelease(
        ctx,
        () => streamExec(ctx, engine, sandbox.id, options.exec),
        () => killCreated(engine, sandbox.id),
      );
      if (result.json !== undefined) {
        const json: RunJsonResult = { sandbox, ...result.json };
        ctx.out.jsonResult(json);
      }
      return result.exitCode;
    });
  },
});
