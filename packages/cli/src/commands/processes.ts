/**
 * The running processes of one sandbox, from any client (docs/TERMINALS.md):
 * `mvmctl ps ID` lists them, `mvmctl attach ID PID` attaches to one (what it printed before,
 * within its backlog, then live output; stdin forwarded; `-it` drives its terminal; mvmctl exits
 * with its exit code; attach.ts), `mvmctl pkill ID PID` signals one.
 */
import { KillSignal, NotFoundError, SIGNALS, type EngineApi, type ProcessInfo } from "@mvm/protocol";
import { attachProcess, type AttachMode } from "../attach.js";
import { defineCommand, type CommandContext } from "../command.js";
import { booleanFlag, sandboxIdArg, stringFlag } from "../flags.js";
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

export const attachCommand = defineCommand<{ sandboxId: string; pid: number } & AttachMode>({
  name: "attach",
  summary: "Attach to a running process of a sandbox: its earlier output, then live, and your input",
  usage: "[-i] [-t] [--no-stdin] ID PID",
  details:
    "Prints what the process printed before (within the backlog its exec kept, 256 KiB by default),\n" +
    "then its live output, writes mvmctl's stdin to the process's stdin, and exits with its exit\n" +
    "code. The end of mvmctl's input does not close the process's stdin. An interrupt (Ctrl-C)\n" +
    "detaches: the process runs on (stop it with mvmctl pkill).\n" +
    "-it on a process started on a terminal (exec -it, commands.start with pty) drives that terminal\n" +
    "like exec -it: raw keys (Ctrl-C goes to the process), the window size follows yours, and\n" +
    "Ctrl-P Ctrl-Q detaches.",
  flags: {
    interactive: { type: "boolean", short: "i", description: "Forward stdin (the default; with -t reads like exec -it)" },
    tty: { type: "boolean", short: "t", description: "Drive the process's terminal from yours: raw keys, window size; Ctrl-P Ctrl-Q detaches" },
    "no-stdin": { type: "boolean", description: "Follow the output only; do not forward stdin" },
  },
  positionals: { min: 2, max: 2 },
  connection: "daemon",
  parse(raw) {
    const noStdin = booleanFlag(raw, "no-stdin");
    if (noStdin && booleanFlag(raw, "interactive")) throw new UsageError("-i and --no-stdin contradict each other", { hint: "Give one of them" });
    if (noStdin && booleanFlag(raw, "tty")) throw new UsageError("-t needs stdin: it cannot be combined with --no-stdin");
    return { sandboxId: sandboxIdArg(raw.positionals[0] ?? ""), pid: pidArg(raw.positionals[1] ?? ""), stdin: !noStdin, tty: booleanFlag(raw, "tty") };
  },
  async run(ctx, { sandboxId, pid, ...mode }) {
    if (ctx.global.json) throw new UsageError("attach streams output: --json is not supported");
    return withEngine(ctx, async (engine) => attachProcess(ctx, engine, sandboxId, await findProcess(ctx, engine, sandboxId, pid), mode));
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
