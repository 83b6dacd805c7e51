/**
 * `mvmctl create`: start a sandbox that lives until `mvmctl kill` or its TTL, and print its id.
 */
import { requestFromPlan, type CreateSandboxRequest } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { noticeChosenTier } from "../tier.js";
import { cliCreateRequest } from "../tier-warning.js";
import { isImageWork } from "../progress.js";
import { SANDBOX_FLAGS, createRequestFrom, integerFlag, keyValueFlag, stringFlag } from "../flags.js";
import { readPlanFile } from "../plan-file.js";
import { PLAN_FLAGS, refuseWorkloadFlagsWithPlan } from "./run.js";

interface CreateOptions {
  request: CreateSandboxRequest | undefined;
  planFile: string | undefined;
  planIndex: number | undefined;
  labels: Record<string, string> | undefined;
}
import { withEngine } from "./_lifetime.js";

export const createCommand = defineCommand<CreateOptions>({
  name: "create",
  summary: "Start a sandbox and print its id",
  usage: "[flags]",
  details: "The sandbox is kept by the daemon until \"mvmctl kill ID\" or until its TTL ends.\nWith --json the full sandbox record is printed.",
  flags: {
    ...SANDBOX_FLAGS,
    label: { type: "string", multiple: true, valueName: "K=V", description: "Attach a label (repeatable)" },
    plan: PLAN_FLAGS.plan,
    "plan-index": PLAN_FLAGS["plan-index"],
    intent: PLAN_FLAGS.intent,
  },
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse(raw) {
    const labels = keyValueFlag(raw, "label");
    const planFile = stringFlag(raw, "plan");
    const planIndex = integerFlag(raw, "plan-index");
    if (planFile !== undefined) {
      refuseWorkloadFlagsWithPlan(raw);
      return { request: undefined, planFile, planIndex, labels };
    }
    const request = createRequestFrom(raw, labels === undefined ? {} : { labels });
    const intent = stringFlag(raw, "intent");
    if (intent !== undefined) request.intent = intent;
    return { request, planFile, planIndex, labels };
  },
  async run(ctx, options) {
    let request: CreateSandboxRequest;
    if (options.planFile !== undefined) {
      request = requestFromPlan(await readPlanFile(options.planFile, options.planIndex));
      if (options.labels !== undefined) request.labels = options.labels;
    } else {
      request = options.request!;
    }
    request = cliCreateRequest(request, ctx.io.env);
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
