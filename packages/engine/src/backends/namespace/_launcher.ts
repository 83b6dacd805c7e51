/**
 * Test fixture run as its own node process, so that a test can launch a sandbox from another
 * uid (the unprivileged case) or kill the launching process outright (the crash case).
 *
 *   node _launcher.js hold <spec.json>       launches, prints {"reapRecord": ...}, waits forever
 *   node _launcher.js scenario <input.json>  runs the unprivileged scenario, prints a JSON summary
 *   node _launcher.js snapshot <input.json>  snapshots a sandbox and restores it (or input.archive) into another
 *   node _launcher.js capture <input.json>   launches input.spec, fills /work with input.fillMiB MiB, prints
 *                                            {"reapRecord": ...}, then captures into input.dir (to be killed mid-way)
 */
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
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

interface SnapshotInput {
  readonly root: string;
  readonly rootfsDir: string;
  readonly agentDir: string;
  /** A /work archive to restore when the capture is refused. */
  readonly archive: string;
}

async function snapshotScenario(inputPath: string): Promise<void> {
  const input = JSON.parse(await readFile(inputPath, "utf8")) as SnapshotInput;
  const backend = new NamespaceBackend();
  const a = await backend.launch(await makeSpec(input));
  const clientA = new StandInClient(a.channel);
  await clientA.hello;
  await clientA.sh("mkdir /work/d && echo secret > /work/d/f && chmod 000 /work/d/f /work/d && echo in-tmp > /tmp/t");
  const dir = join(input.root, "state", `capture-${process.pid}`);
  await mkdir(dir, { mode: 0o700 });
  let refused: { code: string; message: string } | undefined;
  let captured: { work?: string; tmp?: string } | undefined;
  try {
    captured = (await a.snapshot!({ memory: false, dir })).parts;
  } catch (err) {
    refused = { code: (err as { code?: string }).code ?? "", message: (err as Error).message };
  }
  const stillRuns = await clientA.echo("alive");
  await a.destroy();
  const b = await backend.launch({ ...(await makeSpec(input)), restore: { memory: false, parts: captured ?? { work: input.archive }, shape: {} } });
  const clientB = new StandInClient(b.channel);
  await clientB.hello;
  const restored = await clientB.sh("chmod 700 /work/d 2>/dev/null; chmod 600 /work/d/f 2>/dev/null; cat /work/d/f /tmp/t 2>/dev/null; ls /work");
  await b.destroy();
  process.stdout.write(`${JSON.stringify({ uid: process.getuid?.(), refused, captured: captured !== undefined, stillRuns, restored: restored.stdout })}\n`);
}

async function capture(inputPath: string): Promise<void> {
  const input = JSON.parse(await readFile(inputPath, "utf8")) as { spec: LaunchSpec; dir: string; fillMiB: number };
  const sandbox = await new NamespaceBackend().launch(input.spec);
  const client = new StandInClient(sandbox.channel);
  await client.hello;
  await client.sh(`head -c ${input.fillMiB * 1024 * 1024} /dev/urandom > /work/big`);
  process.stdout.write(`${JSON.stringify({ reapRecord: sandbox.reapRecord })}\n`);
  await sandbox.snapshot!({ memory: false, dir: input.dir });
  process.stdout.write("captured\n");
  setInterval(() => undefined, 60_000);
}

/** Runs only when executed as a program, never when imported. */
function main(): void {
  const [mode, arg] = process.argv.slice(2);
  const modes: Record<string, (arg: string) => Promise<void>> = { hold, scenario, snapshot: snapshotScenario, capture };
  const run = mode !== undefined ? modes[mode] : undefined;
  if (run === undefined || arg === undefined) {
    process.stderr.write("usage: _launcher.js hold|scenario|snapshot|capture <file.json>\n");
    process.exit(2);
  }
  run(arg).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
