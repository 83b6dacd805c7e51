/**
 * Measuring a process's peak memory, beside the engine's /proc watchers of a sandboxed writer
 * (re-exported from `@mvm/engine/testing`). Test code only.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export { findDescendants, waitWriterStalled } from "@mvm/engine/testing";

function read(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
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
