/**
 * @mvm/cli: the mvmctl command line, importable for tests and for embedding its commands.
 */
export { runCli, connectRequestFor } from "./cli.js";
export { parseCommandLine, parseCommandArgs } from "./args.js";
export type { ParsedCommandLine } from "./args.js";
export { COMMANDS } from "./commands/index.js";
export { defineCommand } from "./command.js";
export type {
  Command,
  CommandContext,
  CommandDef,
  ConnectionPolicy,
  FlagSpec,
  GlobalOptions,
  InterruptHandler,
  RawArgs,
} from "./command.js";
export type { CliIo, CliSignal, ConnectRequest, DaemonOptions, InStream, OutStream } from "./io.js";
export { processIo } from "./process-io.js";
export { ExitCode, exitCodeOf, signalNumber } from "./exit-code.js";
export { UsageError } from "./usage-error.js";
export { CliConfigSchema, configLocation, loadConfig, parseConfig, MAX_CONFIG_BYTES } from "./config.js";
export type { CliConfig, ConfigLocation } from "./config.js";
export { TierWarning, containerTierAcknowledged, containerTierWarning } from "./tier-warning.js";
export { ProgressRenderer, formatProgressLine, progressMode } from "./progress.js";
export type { ProgressMode } from "./progress.js";
export { Output, reportOf, formatErrorLines } from "./output.js";
export type { ErrorReport, JsonErrorOutput } from "./output.js";
export type { ExecJsonResult } from "./streaming.js";
export type { RunJsonResult, RunOptions } from "./commands/run.js";
export type { ExecOptions } from "./commands/exec.js";
export type { CpJsonResult, CpOptions, CpEndpoint } from "./commands/cp.js";
export type { DoctorJsonResult } from "./commands/doctor.js";
export type { KillJsonEntry } from "./commands/kill.js";
export { VERSION } from "./version.js";
