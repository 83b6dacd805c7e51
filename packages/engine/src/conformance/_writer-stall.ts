/**
 * Watching a workload from the host through /proc (the namespace backend's processes are host
 * processes): finding it by argv under a given ancestor, and telling when it is held in write(2).
 */
import { readFileSync, readdirSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";

function read(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function parentOf(pid: number): number | undefined {
  const m = /^PPid:\s+(\d+)$/m.exec(read(`/proc/${pid}/status`) ?? "");
  return m ? Number(m[1]) : undefined;
}

/** Host pids of the processes running exactly `argv` that descend from `ancestor`. */
export function descendantsRunning(ancestor: number, argv: readonly string[]): number[] {
  const want = `${argv.join("\0")}\0`;
  const found: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || read(`/proc/${name}/cmdline`) !== want) continue;
    for (let p = parentOf(Number(name)); p !== undefined && p > 1; p = parentOf(p)) {
      if (p === ancestor) {
        found.push(Number(name));
        break;
      }
    }
  }
  return found;
}

/** Polls until `count` processes run `argv` under `ancestor`; the test's own timeout bounds the wait. */
export async function findDescendants(ancestor: number, argv: readonly string[], count = 1): Promise<number[]> {
  for (;;) {
    const found = descendantsRunning(ancestor, argv);
    if (found.length >= count) return found;
    await delay(20);
  }
}

/** Bytes written so far by a process (wchar of /proc/PID/io), or undefined once it is gone. */
export function writtenBytes(pid: number): number | undefined {
  const m = /^wchar: (\d+)$/m.exec(read(`/proc/${pid}/io`) ?? "");
  return m ? Number(m[1]) : undefined;
}

/** True when the process is asleep inside write(2). */
export function blockedInWrite(pid: number): boolean {
  const stat = read(`/proc/${pid}/stat`) ?? "";
  const state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  return state === "S" && (read(`/proc/${pid}/syscall`) ?? "").startsWith("1 ");
}

/**
 * Resolves with the bytes `pid` wrote once it has been asleep in write(2) with an unchanged count
 * for `polls` polls in a row: a writer whose output is taken never passes this for long. Rejects
 * when the writer ends first (nothing held it back).
 */
export async function waitWriterStalled(pid: number, polls = 10): Promise<number> {
  let stable = 0;
  let last = -1;
  for (;;) {
    const written = writtenBytes(pid);
    if (written === undefined) throw new Error(`Writer ${pid} ended: nothing held it back`);
    stable = blockedInWrite(pid) && written === last ? stable + 1 : 0;
    last = written;
    if (stable >= polls) return written;
    await delay(50);
  }
}
