/**
 * Help text, generated from the command table so it always matches what the parser accepts.
 */
import type { Command, FlagSpec } from "./command.js";
import { GLOBAL_FLAGS } from "./flags.js";

function flagLabel(name: string, spec: FlagSpec): string {
  const short = spec.short !== undefined ? `-${spec.short}, ` : "";
  const value = spec.type === "string" ? ` ${spec.valueName ?? "VALUE"}` : "";
  return `${short}--${name}${value}${spec.multiple ? "..." : ""}`;
}

function flagLines(flags: Readonly<Record<string, FlagSpec>>): string {
  const entries = Object.entries(flags).map(([name, spec]) => [flagLabel(name, spec), spec.description] as const);
  const width = Math.max(...entries.map(([label]) => label.length));
  return entries.map(([label, description]) => `  ${label.padEnd(width)}  ${description}\n`).join("");
}

function commandLines(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}\n`).join("");
}

export function topHelp(commands: readonly Command[]): string {
  return (
    "mvmctl: run untrusted code in isolated sandboxes\n\n" +
    "Usage: mvmctl [--json] [--socket PATH | --embedded] COMMAND [ARGS...]\n\n" +
    "Commands:\n" +
    commandLines(commands) +
    "\nFlags of every command:\n" +
    flagLines(GLOBAL_FLAGS) +
    "  -V, --version  Print the version\n" +
    '\nRun "mvmctl COMMAND --help" for a command\'s flags.\n' +
    "Exit codes: 0 success, 1 error, 2 usage error; run and exec pass the command's code through\n" +
    "(124 when it timed out, 128+N when signal N killed it).\n"
  );
}

export function commandHelp(command: Command): string {
  const own = Object.fromEntries(Object.entries(command.flags).filter(([name]) => !(name in GLOBAL_FLAGS)));
  let text = `${command.summary}\n\nUsage: mvmctl ${command.name}${command.usage === "" ? "" : ` ${command.usage}`}\n`;
  if (Object.keys(own).length > 0) text += `\nFlags:\n${flagLines(own)}`;
  text += `\nFlags of every command:\n${flagLines(GLOBAL_FLAGS)}`;
  if (command.details !== undefined) text += `\n${command.details}\n`;
  return text;
}

/** Help of a command group such as "image". */
export function groupHelp(group: string, commands: readonly Command[]): string {
  return `Usage: mvmctl ${group} SUBCOMMAND [ARGS...]\n\nSubcommands:\n${commandLines(commands)}`;
}
