/**
 * The running processes of one sandbox, from any client (docs/TERMINALS.md):
 * `mvmctl ps ID` lists them, `mvmctl attach ID PID` follows one (what it printed before, within
 * its backlog, then live output; mvmctl exits with its exit code), `mvmctl pkill ID PID` signals one.
 */
import { AbortedError, KillSignal, NotFoundError, SIGNALS, type EngineApi, type ProcessInfo } from "@mvm/protocol";
import { defineCommand, type CommandContext } from "../command.js";
import { exitCodeOf } from "../exit-code.js";
import { sandboxIdArg, stringFlag } from "../flags.js";
import type { OutStream } from "../io.js";
import { formatTable, printable } from "../text.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

function pidArg(value: string): number {
  const pid = /^[1-9][0-9]{0,9}$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(pid)) throw new UsageError(`Invalid PID "${value}": expected a positive integer`, { hint: 'The PID column of "mvmctl ps ID"' });
  return pid;
}

async function findProcess(ctx: CommandContext, engine: EngineApi, sandboxId: string, pid: number): Promise<ProcessInfo> {
  const found = (await engine.listProcesses(sandboxId, { signal: ctx.signal })).find((p) => p.pid === pid);
  if (found === undefined) {
    throw new NotFoundError(`No running process with pid ${pid} in sandbox "${sandboxId}"`, { hint: `List them with "mvmctl ps ${sandboxId}"` });
  }
  return found;
}

export const psCommand = defineCommand<{ sandboxId: string }>({
  name: "ps",
  summary: "List the running processes of a sandbox",
  usage: "ID",
  details: "PID is the process's id inside the sandbox, for attach and pkill. With --json an array of\n{proc, pid, argv, startedAtMs} is printed.",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "daemon",
  parse: (raw) => ({ sandboxId: sandboxIdArg(raw.positionals[0] ?? "") }),
  async run(ctx, { sandboxId }) {
    return withEngine(ctx, async (engine) => {
      const processes = await engine.listProcesses(sandboxId, { signal: ctx.signal });
      ctx.out.jsonResult(processes);
      if (!ctx.global.json) {
        const rows = processes.map((p) => [String(p.pid), new Date(p.startedAtMs).toISOString(), printable(p.argv.join(" "), 200)]);
        ctx.out.human(formatTable(["PID", "STARTED", "COMMAND"], rows));
      }
      return 0;
    });
  },
});

export const attachCommand = defineCommand<{ sandboxId: string; pid: number }>({
  name: "attach",
  summary: "Follow a running process of a sandbox: its earlier output, then live",
  usage: "ID PID",
  details:
    "Prints what the process printed before (within the backlog its exec kept, 256 KiB by default),\n" +
    "then its live output, and exits with its exit code. An interrupt (Ctrl-C) detaches: the\n" +
    "process runs on. Stop it with mvmctl pkill.",
  flags: {},
  positionals: { min: 2, max: 2 },
  connection: "daemon",
  parse: (raw) => ({ sandboxId: sandboxIdArg(raw.positionals[0] ?? ""), pid: pidArg(raw.positionals[1] ?? "") }),
  async run(ctx, { sandboxId, pid }) {
    if (ctx.global.json) throw new UsageError("attach streams output: --json is not supported");
    return withEngine(ctx, async (engine) => {
      const found = await findProcess(ctx, engine, sandboxId, pid);
      const detach = new AbortController();
      const restore = ctx.onInterrupt((signal) => detach.abort(new AbortedError(`Detached by ${signal}`)));
      try {
        const started = await engine.connectProcess(
          sandboxId,
          found.proc,
          { onStdout: (chunk) => passOn(ctx.io.stdout, chunk), onStderr: (chunk) => passOn(ctx.io.stderr, chunk) },
          { signal: detach.signal },
        );
        try {
          return exitCodeOf(await started.exit);
        } catch (err) {
          if (!detach.signal.aborted) throw err;
          ctx.out.note(`mvmctl: detached; process ${pid} runs on`);
          return 0;
        }
      } finally {
        restore();
      }
    });
  },
});

export const pkillCommand = defineCommand<{ sandboxId: string; pid: number; signal: KillSignal }>({
  name: "pkill",
  summary: "Send a signal to a running process of a sandbox (its whole process group)",
  usage: "[--signal NAME] ID PID",
  details: `The signal is one of ${SIGNALS.join(", ")}; SIGTERM is followed by SIGKILL after the\nprocess's grace period.`,
  flags: { signal: { type: "string", valueName: "NAME", description: "The signal to send (default SIGKILL)" } },
  positionals: { min: 2, max: 2 },
  connection: "daemon",
  parse(raw) {
    const name = stringFlag(raw, "signal") ?? "SIGKILL";
    const parsed = KillSignal.safeParse(name.startsWith("SIG") ? name : `SIG${name}`);
    if (!parsed.success) throw new UsageError(`Invalid value "${name}" for --signal: expected one of ${SIGNALS.join(", ")}`);
    return { sandboxId: sandboxIdArg(raw.positionals[0] ?? ""), pid: pidArg(raw.positionals[1] ?? ""), signal: parsed.data };
  },
  async run(ctx, { sandboxId, pid, signal }) {
    return withEngine(ctx, async (engine) => {
      const found = await findProcess(ctx, engine, sandboxId, pid);
      await engine.signalProcess(sandboxId, found.proc, signal, { signal: ctx.signal });
      ctx.out.jsonResult({ sandboxId, pid, signal });
      ctx.out.human(`${pid}\n`);
      return 0;
    });
  },
});

function passOn(stream: OutStream, chunk: Uint8Array): Promise<void> | undefined {
  if (stream.write(chunk)) return;
  return stream.drained?.();
}
