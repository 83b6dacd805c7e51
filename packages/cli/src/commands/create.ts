/**
 * `mvmctl create`: start a sandbox that lives until `mvmctl kill` or its TTL, and print its id.
 */
import type { CreateSandboxRequest } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { noticeChosenTier } from "../tier.js";
import { isImageWork } from "../progress.js";
import { SANDBOX_FLAGS, createRequestFrom, keyValueFlag } from "../flags.js";
import { withEngine } from "./_lifetime.js";

export const createCommand = defineCommand<CreateSandboxRequest>({
  name: "create",
  summary: "Start a sandbox and print its id",
  usage: "[flags]",
  details: "The sandbox is kept by the daemon until \"mvmctl kill ID\" or until its TTL ends.\nWith --json the full sandbox record is printed.",
  flags: {
    ...SANDBOX_FLAGS,
    label: { type: "string", multiple: true, valueName: "K=V", description: "Attach a label (repeatable)" },
  },
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse(raw) {
    const labels = keyValueFlag(raw, "label");
    return createRequestFrom(raw, labels === undefined ? {} : { labels });
  },
  async run(ctx, request) {
    const warning = await ctx.tierWarning();
    return withEngine(ctx, async (engine) => {
      const progress = ctx.out.progress(isImageWork);
      try {
        const sandbox = await engine.createSandbox(request, { signal: ctx.signal, onProgress: (e) => progress.update(e) });
        progress.done();
        noticeChosenTier(ctx.out, request, sandbox);
        warning.notice(sandbox.tier, sandbox.backend);
        for (const w of sandbox.warnings ?? []) ctx.out.note(`warning: ${w}`);
        for (const p of sandbox.ports ?? []) ctx.out.note(`port ${p.guest} published on 127.0.0.1:${p.host}`);
        ctx.out.human(`${sandbox.id}\n`);
        ctx.out.jsonResult(sandbox);
        return 0;
      } finally {
        progress.done();
      }
    });
  },
});
