/**
 * Runs one host tool (veritysetup, mkfs.ext4, debugfs) with argv only, bounded output, and the
 * caller's AbortSignal. The child runs in its own process group; an abort kills the whole group.
 */
import { spawn } from "node:child_process";
import { UnsupportedCapabilityError } from "@mvm/protocol";
import { abortError } from "../../../_internal/signals.js";

/** Output kept per stream; anything beyond it is dropped and `truncated` is set. */
export const MAX_TOOL_OUTPUT_BYTES = 64 * 1024;

export interface ToolResult {
  exitCode: number | null;
  killSignal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when either stream produced more than MAX_TOOL_OUTPUT_BYTES. */
  truncated: boolean;
}

export interface RunToolOptions {
  signal?: AbortSignal | undefined;
  /** @default MAX_TOOL_OUTPUT_BYTES */
  maxOutputBytes?: number;
}

/** Runs `command args…`; resolves with its exit status whatever it is, rejects only if it could not run or was aborted. */
export async function runTool(command: string, args: readonly string[], options: RunToolOptions = {}): Promise<ToolResult> {
  const { signal } = options;
  const maxBytes = options.maxOutputBytes ?? MAX_TOOL_OUTPUT_BYTES;
  if (signal?.aborted) throw abortError(signal, `Running "${command}"`);

  return await new Promise<ToolResult>((resolve, reject) => {
    const child = spawn(command, [...args], {
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let truncated = false;
    let settled = false;

    const keep = (chunks: Buffer[], used: number, chunk: Buffer): number => {
      const room = maxBytes - used;
      if (room <= 0) {
        truncated = true;
        return used;
      }
      if (chunk.length > room) truncated = true;
      const kept = chunk.length > room ? chunk.subarray(0, room) : chunk;
      chunks.push(kept);
      return used + kept.length;
    };
    child.stdout.on("data", (chunk: Buffer) => {
      outBytes = keep(out, outBytes, chunk);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      errBytes = keep(err, errBytes, chunk);
    });

    const onAbort = (): void => {
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // The group is already gone.
        }
      }
    };
    signal?.addEventListener("abort", onAbort, { once: true });

    child.once("error", (cause: NodeJS.ErrnoException) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      if (cause.code === "ENOENT") {
        reject(
          new UnsupportedCapabilityError(`Host tool "${command}" is not installed`, {
            cause,
            hint: "Install cryptsetup-bin (veritysetup) and e2fsprogs (mkfs.ext4, debugfs)",
          }),
        );
      } else {
        reject(cause);
      }
    });
    child.once("close", (exitCode, killSignal) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      if (signal?.aborted) {
        reject(abortError(signal, `Running "${command}"`));
        return;
      }
      resolve({
        exitCode,
        killSignal,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        truncated,
      });
    });
  });
}

/** The last `maxLines` non-empty lines of a tool's stderr, for error messages. */
export function stderrTail(stderr: string, maxLines = 4): string {
  return stderr
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .slice(-maxLines)
    .join("; ");
}
