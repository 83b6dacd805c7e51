/**
 * Shared pieces of the backend conformance suite: an engine on a throwaway state directory
 * (sharing the host's image store), and small helpers to run commands and collect output.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BackendName, EngineApi, ExecApiRequest, ExitInfo, Resources, SandboxInfo } from "@mvm/protocol";
import { openEngine, type OpenEngineOptions } from "../open.js";
import { defaultStateDir } from "../state.js";
import { DEFAULT_IMAGE } from "../engine.js";

export interface Ran {
  exit: ExitInfo;
  stdout: string;
  stderr: string;
}

export interface TestEngine {
  engine: EngineApi;
  stateDir: string;
  close(): Promise<void>;
}

/** The image store the setup command filled (the default image lives there). */
export function sharedImagesDir(): string {
  return process.env["MVM_TEST_IMAGES_DIR"] ?? join(defaultStateDir(), "images");
}

/** Why the suite cannot run here, or undefined when it can. */
export function unavailableReason(): string | undefined {
  if (!existsSync(sharedImagesDir())) {
    return `no image store at ${sharedImagesDir()}: run scripts/setup.sh first (it builds ${DEFAULT_IMAGE})`;
  }
  return undefined;
}

/** The vm backend's caches (kernel, initramfs, disks, saved VMs), shared by test engines. */
export function sharedVmCacheDir(): string {
  return process.env["MVM_TEST_VM_CACHE_DIR"] ?? join(defaultStateDir(), "vm");
}

export async function testEngine(options: Pick<OpenEngineOptions, "networkSummaryIntervalMs"> = {}): Promise<TestEngine> {
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-conf-"));
  const engine = await openEngine({ ...options, stateDir, imagesDir: sharedImagesDir(), vmCacheDir: sharedVmCacheDir() });
  return {
    engine,
    stateDir,
    async close() {
      await engine.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

export async function run(engine: EngineApi, id: string, argv: string[], req: Partial<ExecApiRequest> = {}): Promise<Ran> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const started = await engine.exec(id, { argv, ...req }, { onStdout: (c) => out.push(Buffer.from(c)), onStderr: (c) => err.push(Buffer.from(c)) });
  const exit = await started.exit;
  return { exit, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
}

export async function sh(engine: EngineApi, id: string, script: string, req: Partial<ExecApiRequest> = {}): Promise<Ran> {
  return run(engine, id, ["/bin/sh", "-c", script], req);
}

export async function create(
  engine: EngineApi,
  backend: BackendName,
  extra: { resources?: Resources; ttlSeconds?: number; workMiB?: number } = {},
): Promise<SandboxInfo> {
  return engine.createSandbox({ backend, image: DEFAULT_IMAGE, ...extra });
}

const PROBE_SOURCE = new URL("../../src/conformance/fixtures/probe.py", import.meta.url);

export interface ProbeOutcome {
  probe: string;
  allowed: boolean;
  detail: string;
}

/** Installs the escape-probe script in the sandbox and runs it with `args`; returns its stdout. */
export async function runProbeScript(engine: EngineApi, id: string, args: readonly string[]): Promise<string> {
  await engine.writeFile(id, "/work/.probe.py", await readFile(PROBE_SOURCE), { mode: 0o555 });
  const r = await run(engine, id, ["python3", "/work/.probe.py", ...args], { env: { MVM_IN_SANDBOX: "1" }, timeoutMs: 30_000 });
  if (r.exit.exitCode !== 0) throw new Error(`probe ${args.join(" ")} failed to run (exit ${r.exit.exitCode}): ${r.stderr}`);
  return r.stdout;
}

/** Installs the escape-probe script in the sandbox and runs one probe. */
export async function probe(engine: EngineApi, id: string, name: string, arg = ""): Promise<ProbeOutcome> {
  return JSON.parse((await runProbeScript(engine, id, [name, arg])).trim()) as ProbeOutcome;
}

/**
 * Host-side view of what a sandbox holds, from its record, for leak checks: its host pid, its
 * cgroups and, on the namespace backend, the host directory of its egress relay's socket.
 */
export async function hostFootprint(stateDir: string, id: string): Promise<{ pid: number; cgroups: string[]; relayDir?: string }> {
  const raw = JSON.parse(await readFile(join(stateDir, "sandboxes", id, "record.json"), "utf8")) as {
    reap?: { pid: number; cgroups: string[]; extra?: Record<string, string> };
  };
  const relayDir = raw.reap?.extra?.["relayDir"];
  return { pid: raw.reap?.pid ?? 0, cgroups: raw.reap?.cgroups ?? [], ...(relayDir !== undefined ? { relayDir } : {}) };
}

/** Processes on the host whose cgroup path names the sandbox. */
export async function processesInSandboxCgroups(id: string): Promise<number[]> {
  const { readdir } = await import("node:fs/promises");
  const pids: number[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if ((await readFile(`/proc/${name}/cgroup`, "utf8")).includes(id)) pids.push(Number(name));
    } catch {
      // raced with exit
    }
  }
  return pids;
}

export async function waitFor(cond: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return cond();
}
