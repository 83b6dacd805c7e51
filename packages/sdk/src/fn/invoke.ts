/**
 * One call of a function in a running sandbox: the host's half of the wrapper contract
 * (docs/FUNCTIONS.md). The payload is encoded under the limits, the wrapper runs as an ordinary
 * command (the agent's per-call hygiene applies), and the result is read from the sealed result
 * file only: the function's stdout and stderr go to the caller's handlers and are never parsed.
 */
import { randomBytes } from "node:crypto";
import {
  FN_LIMIT_ENV,
  FN_WRAPPER_COMMAND,
  FunctionError,
  MAX_FN_RESULT_HEADER_BYTES,
  NotFoundError,
  TransportError,
  UnsupportedCapabilityError,
  FnCodecError,
  decodeFnResultFile,
  decodeFnValue,
  encodeFnValue,
  type CallOptions,
  type FnFormat,
  type FnLimits,
  type FnMode,
  type FnRequestHeader,
  type ProcessInfo,
} from "@mvm/protocol";
import type { CommandResult } from "../command-handle.js";
import type { Sandbox } from "../sandbox.js";
import type { FunctionBundle } from "./bundle.js";
import { appendFnLog } from "./operator-log.js";

/** Time the wrapper's own command limit adds past the invoke timeout (the wrapper acts first). */
const COMMAND_GRACE_SECONDS = 5;

export interface InvokeSettings {
  readonly id: string;
  readonly bundle: FunctionBundle;
  readonly format: FnFormat;
  readonly mode: FnMode;
  readonly limits: FnLimits;
  readonly onStdout?: ((chunk: string) => unknown) | undefined;
  readonly onStderr?: ((chunk: string) => unknown) | undefined;
  /** Operator log directory. @default fnLogDir() */
  readonly logDir?: string | undefined;
}

/** The wrapper's MVM_FN_* environment for these limits (it applies the stricter of these and its own). */
function limitsEnv(limits: FnLimits): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of Object.keys(FN_LIMIT_ENV) as (keyof FnLimits)[]) {
    const [name, factor] = FN_LIMIT_ENV[key];
    env[name] = String(Math.ceil(limits[key] / factor));
  }
  return env;
}

/**
 * The process of the call wrapper the engine pre-started in a sandbox just claimed from a function's
 * warm pool (docs/FUNCTIONS.md, "Warm pools"), or undefined (a cold sandbox, or its pre-start did
 * not run). Only for a sandbox no call has run in yet: before the first call, nothing but the
 * agent and the engine's own commands ran in it, so the process is the engine's wrapper, waiting
 * for its one call. Never look for it after a call (a function could leave a look-alike behind).
 */
export async function prestartedWrapper(sb: Sandbox, call: CallOptions = {}): Promise<ProcessInfo | undefined> {
  const procs = await sb.commands.list(call);
  const wrappers = procs.filter((p) => p.argv.length === FN_WRAPPER_COMMAND.length && p.argv.every((a, i) => a === FN_WRAPPER_COMMAND[i]));
  return wrappers.length === 1 ? wrappers[0] : undefined;
}

/**
 * One call through a pre-started wrapper: attach to it (its output streams to the caller's
 * handlers), write the request on its stdin, close it, and wait for its exit.
 */
async function runPrestarted(
  sb: Sandbox,
  wrapper: ProcessInfo,
  stdin: Uint8Array,
  options: CallOptions & { maxOutputBytes: number; onStdout?: (chunk: string) => unknown; onStderr?: (chunk: string) => unknown },
): Promise<CommandResult> {
  const call: CallOptions = options.signal ? { signal: options.signal } : {};
  const handle = await sb.commands.attach(wrapper, { ...options, check: false });
  try {
    await handle.sendStdin(stdin, call);
    await handle.closeStdin(call);
  } catch (err) {
    if (!handle.exited) {
      await handle.kill("SIGKILL").catch(() => false);
      throw err;
    }
  }
  return handle.wait();
}

/**
 * Calls the function in `sb` with `args` (and `kwargs`, empty for JavaScript callers). Resolves
 * with the decoded result.
 * @throws InvalidArgumentError (FnCodecError) when the arguments break a payload rule;
 *   FunctionError when the call did not return a value (`kind` says why); TransportError when
 *   the sandbox sent a result that is unsealed, malformed or breaks the limits
 */
export async function invokeIn(
  sb: Sandbox,
  s: InvokeSettings,
  args: readonly unknown[],
  kwargs: Readonly<Record<string, unknown>>,
  options: CallOptions & { keepResultFile?: boolean; disposable?: boolean; prestarted?: ProcessInfo } = {},
): Promise<unknown> {
  const call: CallOptions = {};
  if (options.signal) call.signal = options.signal;
  const payload = encodeFnValue([args, kwargs], s.format, { maxBytes: s.limits.maxInputBytes, maxDepth: s.limits.maxDepth });
  const key = randomBytes(32).toString("hex");
  const resultPath = `/tmp/.mvm-fn-${randomBytes(12).toString("hex")}.result`;
  const code = Buffer.from(s.bundle.code);
  const header: FnRequestHeader = {
    v: 1,
    id: s.id,
    format: s.format,
    mode: s.mode,
    key,
    resultPath,
    codeBytes: code.length,
    codeSha256: s.bundle.sha256,
    exportName: "default",
    limits: s.limits,
  };
  const stdin = Buffer.concat([Buffer.from(`${JSON.stringify(header)}\n`), code, payload]);
  const output = {
    maxOutputBytes: s.limits.maxOutputBytes,
    ...(s.onStdout ? { onStdout: s.onStdout } : {}),
    ...(s.onStderr ? { onStderr: s.onStderr } : {}),
  };
  const run =
    options.prestarted !== undefined
      ? await runPrestarted(sb, options.prestarted, stdin, { ...call, ...output })
      : await sb.commands.run([...FN_WRAPPER_COMMAND], {
          ...call,
          ...output,
          stdin,
          cwd: "/work",
          env: limitsEnv(s.limits),
          timeoutSeconds: Math.ceil(s.limits.invokeTimeoutMs / 1000) + COMMAND_GRACE_SECONDS,
          check: false,
        });
  if ((sb.engine as { transport?: string }).transport === "record") {
    throw new UnsupportedCapabilityError(`Record mode runs no function: the sandbox of "${s.id}" and its wrapper call are recorded, no result exists`);
  }
  let file: Uint8Array;
  try {
    file = await sb.files.read(resultPath, { ...call, format: "bytes", maxBytes: s.limits.maxOutputBytes + MAX_FN_RESULT_HEADER_BYTES + 256 });
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw new TransportError(`Cannot read the result of function "${s.id}": ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    const how = run.timedOut ? "it timed out" : run.signal ? `signal ${run.signal}` : `exit code ${String(run.exitCode)}`;
    throw new FunctionError(`Function "${s.id}" left no result (${how})`, { kind: run.timedOut ? "timeout" : "crashed" });
  }
  if (!options.disposable) await sb.files.remove(resultPath, call).catch(() => undefined);
  const { header: result, result: bytes } = decodeFnResultFile(key, file, s.id);
  if (result.status === "ok") {
    if (result.format !== s.format) throw new TransportError(`Function "${s.id}" answered in ${result.format}, not ${s.format}`);
    try {
      return decodeFnValue(bytes, s.format, { maxBytes: s.limits.maxOutputBytes, maxDepth: s.limits.maxDepth });
    } catch (err) {
      if (err instanceof FnCodecError) throw new TransportError(`The result of function "${s.id}" was refused: ${err.message}`, { cause: err });
      throw err;
    }
  }
  const { kind, errorId, message } = result.error;
  appendFnLog(
    { time: new Date().toISOString(), functionId: s.id, errorId, kind, message, sandboxId: sb.id, ...(result.stack !== undefined ? { stack: result.stack } : {}) },
    s.logDir,
  );
  const dev = s.mode === "development" && result.stack !== undefined;
  throw new FunctionError(`Function "${s.id}" failed (${kind}): ${message}`, {
    kind,
    errorId,
    ...(dev ? { functionStack: result.stack } : {}),
    hint: dev ? undefined : `mvmctl logs --fn ${s.id} shows the stack of ${errorId}`,
  } as ConstructorParameters<typeof FunctionError>[1]);
}
