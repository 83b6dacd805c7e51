/**
 * The shape of an mvmctl command: its flags, how its arguments become typed options, and what
 * it does with an engine.
 */
import type { EngineApi } from "@mvm/protocol";
import type { CliIo, CliSignal } from "./io.js";
import type { Output } from "./output.js";
import type { TierWarning } from "./tier-warning.js";

export interface FlagSpec {
  type: "string" | "boolean";
  /** May be given more than once; the values are collected in order. */
  multiple?: boolean;
  /** One-letter alias, e.g. "h". */
  short?: string;
  /** Placeholder shown in help, e.g. "MiB". */
  valueName?: string;
  description: string;
}

/** A command's arguments after flag parsing, before conversion to typed options. */
export interface RawArgs {
  values: Readonly<Record<string, string | boolean | readonly string[] | undefined>>;
  positionals: readonly string[];
  /** The words after `--` for commands that run a command; undefined when there was no `--`. */
  trailing: readonly string[] | undefined;
}

/** Flags every command accepts. */
export interface GlobalOptions {
  json: boolean;
  socketPath: string | undefined;
  embedded: boolean;
}

/**
 * How a command reaches an engine. "auto": the daemon when one answers, else in-process.
 * "daemon": the command addresses sandboxes that outlive mvmctl, so it needs a daemon.
 * "none": the command opens no engine connection through `connect()`.
 */
export type ConnectionPolicy = "auto" | "daemon" | "none";

/** Called on each interrupt signal; `count` starts at 1. */
export type InterruptHandler = (signal: CliSignal, count: number) => void;

export interface CommandContext {
  readonly io: CliIo;
  readonly global: GlobalOptions;
  readonly out: Output;
  /** Aborted by the first interrupt unless the command installed its own handler. */
  readonly signal: AbortSignal;
  /** Connects as the command's policy and the global flags say. The caller closes the engine. */
  connect(): Promise<EngineApi>;
  /**
   * Replaces what an interrupt does until the returned function is called (then the default,
   * aborting `signal`, applies again). A third interrupt always ends mvmctl at once.
   */
  onInterrupt(handler: InterruptHandler): () => void;
  /** Loads the config file and returns the once-per-run container-tier warning. */
  tierWarning(): Promise<TierWarning>;
}

export interface CommandDef<O> {
  /** Words that select it: "run", "image build". */
  name: string;
  summary: string;
  /** Argument synopsis after the name, e.g. "ID -- CMD...". */
  usage: string;
  /** Further help text, printed after the options. */
  details?: string;
  flags: Readonly<Record<string, FlagSpec>>;
  positionals: { min: number; max: number };
  /** The words after `--` are the command to run inside the sandbox. */
  trailingCommand?: boolean;
  connection: ConnectionPolicy;
  /** Converts and checks the arguments; throws UsageError. */
  parse(raw: RawArgs): O;
  /** Does the work; resolves to mvmctl's exit code. */
  run(ctx: CommandContext, options: O): Promise<number>;
}

/** A command with its option type hidden, as kept in the command table. */
export interface Command {
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  readonly details: string | undefined;
  readonly flags: Readonly<Record<string, FlagSpec>>;
  readonly positionals: { min: number; max: number };
  readonly trailingCommand: boolean;
  readonly connection: ConnectionPolicy;
  /** Parses `raw`; returns the typed options and a function that runs the command with them. */
  prepare(raw: RawArgs): { options: unknown; run(ctx: CommandContext): Promise<number> };
}

export function defineCommand<O>(def: CommandDef<O>): Command {
  return {
    name: def.name,
    summary: def.summary,
    usage: def.usage,
    details: def.details,
    flags: def.flags,
    positionals: def.positionals,
    trailingCommand: def.trailingCommand ?? false,
    connection: def.connection,
    prepare(raw) {
      const options = def.parse(raw);
      return { options, run: (ctx) => def.run(ctx, options) };
    },
  };
}
