/**
 * `mvmctl run`: create a sandbox, run one command in it with live output, kill the sandbox,
 * exit with the command's exit code.
 */
import { imageCommand, NotFoundError, requestFromPlan, type CreateSandboxRequest, type EngineApi, type ExecApiRequest, type SandboxInfo } from "@mvm/protocol";
import { defineCommand, type FlagSpec, type RawArgs } from "../command.js";
import { describePlan, planText, readPlanFile } from "../plan-file.js";
import { UsageError } from "../usage-error.js";
import { noticeChosenTier } from "../tier.js";
import { cliCreateRequest } from "../tier-warning.js";
import { isImageWork } from "../progress.js";
import { EXEC_FLAGS, SANDBOX_FLAGS, TERMINAL_FLAGS, booleanFlag, createRequestFrom, execRequestFrom, integerFlag, stringFlag } from "../flags.js";
import { streamExec, type ExecJsonResult } from "../streaming.js";
import { checkTerminalUse, streamTerminal } from "../terminal.js";
import { killCreated, withEngine, withRelease } from "./_lifetime.js";

export interface RunOptions {
  /** `plan`: print the signed plan of this run and boot nothing. */
  mode: "live" | "plan";
  /** The workload; absent when it comes from `planFile`. */
  create: CreateSandboxRequest | undefined;
  /** The command; absent with a plan file whose plan names it. */
  exec: ExecApiRequest | undefined;
  planFile: string | undefined;
  planIndex: number | undefined;
  validForSeconds: number | undefined;
  raw: RawArgs;
  /** `-i`: forward stdin even from a terminal. */
  interactive: boolean;
  /** `-t`: run on a terminal in the sandbox. */
  tty: boolean;
  /**
   * With `--image`: the command line as given (maybe empty), run through the image's OCI
   * entrypoint and cmd once the engine has said what they are (see {@link imageCommand}).
   */
  imageArgv?: readonly string[];
}

/**
 * Sets the run's command from the OCI config of its image, as docker does: the entrypoint, then
 * the given argv or else the image's cmd. An image without a config (or not stored yet) leaves
 * the argv as given, which must then name a command.
 */
async function applyImageCommand(engine: EngineApi, options: RunOptions, signal: AbortSignal): Promise<void> {
  if (options.imageArgv === undefined || options.create?.image === undefined) return;
  const info = await engine.inspectImage(options.create.image, { signal }).catch((err: unknown) => {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  });
  const argv = imageCommand(info?.oci, options.imageArgv) ?? [];
  if (argv.length === 0) {
    throw new UsageError(`Missing the command to run: image "${options.create.image}" names none`, { hint: 'Put it after "--", e.g. "-- /bin/echo hi"' });
  }
  options.exec = execRequestFrom(options.raw, argv);
  options.create.command = [...argv];
}

/** Flags of the commands that plan or admit plans. */
export const PLAN_FLAGS = {
  mode: { type: "string", valueName: "live|plan", description: "live (default): run it; plan: print its signed execution plan and boot nothing" },
  plan: { type: "string", valueName: "FILE", description: "Run under this reviewed plan (from --mode plan or mvmctl plan); the workload flags come from it" },
  "plan-index": { type: "string", valueName: "N", description: "Which plan of a bundle file (from 0)" },
  "valid-for": { type: "string", valueName: "SECONDS", description: "With --mode plan: how long the plan may be used (default 3600, at most 86400)" },
  intent: { type: "string", valueName: "DOMAIN:VERB", description: 'What the workload is for, recorded in its plan (default "code:execute")' },
} as const satisfies Record<string, FlagSpec>;

/** Refuses workload flags next to --plan: the plan alone says what runs. */
export function refuseWorkloadFlagsWithPlan(raw: RawArgs): void {
  const given = [...Object.keys(SANDBOX_FLAGS), "intent"].filter((k) => raw.values[k] !== undefined);
  if (given.length > 0) {
    throw new UsageError(`--plan cannot be combined with ${given.map((g) => `--${g}`).join(", ")}`, {
      hint: "The plan fixes the workload; make a new plan to change it",
    });
  }
}

/** `run --json` output. */
export interface RunJsonResult extends ExecJsonResult {
  sandbox: SandboxInfo;
}

export const runCommand = defineCommand<RunOptions>({
  name: "run",
  summary: "Run one command in a new sandbox, then kill the sandbox",
  usage: "[flags] [-- CMD [ARGS...]]",
  details:
    "Output is streamed live. Stdin is forwarded when it is not a terminal. mvmctl exits with the\n" +
    "command's exit code: 124 when it ran past --timeout, 128+N when signal N killed it.\n" +
    "An interrupt (Ctrl-C) is passed to the command; a second one kills it.\n" +
    "-it runs it on a terminal, like docker run -it: mvmctl run -it -- bash\n" +
    "With an OCI image, the command runs after the image's entrypoint, and without one the image's\n" +
    "entrypoint and cmd run, as with docker run IMAGE.",
  flags: { ...SANDBOX_FLAGS, ...EXEC_FLAGS, ...PLAN_FLAGS, ...TERMINAL_FLAGS },
  positionals: { min: 0, max: 0 },
  trailingCommand: true,
  connection: "auto",
  parse(raw) {
    const argv = raw.trailing ?? raw.positionals;
    const modeFlag = stringFlag(raw, "mode") ?? "live";
    if (modeFlag !== "live" && modeFlag !== "plan") throw new UsageError(`Invalid value "${modeFlag}" for --mode: expected live or plan`);
    const mode: RunOptions["mode"] = modeFlag;
    const interactive = booleanFlag(raw, "interactive");
    const tty = booleanFlag(raw, "tty");
    const planFile = stringFlag(raw, "plan");
    const planIndex = integerFlag(raw, "plan-index");
    const validForSeconds = integerFlag(raw, "valid-for");
    if (validForSeconds !== undefined && mode !== "plan") throw new UsageError("--valid-for only applies with --mode plan");
    if (validForSeconds !== undefined && (validForSeconds < 1 || validForSeconds > 86400)) {
      throw new UsageError(`Invalid value "${validForSeconds}" for --valid-for: expected 1 to 86400 seconds`);
    }
    if (planFile !== undefined) {
      if (mode === "plan") throw new UsageError("--plan runs a plan; --mode plan makes one: use one of them");
      refuseWorkloadFlagsWithPlan(raw);
      return { mode, create: undefined, exec: argv.length > 0 ? execRequestFrom(raw, argv) : undefined, planFile, planIndex, validForSeconds, raw, interactive, tty };
    }
    if (planIndex !== undefined) throw new UsageError("--plan-index only applies with --plan");
    const create = createRequestFrom(raw);
    // With an image, its OCI entrypoint and cmd may complete the command (applyImageCommand).
    const fromImage = create.image !== undefined && create.fromSnapshot === undefined;
    const exec = fromImage && argv.length === 0 ? undefined : execRequestFrom(raw, argv);
    // The plan of a one-shot run names its command: the sandbox may run nothing else.
    if (exec !== undefined) create.command = [...exec.argv];
    const intent = stringFlag(raw, "intent");
    if (intent !== undefined) create.intent = intent;
    // A one-shot sandbox lives as long as its command may run (plus a minute), unless --ttl says otherwise.
    const timeoutMs = (exec ?? execRequestFrom(raw, ["-"])).timeoutMs;
    if (create.ttlSeconds === undefined && timeoutMs !== undefined) {
      create.ttlSeconds = Math.min(7 * 24 * 3600, Math.max(600, Math.ceil(timeoutMs / 1000) + 60));
    }
    return { mode, create, exec, planFile, planIndex, validForSeconds, raw, interactive, tty, ...(fromImage ? { imageArgv: [...argv] } : {}) };
  },
  async run(ctx, options) {
    if (options.mode === "plan") {
      return withEngine(ctx, async (engine) => {
        const progress = ctx.out.progress(isImageWork);
        await applyImageCommand(engine, options, ctx.signal);
        let signed;
        try {
          const call = { signal: ctx.signal, onProgress: (e: Parameters<typeof progress.update>[0]) => progress.update(e) };
          signed = await engine.planSandbox(cliCreateRequest(options.create!, ctx.io.env), options.validForSeconds !== undefined ? { ...call, validForSeconds: options.validForSeconds } : call);
        } finally {
          progress.done();
        }
        ctx.out.note(describePlan(signed));
        ctx.io.stdout.write(planText(signed));
        return 0;
      });
    }
    let create = options.create;
    let exec = options.exec;
    if (options.planFile !== undefined) {
      const signed = await readPlanFile(options.planFile, options.planIndex);
      create = requestFromPlan(signed);
      const planned = signed.plan.ir.command;
      if (exec === undefined) {
        if (planned.kind !== "argv") throw new UsageError("The plan admits a session: name the command after --");
        exec = execRequestFrom(options.raw, planned.argv);
      }
    }
    if (options.tty) checkTerminalUse(ctx, options);
    const warning = await ctx.tierWarning();
    return withEngine(ctx, async (engine) => {
      if (options.planFile === undefined) {
        await applyImageCommand(engine, options, ctx.signal);
        create = options.create;
        exec = options.exec;
      }
      const request = cliCreateRequest(create!, ctx.io.env);
      const command = exec!;
      const progress = ctx.out.progress(isImageWork);
      let sandbox: SandboxInfo;
      try {
        sandbox = await engine.createSandbox(request, { signal: ctx.signal, onProgress: (e) => progress.update(e) });
      } finally {
        progress.done();
      }
      noticeChosenTier(ctx.out, request, sandbox);
      for (const w of sandbox.warnings ?? []) ctx.out.note(`warning: ${w}`);
      for (const p of sandbox.ports ?? []) ctx.out.note(`port ${p.guest} published on 127.0.0.1:${p.host}`);
      warning.notice(sandbox.tier, sandbox.backend);
      if (options.tty) {
        return withRelease(
          ctx,
          () => streamTerminal(ctx, engine, sandbox.id, command, options),
          () => killCreated(engine, sandbox.id),
        );
      }
      const result = await withRelease(
        ctx,
        () => streamExec(ctx, engine, sandbox.id, command, { forwardStdin: options.interactive }),
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
