/**
 * Test fixture run as its own node process, so that a test can launch a sandbox from another
 * uid (the unprivileged case) or kill the launching process outright (the crash case).
 *
 *   node _launcher.js hold <spec.json>       launches, prints {"reapRecord": ...}, waits forever
 *   node _launcher.js scenario <input.json>  runs the unprivileged scenario, prints a JSON summary
 */
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import { isSameLiveProcess, readProcUid } from "../../_internal/proc.js";
import type { LaunchSpec } from "../types.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { StandInClient, makeSpec } from "./_fixtures.js";

interface ScenarioInput {
  readonly root: string;
  readonly rootfsDir: string;
  readonly agentDir: string;
  /** Expected to be enforceable (a delegated group), or undefined. */
  readonly pids?: number;
}

async function hold(specPath: string): Promise<void> {
  const spec = JSON.parse(await readFile(specPath, "utf8")) as LaunchSpec;
  const sandbox = await new NamespaceBackend().launch(spec);
  const client = new StandInClient(sandbox.channel);
  const hello = await client.hello;
  process.stdout.write(`${JSON.stringify({ reapRecord: sandbox.reapRecord, hello })}\n`);
  setInterval(() => undefined, 60_000);
}

async function scenario(inputPath: string): Promise<void> {
  const input = JSON.parse(await readFile(inputPath, "utf8")) as ScenarioInput;
  const backend = new NamespaceBackend();
  const probe = await backend.probe();

  let unsupported: string | undefined;
  try {
    const sandbox = await backend.launch(await makeSpec({ ...input, resources: { memoryMiB: 256 } }));
    await sandbox.destroy();
  } catch (err) {
    unsupported = (err as { code?: string }).code;
  }

  const spec = await makeSpec({ ...input, ...(input.pids !== undefined ? { resources: { pids: input.pids } } : {}) });
  const sandbox = await backend.launch(spec);
  const client = new StandInClient(sandbox.channel);
  const hello = await client.hello;
  const id = await client.sh("id -u; id -g");
  const status = await client.sh("grep -E '^(NoNewPrivs|CapEff|Seccomp):' /proc/self/status");
  const pid1 = await client.sh("tr '\\0' ' ' < /proc/1/cmdline; echo; tr '\\0' ' ' < /proc/1/environ");
  const initPid = Number(sandbox.reapRecord.extra["initPid"]);
  const hostUids = [await readProcUid(sandbox.reapRecord.pid), await readProcUid(initPid)];
  const pidsMax = sandbox.reapRecord.cgroups.length > 0 ? (await readFile(`${sandbox.reapRecord.cgroups[0]}/pids.max`, "utf8")).trim() : undefined;
  await sandbox.destroy();
  const leftovers = {
    prelude: await isSameLiveProcess(sandbox.reapRecord.pid, sandbox.reapRecord.pidStartTime),
    init: await isSameLiveProcess(initPid, sandbox.reapRecord.extra["initStartTime"] ?? ""),
  };
  const summary = {
    uid: process.getuid?.(),
    usable: probe.usable,
    enforceable: probe.enforceable,
    unsupported,
    hello,
    id: id.stdout,
    status: status.stdout,
    pid1: pid1.stdout,
    hostUids,
    cgroups: sandbox.reapRecord.cgroups,
    pidsMax,
    extra: sandbox.reapRecord.extra,
    leftovers,
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

/** Runs only when executed as a program, never when imported. */
function main(): void {
  const [mode, arg] = process.argv.slice(2);
  const run = mode === "hold" ? hold : mode === "scenario" ? scenario : undefined;
  if (run === undefined || arg === undefined) {
    process.stderr.write("usage: _launcher.js hold|scenario <file.json>\n");
    process.exit(2);
  }
  run(arg).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
