/**
 * Small helpers over /proc for processes the engine did not spawn itself (or no longer holds a
 * handle to): start-time checks against pid reuse, signalling, and bounded waits.
 */
import { readFileSync, readdirSync } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import { setTimeout as delay } from "node:timers/promises";

/** The fields of /proc/PID/stat the engine uses. */
export interface ProcStat {
  readonly pid: number;
  /** One-letter state: R, S, D, Z (zombie), T, X, ... */
  readonly state: string;
  readonly ppid: number;
  readonly pgrp: number;
  /** Field 22: start time in clock ticks since boot, kept as a decimal string. */
  readonly startTime: string;
}

/**
 * Parses the text of /proc/PID/stat. The command name (field 2) may contain spaces and
 * parentheses, so the fields after it are located from the last ")".
 */
export function parseProcStat(text: string): ProcStat | undefined {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 1 || close < open) return undefined;
  const pid = Number(text.slice(0, open).trim());
  const rest = text.slice(close + 1).trim().split(/\s+/);
  // rest[0] is field 3 (state); field N is rest[N - 3].
  const state = rest[0];
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const startTime = rest[19];
  if (!Number.isInteger(pid) || pid <= 0 || state === undefined || startTime === undefined) return undefined;
  if (!/^[0-9]+$/.test(startTime) || !Number.isInteger(ppid) || !Number.isInteger(pgrp)) return undefined;
  return { pid, state, ppid, pgrp, startTime };
}

/** Reads /proc/PID/stat; undefined when the process does not exist (any more). */
export async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

/** The start time (field 22 of /proc/PID/stat) of a live or zombie process, or undefined. */
export async function readProcStartTime(pid: number): Promise<string | undefined> {
  return (await readProcStat(pid))?.startTime;
}

/**
 * Synchronous variant for a child just spawned: until the event loop runs again, node cannot have
 * reaped it, so its /proc entry is still there even if it already exited.
 */
export function readProcStartTimeSync(pid: number): string | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, "utf8"))?.startTime;
  } catch {
    return undefined;
  }
}

/**
 * True when `pid` names the same process that had `startTime` and it has not exited yet.
 * Zombies count as exited: they run no code and hold no resources but their pid.
 */
export async function isSameLiveProcess(pid: number, startTime: string): Promise<boolean> {
  const stat = await readProcStat(pid);
  return stat !== undefined && stat.startTime === startTime && stat.state !== "Z" && stat.state !== "X";
}

/** Sends `signal` to `pid` (or to process group `-pid` when negative). False when there is no such target. */
export function sendSignal(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw err;
  }
}

/** Sends SIGKILL to `pid` only when it is still the process that started at `startTime`. */
export async function killIfSame(pid: number, startTime: string): Promise<boolean> {
  if (!(await isSameLiveProcess(pid, startTime))) return false;
  return sendSignal(pid, "SIGKILL");
}

/**
 * Waits until `pid` with `startTime` has exited (gone or zombie). Used only for processes the
 * engine holds no handle to (after a crash), so there is no exit event to wait on: checks /proc
 * at a short interval, bounded by `timeoutMs`. Resolves true when it exited in time.
 */
export async function waitForExit(pid: number, startTime: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    if (!(await isSameLiveProcess(pid, startTime))) return true;
    if (Date.now() >= deadline) return false;
    await delay(pollBackoffMs(attempt));
  }
}

/**
 * How long to wait before the next look at something that usually happens within a few ms (a
 * killed process exiting, a cgroup emptying): 1, 1, 2, 2, 4, 4, 8, 8, then 10 ms.
 */
export function pollBackoffMs(attempt: number): number {
  return Math.min(10, 1 << Math.floor(attempt / 2));
}

/** The real uid of a process from /proc/PID/status, or undefined when it is gone. */
export async function readProcUid(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const match = /^Uid:\s+([0-9]+)/m.exec(status);
    return match?.[1] === undefined ? undefined : Number(match[1]);
  } catch {
    return undefined;
  }
}

/** Pids of every process whose real, effective, saved or filesystem uid or gid equals `id`. */
export async function listProcessesWithId(id: number): Promise<number[]> {
  // Synchronous reads: /proc is in memory, and a few hundred thread-pool round trips cost far
  // more (tens of ms) than blocking the event loop for the scan (a few ms).
  const found: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(name)) continue;
    let status: string;
    try {
      status = readFileSync(`/proc/${name}/status`, "utf8");
    } catch {
      continue;
    }
    const ids = [/^Uid:\s+(.*)$/m.exec(status)?.[1], /^Gid:\s+(.*)$/m.exec(status)?.[1]]
      .flatMap((line) => (line ?? "").trim().split(/\s+/))
      .map(Number);
    if (ids.includes(id)) found.push(Number(name));
  }
  return found;
}
