/**
 * Test fixtures for the namespace backend: a busybox root filesystem, the agent runtime with the
 * stand-in agent, launch specs, and a client for the stand-in agent's line protocol.
 */
import { randomInt } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import type { Resources } from "@mvm/protocol";
import { assembleAgentRuntime, type AgentRuntime } from "../../runtime/agent-runtime.js";
import { STAND_IN_AGENT_SOURCE } from "../../runtime/_stand-in-agent.js";
import { listProcessesWithId, readProcStat } from "../../_internal/proc.js";
import type { LaunchSpec, ReapRecord } from "../types.js";

export const BUSYBOX = "/bin/busybox";

/** A world-searchable temporary directory (sandbox uids must reach what is inside). */
export async function makeTestRoot(prefix = "mvm-ns-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await chmod(dir, 0o755);
  return dir;
}

/** Deletes a test root (some runtime directories are read-only). */
export async function removeTestRoot(dir: string): Promise<void> {
  execFileSync("chmod", ["-R", "u+w", dir]);
  await rm(dir, { recursive: true, force: true });
}

/** A minimal image: busybox and its applets in /bin, plus the mount points the backend needs. */
export async function buildBusyboxRootfs(dir: string): Promise<string> {
  await mkdir(join(dir, "bin"), { recursive: true, mode: 0o755 });
  for (const sub of ["proc", "dev", "work", "tmp", ".mvm", "etc"]) await mkdir(join(dir, sub), { mode: 0o755 });
  await copyFile(BUSYBOX, join(dir, "bin", "busybox"));
  await chmod(join(dir, "bin", "busybox"), 0o755);
  const applets = execFileSync(BUSYBOX, ["--list"], { encoding: "utf8" }).split("\n").filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== "busybox");
  for (const applet of applets) await symlink("busybox", join(dir, "bin", applet));
  await writeFile(join(dir, "etc", "passwd"), "root:x:0:0::/:/bin/sh\nsandbox:x:1000:1000::/work:/bin/sh\n", { mode: 0o644 });
  await chmod(dir, 0o755);
  return dir;
}

/** The agent runtime with the stand-in agent, under `root/runtime`. */
export async function buildStandInRuntime(root: string): Promise<AgentRuntime> {
  const source = join(root, "stand-in-agent.cjs");
  await writeFile(source, STAND_IN_AGENT_SOURCE, { mode: 0o644 });
  return assembleAgentRuntime({ agentBundlePath: source, outRoot: join(root, "runtime") });
}

const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";
export function randomSandboxId(): string {
  return `sbx_${Array.from({ length: 20 }, () => BASE32[randomInt(32)]).join("")}`;
}

export interface SpecInput {
  readonly root: string;
  readonly rootfsDir: string;
  readonly agentDir: string;
  readonly resources?: Resources;
  readonly workMiB?: number;
  readonly tmpMiB?: number;
}

/** A launch spec with a fresh state directory (0700) under `root/state`. */
export async function makeSpec(input: SpecInput): Promise<LaunchSpec> {
  const sandboxId = randomSandboxId();
  const stateDir = join(input.root, "state", sandboxId);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  return {
    sandboxId,
    rootfsDir: input.rootfsDir,
    agentDir: input.agentDir,
    stateDir,
    workMiB: input.workMiB ?? 16,
    tmpMiB: input.tmpMiB ?? 16,
    resources: input.resources ?? {},
    agentLogPath: join(stateDir, "agent.log"),
  };
}

export interface Hello {
  hello: true;
  pid: number;
  uid: number;
  argv: string[];
}

export interface ShellResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Speaks the stand-in agent's line protocol over a byte channel. */
export class StandInClient {
  private buffered = "";
  private readonly waiting: Array<(line: string) => void> = [];
  private readonly lines: string[] = [];
  readonly hello: Promise<Hello>;

  constructor(private readonly channel: Duplex) {
    channel.setEncoding("utf8");
    channel.on("data", (chunk: string) => {
      this.buffered += chunk;
      for (let nl = this.buffered.indexOf("\n"); nl >= 0; nl = this.buffered.indexOf("\n")) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        const waiter = this.waiting.shift();
        if (waiter) waiter(line);
        else this.lines.push(line);
      }
    });
    this.hello = this.next() as Promise<Hello>;
  }

  private next(): Promise<unknown> {
    const ready = this.lines.shift();
    if (ready !== undefined) return Promise.resolve(JSON.parse(ready));
    return new Promise((resolve, reject) => {
      const onClose = (): void => reject(new Error("the channel closed before a reply"));
      this.channel.once("close", onClose);
      this.waiting.push((line) => {
        this.channel.off("close", onClose);
        resolve(JSON.parse(line));
      });
    });
  }

  async echo(text: string): Promise<string> {
    this.channel.write(`${JSON.stringify({ echo: text })}\n`);
    return ((await this.next()) as { echo: string }).echo;
  }

  /** Makes the agent write `bytes` bytes to its own stderr. */
  async stderr(bytes: number): Promise<void> {
    this.channel.write(`${JSON.stringify({ stderr: bytes })}\n`);
    await this.next();
  }

  /** Runs `/bin/sh -c command` inside the sandbox. */
  async sh(command: string): Promise<ShellResult> {
    this.channel.write(`${JSON.stringify({ sh: command })}\n`);
    return (await this.next()) as ShellResult;
  }
}

/** Files in a directory, or [] when it does not exist. */
export async function listDir(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}

/**
 * What is left on the host of a sandbox: running processes (by cgroup path or sandbox uid) and
 * cgroup directories. Zombies are not counted: they run nothing, and reaping orphans is the
 * host init's job.
 */
export async function footprint(record: ReapRecord, sandboxId: string): Promise<{ processes: number[]; cgroups: string[] }> {
  const hostUid = record.extra["hostUid"];
  const candidates = new Set<number>(hostUid !== undefined ? await listProcessesWithId(Number(hostUid)) : []);
  for (const name of await listDir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const cgroup = await readFile(`/proc/${name}/cgroup`, "utf8").catch(() => "");
    if (cgroup.includes(sandboxId)) candidates.add(Number(name));
  }
  candidates.add(record.pid);
  const initPid = Number(record.extra["initPid"] ?? 0);
  if (initPid > 0) candidates.add(initPid);
  const processes: number[] = [];
  for (const pid of candidates) {
    const stat = await readProcStat(pid);
    if (stat === undefined || stat.state === "Z" || stat.state === "X") continue;
    if (pid === record.pid && stat.startTime !== record.pidStartTime) continue;
    if (pid === initPid && stat.startTime !== record.extra["initStartTime"]) continue;
    processes.push(pid);
  }
  const cgroups: string[] = [];
  for (const dir of record.cgroups) if (existsSync(dir)) cgroups.push(dir);
  return { processes, cgroups };
}
