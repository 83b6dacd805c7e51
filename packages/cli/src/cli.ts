/**
 * The dispatcher: parses the command line, builds the command's context (output, engine
 * connection, interrupts, config) and turns whatever happens into an exit code.
 */
import { AbortedError, InternalError, TransportError, type EngineApi } from "@mvm/protocol";
import { parseCommandLine } from "./args.js";
import type { Command, CommandContext, GlobalOptions, InterruptHandler } from "./command.js";
import { COMMANDS } from "./commands/index.js";
import { configLocation, loadConfig } from "./config.js";
import { ExitCode, signalNumber } from "./exit-code.js";
import type { CliIo, CliSignal, ConnectRequest } from "./io.js";
import { Output } from "./output.js";
import { TierWarning, containerTierAcknowledged } from "./tier-warning.js";
import { UsageError } from "./usage-error.js";
import { VERSION } from "./version.js";

const SIGNALS: readonly CliSignal[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE"];

/** The engine connection a command gets from its policy and the global flags. */
export function connectRequestFor(command: Command, global: GlobalOptions): ConnectRequest {
  if (command.connection === "none") throw new InternalError(`Command "${command.name}" has no engine connection`);
  if (global.embedded) {
    if (command.connection === "daemon") {
      throw new UsageError(`"mvmctl ${command.name}" works on sandboxes kept by a daemon; --embedded would lose them when mvmctl exits`, {
        hint: 'Start a daemon with "mvmctl daemon", or use "mvmctl run --embedded" for a one-shot command',
      });
    }
    return { mode: "embedded" };
  }
  const mode = command.connection === "daemon" || global.socketPath !== undefined ? "daemon" : "auto";
  return global.socketPath === undefined ? { mode } : { mode, socketPath: global.socketPath };
}

async function connectWithHint(io: CliIo, request: ConnectRequest): Promise<EngineApi> {
  try {
    return await io.connect(request);
  } catch (err) {
    if (err instanceof TransportError && err.hint === undefined && request.mode === "daemon") {
      throw new TransportError(err.message, { cause: err, hint: 'Start a daemon with "mvmctl daemon" (or pass --socket PATH to the one running)' });
    }
    throw err;
  }
}

/** True for the errors an aborted AbortSignal produces (ours or the platform's). */
function isAbort(err: unknown): boolean {
  return err instanceof AbortedError || (err instanceof Error && err.name === "AbortError");
}

/**
 * Runs mvmctl with `argv` (the words after the program name) and resolves to its exit code.
 * Never throws: every failure is printed as `error:`/`hint:` lines.
 */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  let parsed: ReturnType<typeof parseCommandLine>;
  try {
    parsed = parseCommandLine(argv, COMMANDS);
  } catch (err) {
    return new Output(io.stdout, io.stderr, argv.includes("--json")).error(err);
  }
  if (parsed.kind === "help") {
    (parsed.exitCode === 0 ? io.stdout : io.stderr).write(parsed.text);
    return parsed.exitCode;
  }
  if (parsed.kind === "version") {
    io.stdout.write(parsed.json ? `${JSON.stringify({ version: VERSION })}\n` : `mvmctl ${VERSION}\n`);
    return ExitCode.Ok;
  }

  const { command, global } = parsed;
  const out = new Output(io.stdout, io.stderr, global.json);
  let connectRequest: ConnectRequest | undefined;
  try {
    if (command.connection !== "none") connectRequest = connectRequestFor(command, global);
  } catch (err) {
    return out.error(err);
  }

  const controller = new AbortController();
  let interrupts = 0;
  let lastSignal: CliSignal | undefined;
  const defaultHandler: InterruptHandler = (signal, count) => {
    if (count === 1) controller.abort(new AbortedError(`Interrupted by ${signal}`));
    else io.exitNow(ExitCode.SignalBase + (signalNumber(signal) ?? 2));
  };
  let handler: InterruptHandler = defaultHandler;
  const disposers = SIGNALS.map((signal) =>
    io.onSignal(signal, () => {
      interrupts += 1;
      lastSignal = signal;
      if (interrupts >= 3) {
        io.stderr.write(`mvmctl: ${signal} again: exiting without cleanup\n`);
        io.exitNow(ExitCode.SignalBase + (signalNumber(signal) ?? 2));
      }
      handler(signal, interrupts);
    }),
  );

  let tierWarning: Promise<TierWarning> | undefined;
  const ctx: CommandContext = {
    io,
    global,
    out,
    signal: controller.signal,
    connect: () => {
      if (connectRequest === undefined) return Promise.reject(new InternalError(`Command "${command.name}" has no engine connection`));
      return connectWithHint(io, connectRequest);
    },
    onInterrupt(next) {
      handler = next;
      return () => {
        if (handler === next) handler = defaultHandler;
      };
    },
    tierWarning() {
      tierWarning ??= (async () => {
        const location = configLocation(io.env, io.uid, io.homeDir);
        const config = await loadConfig(location);
        return new TierWarning((text) => io.stderr.write(text), containerTierAcknowledged(io.env, config), location.path);
      })();
      return tierWarning;
    },
  };

  try {
    return await parsed.run(ctx);
  } catch (err) {
    if (lastSignal !== undefined && controller.signal.aborted && isAbort(err)) {
      io.stderr.write(`mvmctl: interrupted by ${lastSignal}\n`);
      return ExitCode.SignalBase + (signalNumber(lastSignal) ?? 2);
    }
    return out.error(err);
  } finally {
    for (const dispose of disposers) dispose();
  }
}
