/**
 * Watching a sandboxed writer from the host through /proc (the namespace backend's processes are
 * host processes), and measuring a process's peak memory. Test code only.
 */
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
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

/** Polls until `count` processes run exactly `argv` below `ancestor`; the test's timeout bounds the wait. */
export async function findDescendants(ancestor: number, argv: readonly string[], count = 1): Promise<number[]> {
  const want = `${argv.join("\0")}\0`;
  for (;;) {
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
    if (found.length >= count) return found;
    await delay(20);
  }
}

/**
 * Resolves with the bytes `pid` wrote (wchar) once it has been asleep in write(2) with an unchanged
 * count for `polls` polls in a row: a writer whose output is taken never passes this for long.
 * Rejects when the writer ends first (nothing held it back).
 */
export async function waitWriterStalled(pid: number, polls = 10): Promise<number> {
  let stable = 0;
  let last = -1;
  for (;;) {
    const m = /^wchar: (\d+)$/m.exec(read(`/proc/${pid}/io`) ?? "");
    if (!m) throw new Error(`Writer ${pid} ended: nothing held it back`);
    const written = Number(m[1]);
    const stat = read(`/proc/${pid}/stat`) ?? "";
    const asleepInWrite = stat.slice(stat.lastIndexOf(")") + 2).startsWith("S ") && (read(`/proc/${pid}/syscall`) ?? "").startsWith("1 ");
    stable = asleepInWrite && written === last ? stable + 1 : 0;
    last = written;
    if (stable >= polls) return written;
    await delay(50);
  }
}

/** A field of /proc/PID/status in KiB ("VmRSS", "VmHWM"). */
export function memoryKiB(pid: number, field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(read(`/proc/${pid}/status`) ?? "");
  if (!m) throw new Error(`No ${field} for process ${pid}`);
  return Number(m[1]);
}

/**
 * A `--require` preload that writes the process's peak RSS (VmHWM, KiB) to `$MVM_TEST_PEAK_FILE`
 * as it exits, so a short-lived child's peak can be read after it is gone. Returns its path.
 */
export function peakRecorder(dir: string): string {
  const path = join(dir, "record-peak.cjs");
  writeFileSync(
    path,
    `const fs = require("node:fs");
process.on("exit", () => {
  const m = /^VmHWM:\\s+(\\d+) kB$/m.exec(fs.readFileSync("/proc/self/status", "utf8"));
  if (m && process.env.MVM_TEST_PEAK_FILE) fs.writeFileSync(process.env.MVM_TEST_PEAK_FILE, m[1]);
});
`,
  );
  return path;
}
