/**
 * `mvmctl pause ID [--freeze-ttl]` and `mvmctl resume ID`: freeze a sandbox's processes (no CPU,
 * state kept) and let them run again. Prints the id and the state; `--json` prints the sandbox.
 */
import type { SandboxInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { booleanFlag, sandboxIdArg } from "../flags.js";
import { withEngine } from "./_lifetime.js";

function describePause(sandbox: SandboxInfo): string {
  const p = sandbox.pause;
  if (sandbox.state !== "paused" || p === undefined) return `${sandbox.id} ${sandbox.state}\n`;
  const ttl = p.ttl === "running" ? `TTL running, expires ${sandbox.expiresAt}` : p.ttl === "frozen" ? `TTL frozen with ${p.remainingSeconds ?? 0} s left` : "TTL spent";
  return `${sandbox.id} paused (${ttl}; killed at ${p.killAt} unless resumed)\n`;
}

export const pauseCommand = defineCommand<{ id: string; freezeTtl: boolean }>({
  name: "pause",
  summary: "Pause a sandbox: freeze its processes, keep its state",
  usage: "[--freeze-ttl] ID",
  details:
    "While paused, exec, file and process calls fail with SANDBOX_PAUSED. The TTL keeps running unless --freeze-ttl " +
    "(then the remaining time is kept until resume); a sandbox paused with no TTL running is killed after 7 days.",
  flags: { "freeze-ttl": { type: "boolean", description: "Stop the TTL until resume" } },
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse: (raw) => ({ id: sandboxIdArg(raw.positionals[0] ?? ""), freezeTtl: booleanFlag(raw, "freeze-ttl") }),
  async run(ctx, { id, freezeTtl }) {
    return withEngine(ctx, async (engine) => {
      const sandbox = await engine.pauseSandbox(id, freezeTtl ? { ttl: "frozen" } : {}, { signal: ctx.signal });
      ctx.out.human(describePause(sandbox));
      ctx.out.jsonResult(sandbox);
      return 0;
    });
  },
});

export const resumeCommand = defineCommand<{ id: string }>({
  name: "resume",
  summary: "Resume a paused sandbox",
  usage: "ID",
  details: "A TTL frozen by `pause --freeze-ttl` restarts with what it had left; one that ran out (--on-ttl pause) restarts in full.",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse: (raw) => ({ id: sandboxIdArg(raw.positionals[0] ?? "") }),
  async run(ctx, { id }) {
    return withEngine(ctx, async (engine) => {
      const sandbox = await engine.resumeSandbox(id, { signal: ctx.signal });
      ctx.out.human(`${sandbox.id} ${sandbox.state}, expires ${sandbox.expiresAt}\n`);
      ctx.out.jsonResult(sandbox);
      return 0;
    });
  },
});
