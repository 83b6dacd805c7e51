/**
 * `mvmctl ls`: list the daemon's sandboxes.
 */
import { defineCommand } from "../command.js";
import { formatTable } from "../text.js";
import { withEngine } from "./_lifetime.js";

export const lsCommand = defineCommand<Record<string, never>>({
  name: "ls",
  summary: "List sandboxes",
  usage: "",
  details: "With --json an array of sandbox records is printed.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const sandboxes = await engine.listSandboxes({ signal: ctx.signal });
      ctx.out.jsonResult(sandboxes);
      if (!ctx.global.json) {
        const rows = sandboxes.map((s) => [
          s.id,
          s.state,
          s.backend,
          s.tier,
          s.image.ref,
          s.createdAt,
          s.expiresAt,
          Object.entries(s.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(","),
        ]);
        ctx.out.human(formatTable(["ID", "STATE", "BACKEND", "TIER", "IMAGE", "CREATED", "EXPIRES", "LABELS"], rows));
      }
      return 0;
    });
  },
});
