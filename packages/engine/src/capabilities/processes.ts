/** Processes in a sandbox: exec (audited write-ahead), signals, stdin, terminals, reattach, the process list. */
import { randomBytes } from "node:crypto";
import {
  DEFAULT_PROCESS_BACKLOG_BYTES,
  ExecApiRequest,
  NotFoundError,
  PolicyDeniedError,
  PtySizeApiRequest,
  canonicalJson,
  type CallOptions,
  type ExecHandlers,
  type ExecStarted,
  type KillSignal,
  type ProcessInfo,
} from "@mvm/protocol";
import { argvDigest } from "../audit/entry.js";
import { checkSecretHygiene } from "../secrets/warnings.js";
import type { LiveSandbox } from "../live-sandbox.js";
import { liveSandbox, parse, strictSecrets, type EngineCore } from "./core.js";
import { ProcessOutput } from "./process-output.js";

/** Each engine's running processes' output records, by sandbox id, then by process handle. */
const outputs = new WeakMap<EngineCore, Map<string, Map<number, ProcessOutput>>>();

function outputsOf(core: EngineCore, id: string): Map<number, ProcessOutput> {
  let bySandbox = outputs.get(core);
  if (bySandbox === undefined) outputs.set(core, (bySandbox = new Map()));
  let byProc = bySandbox.get(id);
  if (byProc === undefined) bySandbox.set(id, (byProc = new Map()));
  return byProc;
}

function forgetOutput(core: EngineCore, id: string, proc: number): void {
  const byProc = outputs.get(core)?.get(id);
  byProc?.delete(proc);
  if (byProc?.size === 0) outputs.get(core)?.delete(id);
}

export async function exec(core: EngineCore, id: string, request: ExecApiRequest, handlers: ExecHandlers, options: CallOptions = {}): Promise<ExecStarted> {
  return execIn(core, liveSandbox(core, id), request, handlers, options);
}

/** Exec in `sandbox`, found by the caller (a warm sandbox's warm-up finds its own). Audited like every exec. */
export async function execIn(core: EngineCore, sandbox: LiveSandbox, request: ExecApiRequest, handlers: ExecHandlers, options: CallOptions = {}): Promise<ExecStarted> {
  const req = parse(ExecApiRequest, request, "exec request");
  const id = sandbox.info.id;
  const command = core.commands.get(id);
  if (command !== undefined && canonicalJson(command) !== canonicalJson(req.argv)) {
    throw new PolicyDeniedError(`Sandbox "${id}" may only run the command its plan declares`, {
      hint: "Its plan was made for one command; plan a session (no command) to run others",
    });
  }
  const exempt = new Set((sandbox.info.secrets ?? []).map((s) => s.env));
  const warnings = checkSecretHygiene(
    { argv: req.argv, env: req.env ?? {}, exemptEnv: exempt },
    { strict: strictSecrets(core, req.strictSecrets) },
  ).map((w) => w.message);
  // Write-ahead: exec.started is durable before the agent is asked to start the process. The
  // end is recorded as exec.finished before the exit is reported: written (a crash of the engine
  // keeps it), its fdatasync pipelined with the next audit batch (AuditLog.append, "written").
  const execId = `exe_${randomBytes(10).toString("hex")}`;
  await core.gate.record({ type: "exec.started", sandboxId: id, execId, argvDigest: argvDigest(req.argv), argc: req.argv.length });
  const t0 = Date.now();
  const finishedWithoutExit = () =>
    core.gate.record(
      { type: "exec.finished", sandboxId: id, execId, exitCode: null, signal: null, timedOut: false, durationMs: Date.now() - t0 },
      { wait: "written" },
    );
  // Output is recorded (for clients that attach later) before the caller's handler sees it.
  const output = new ProcessOutput(req.backlogBytes ?? DEFAULT_PROCESS_BACKLOG_BYTES);
  const recorded: ExecHandlers = {
    onStdout: (chunk) => {
      output.record("stdout", chunk);
      return handlers.onStdout?.(chunk);
    },
    onStderr: (chunk) => {
      output.record("stderr", chunk);
      return handlers.onStderr?.(chunk);
    },
  };
  let started: ExecStarted;
  try {
    started = await sandbox.exec(req, recorded, options);
  } catch (err) {
    await finishedWithoutExit().catch(() => {});
    throw err;
  }
  const exit = started.exit.then(
    async (e) => {
      const entry = await core.gate.record(
        {
          type: "exec.finished",
          sandboxId: id,
          execId,
          exitCode: e.exitCode !== null && e.exitCode >= 0 && e.exitCode <= 255 ? e.exitCode : null,
          signal: e.signal !== null && /^SIG[A-Z0-9]{1,10}$/.test(e.signal) ? e.signal : null,
          timedOut: e.timedOut,
          durationMs: Math.max(0, Math.round(e.durationMs)),
        },
        { wait: "written" },
      );
      const planId = sandbox.info.receipt?.planId;
      const receipt = { ...e.receipt, ...(planId ? { planId } : {}), auditEntryId: entry.id };
      return { ...e, receipt, ...(warnings.length > 0 ? { warnings } : {}) };
    },
    async (err: unknown) => {
      await finishedWithoutExit().catch(() => {});
      throw err;
    },
  );
  exit.catch(() => {});
  output.pid = started.pid;
  output.setExit(exit);
  const byProc = outputsOf(core, id);
  byProc.set(started.proc, output);
  void exit.then(
    () => forgetOutput(core, id, started.proc),
    () => forgetOutput(core, id, started.proc),
  );
  return { ...started, exit };
}

/**
 * Attaches to a running process started by any client: `handlers` get its backlog, then its
 * live output; `exit` settles with how it ended. Aborting `options.signal` detaches; the
 * process runs on.
 * @throws NotFoundError when the sandbox has no such running process
 */
export async function connectProcess(core: EngineCore, id: string, proc: number, handlers: ExecHandlers, options: CallOptions = {}): Promise<ExecStarted> {
  liveSandbox(core, id);
  const output = outputs.get(core)?.get(id)?.get(proc);
  if (output === undefined) throw new NotFoundError(`Process ${proc} not found in sandbox "${id}" or already finished`);
  const exit = output.attach(handlers, options.signal);
  exit.catch(() => {});
  return { proc, pid: output.pid, exit };
}

export async function signalProcess(core: EngineCore, id: string, proc: number, signal: KillSignal, options: CallOptions = {}): Promise<void> {
  await liveSandbox(core, id).call("signal", { proc, signal }, options);
}

export async function writeStdin(core: EngineCore, id: string, proc: number, data: Uint8Array | null): Promise<void> {
  await liveSandbox(core, id).writeStdin(proc, data);
}

export async function resizePty(core: EngineCore, id: string, proc: number, size: PtySizeApiRequest, options: CallOptions = {}): Promise<void> {
  const { cols, rows } = parse(PtySizeApiRequest, size, "terminal size");
  await liveSandbox(core, id).call("resize", { proc, cols, rows }, options);
}

export async function listProcesses(core: EngineCore, id: string, options: CallOptions = {}): Promise<ProcessInfo[]> {
  return (await liveSandbox(core, id).call("listProcesses", {}, options)).processes;
}

