/**
 * The command-line parser: global flags, the command word(s), then the command's own flags with
 * util.parseArgs. Every mistake is a UsageError with a message naming the offending word.
 */
import { parseArgs } from "node:util";
import type { Command, CommandContext, FlagSpec, GlobalOptions, RawArgs } from "./command.js";
import { GLOBAL_FLAGS } from "./flags.js";
import { commandHelp, groupHelp, topHelp } from "./help.js";
import { UsageError } from "./usage-error.js";

export type ParsedCommandLine =
  | { kind: "help"; text: string; exitCode: 0 | 2 }
  | { kind: "version"; json: boolean }
  | {
      kind: "command";
      command: Command;
      global: GlobalOptions;
      /** The command's typed options (for tests and logging). */
      options: unknown;
      run(ctx: CommandContext): Promise<number>;
    };

const helpHint = (name: string): string => `Run "mvmctl ${name} --help" for its usage`;

/** Edit distance (insertions, deletions, substitutions, adjacent swaps) between two short words. */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The one name of `names` closest to `word` (a typo: at most a third of its letters off, two at
 * most), or that `word` begins; undefined when none is close, or two are equally close.
 */
export function nearest(word: string, names: readonly string[]): string | undefined {
  if (word.length < 2) return undefined;
  const limit = Math.min(2, Math.floor(word.length / 3));
  let best: string | undefined;
  let bestDistance = Infinity;
  let tie = false;
  for (const name of names) {
    const distance = name.startsWith(word) ? 0.5 : editDistance(word, name);
    if (distance < bestDistance) {
      best = name;
      bestDistance = distance;
      tie = false;
    } else if (distance === bestDistance) tie = true;
  }
  return best !== undefined && !tie && (bestDistance === 0.5 || bestDistance <= limit) ? best : undefined;
}

/** Parses global flags given before the command word; returns them and the index of the first other word. */
function parseLeadingGlobals(argv: readonly string[]): { global: GlobalOptions; help: boolean; version: boolean; next: number } {
  const global: GlobalOptions = { json: false, socketPath: undefined, embedded: false };
  let help = false;
  let version = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (!arg.startsWith("-") || arg === "-") break;
    if (arg === "--") {
      i++;
      break;
    }
    if (arg === "--json") global.json = true;
    else if (arg === "--embedded") global.embedded = true;
    else if (arg === "-h" || arg === "--help") help = true;
    else if (arg === "-V" || arg === "--version") version = true;
    else if (arg === "--socket" || arg.startsWith("--socket=")) {
      const value = arg === "--socket" ? argv[++i] : arg.slice("--socket=".length);
      if (value === undefined || value === "") throw new UsageError('Option "--socket" needs a value', { hint: "Give the daemon's socket path" });
      global.socketPath = value;
    } else {
      throw new UsageError(`Unknown option "${arg}"`, { hint: 'Run "mvmctl --help" for the usage' });
    }
  }
  return { global, help, version, next: i };
}

/** Parses one command's arguments with util.parseArgs, checking every token against its flag table. */
export function parseCommandArgs(command: Command, args: readonly string[]): RawArgs & { help: boolean } {
  let optionArgs = args;
  let trailing: readonly string[] | undefined;
  if (command.trailingCommand) {
    const dash = args.indexOf("--");
    if (dash >= 0) {
      optionArgs = args.slice(0, dash);
      trailing = args.slice(dash + 1);
    }
  }
  const flags: Record<string, FlagSpec> = { ...GLOBAL_FLAGS, ...command.flags };
  const options = Object.fromEntries(
    Object.entries(flags).map(([name, f]) => [name, f.short === undefined ? { type: f.type } : { type: f.type, short: f.short }]),
  );
  const { tokens } = parseArgs({ args: [...optionArgs], options, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, string | boolean | string[]> = {};
  const positionals: string[] = [];
  for (const token of tokens) {
    if (token.kind === "positional") {
      positionals.push(token.value);
      continue;
    }
    if (token.kind === "option-terminator") continue;
    const spec = flags[token.name];
    if (spec === undefined) {
      const near = nearest(token.name, Object.keys(flags));
      const hint =
        near !== undefined
          ? `Did you mean "--${near}"? ${helpHint(command.name)}`
          : command.trailingCommand && trailing === undefined
            ? `Put the command to run after "--": mvmctl ${command.name} ${command.usage}`
            : helpHint(command.name);
      throw new UsageError(`Unknown option "${token.rawName}" for "mvmctl ${command.name}"`, { hint });
    }
    if (spec.type === "boolean") {
      if (token.value !== undefined) throw new UsageError(`Option "--${token.name}" takes no value`, { hint: helpHint(command.name) });
      values[token.name] = true;
      continue;
    }
    if (token.value === undefined) {
      throw new UsageError(`Option "--${token.name}" needs a value`, { hint: helpHint(command.name) });
    }
    if (spec.multiple) {
      const list = values[token.name];
      values[token.name] = Array.isArray(list) ? [...list, token.value] : [token.value];
    } else {
      if (token.name in values) throw new UsageError(`Option "--${token.name}" is given more than once`, { hint: helpHint(command.name) });
      values[token.name] = token.value;
    }
  }
  return { values, positionals, trailing, help: values["help"] === true };
}

/**
 * Parses mvmctl's arguments (without the node and script paths) against the command table.
 * Throws UsageError.
 */
export function parseCommandLine(argv: readonly string[], commands: readonly Command[]): ParsedCommandLine {
  const lead = parseLeadingGlobals(argv);
  if (lead.version) return { kind: "version", json: lead.global.json };
  let rest = argv.slice(lead.next);
  let helpRequested = lead.help;
  if (rest[0] === "help") {
    helpRequested = true;
    rest = rest.slice(1);
  }
  const word = rest[0];
  if (word === undefined) return { kind: "help", text: topHelp(commands), exitCode: helpRequested ? 0 : 2 };

  let command = commands.find((c) => c.name === word);
  let consumed = 1;
  if (command === undefined) {
    const group = commands.filter((c) => c.name.startsWith(`${word} `));
    if (group.length === 0) {
      const near = nearest(word, [...new Set(commands.map((c) => c.name.split(" ")[0]!))]);
      const list = `Commands: ${commands.map((c) => c.name).join(", ")}`;
      throw new UsageError(`Unknown command "${word}"`, { hint: near !== undefined ? `Did you mean "${near}"? ${list}` : list });
    }
    const sub = rest[1];
    if (sub === undefined || sub === "--help" || sub === "-h") {
      return { kind: "help", text: groupHelp(word, group), exitCode: helpRequested || sub !== undefined ? 0 : 2 };
    }
    command = group.find((c) => c.name === `${word} ${sub}`);
    if (command === undefined) {
      throw new UsageError(`Unknown command "${word} ${sub}"`, { hint: `Subcommands of "${word}": ${group.map((c) => c.name.slice(word.length + 1)).join(", ")}` });
    }
    consumed = 2;
  }
  if (helpRequested) return { kind: "help", text: commandHelp(command), exitCode: 0 };

  const parsed = parseCommandArgs(command, rest.slice(consumed));
  if (parsed.help) return { kind: "help", text: commandHelp(command), exitCode: 0 };

  const global: GlobalOptions = {
    json: lead.global.json || parsed.values["json"] === true,
    socketPath: typeof parsed.values["socket"] === "string" ? parsed.values["socket"] : lead.global.socketPath,
    embedded: lead.global.embedded || parsed.values["embedded"] === true,
  };
  if (global.embedded && global.socketPath !== undefined) {
    throw new UsageError('Options "--embedded" and "--socket" exclude each other', { hint: "--socket selects a daemon; --embedded runs the engine inside mvmctl" });
  }
  const { min, max } = command.positionals;
  const count = parsed.positionals.length;
  // A command that runs a command takes the words after its own positionals when there is no "--".
  if (count < min) throw new UsageError(`Missing arguments for "mvmctl ${command.name}": expected ${command.usage}`, { hint: helpHint(command.name) });
  if (count > max && !(command.trailingCommand && parsed.trailing === undefined)) {
    throw new UsageError(`Unexpected argument "${parsed.positionals[max] ?? ""}"`, { hint: helpHint(command.name) });
  }
  const raw: RawArgs = { values: parsed.values, positionals: parsed.positionals, trailing: parsed.trailing };
  let prepared: ReturnType<Command["prepare"]>;
  try {
    prepared = command.prepare(raw);
  } catch (err) {
    if (err instanceof UsageError && err.hint === undefined) throw new UsageError(err.message, { cause: err.cause, hint: helpHint(command.name) });
    throw err;
  }
  return { kind: "command", command, global, options: prepared.options, run: prepared.run };
}
