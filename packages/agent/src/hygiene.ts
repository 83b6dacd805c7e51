/**
 * Process hygiene applied when the agent starts, before anything else runs.
 */
import { closeSync, readFileSync, readdirSync } from "node:fs";
import { Console } from "node:console";

const O_CLOEXEC = 0o2000000;

/**
 * Routes every console method and `process.stdout` to stderr: fd 1 carries protocol frames only.
 */
export function routeConsoleToStderr(): void {
  Object.defineProperty(process, "stdout", { configurable: true, enumerable: true, get: () => process.stderr });
  const toStderr = new Console({ stdout: process.stderr, stderr: process.stderr });
  const target = console as unknown as Record<string, unknown>;
  const source = toStderr as unknown as Record<string, unknown>;
  for (const key of Object.keys(target)) {
    const method = source[key];
    if (typeof method === "function") target[key] = method.bind(toStderr);
  }
}

/**
 * Closes every descriptor above 2 that was inherited without close-on-exec, so no command the
 * agent starts can inherit it. Descriptors Node opens itself are close-on-exec. Returns the
 * descriptors closed.
 */
export function closeInheritedFds(): number[] {
  let names: string[];
  try {
    names = readdirSync("/proc/self/fd");
  } catch {
    return [];
  }
  const closed: number[] = [];
  for (const name of names) {
    const fd = Number(name);
    if (!Number.isInteger(fd) || fd <= 2) continue;
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, "utf8");
    } catch {
      continue;
    }
    const flags = /^flags:\s*([0-7]+)$/m.exec(info)?.[1];
    if (flags === undefined || (parseInt(flags, 8) & O_CLOEXEC) !== 0) continue;
    try {
      closeSync(fd);
      closed.push(fd);
    } catch {
      // Already gone.
    }
  }
  return closed;
}
