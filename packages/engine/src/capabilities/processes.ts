/** Processes in a sandbox: exec (audited write-ahead), signals, stdin, the process list. */
import { randomBytes } from "node:crypto";
import {
  ExecApiRequest,
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
  let started: ExecStarted;
  try {
    started = await sandbox.exec(req, handlers, options);
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
  return { ...started, exit };
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

