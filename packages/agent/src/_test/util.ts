/**
 * Small helpers shared by the agent's tests.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

/** A fresh temporary directory, removed by the returned dispose function. */
export function tempDir(prefix = "mvm-agent-test-"): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/** The one-letter state of a process ("R", "S", "Z", ...), or undefined once it is gone. */
export function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

/** True while a process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const s = procState(pid);
  return s !== undefined && s !== "Z" && s !== "X";
}

/** Polls /proc until `pid` is dead (gone or a zombie). The test's own timeout bounds the wait. */
export async function waitDead(pid: number): Promise<void> {
  while (isAlive(pid)) await delay(20);
}

/** Polls until `predicate` holds. The test's own timeout bounds the wait. */
export async function waitUntil(predicate: () => boolean, pollMs = 20): Promise<void> {
  while (!predicate()) await delay(pollMs);
}

/** Bytes written so far by a process (wchar of /proc/PID/io), or undefined once it is gone. */
export function writtenBytes(pid: number): number | undefined {
  try {
    const m = /^wchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** True when the process is asleep inside write(2). */
export function blockedInWrite(pid: number): boolean {
  try {
    return procState(pid) === "S" && readFileSync(`/proc/${pid}/syscall`, "utf8").startsWith("1 ");
  } catch {
    return false;
  }
}
