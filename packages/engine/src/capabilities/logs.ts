/** A sandbox's logs: the tail of its agent's log file and its workload's recent output, redacted. */
import { open } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, MAX_LOG_LINES, type CallOptions, type LogSource, type SandboxLogLine, type SandboxLogs } from "@mvm/protocol";
import { cut } from "../workload-log.js";
import { liveSandbox, type EngineCore } from "./core.js";

/** Bytes read from the end of the agent's log. */
const AGENT_LOG_TAIL_BYTES = 256 * 1024;

export async function sandboxLogs(core: EngineCore, id: string, options: CallOptions & { source?: LogSource; tail?: number } = {}): Promise<SandboxLogs> {
  const tail = options.tail ?? MAX_LOG_LINES;
  if (!Number.isSafeInteger(tail) || tail < 1) throw new InvalidArgumentError(`Invalid tail "${tail}": expected a whole number of lines >= 1`);
  const sandbox = liveSandbox(core, id);
  const lines: SandboxLogLine[] = [];
  let truncated = false;
  if (options.source !== "workload") {
    const agent = await readTail(join(core.records.sandboxDir(id), "agent.log"), AGENT_LOG_TAIL_BYTES);
    truncated ||= agent.truncated;
    for (const line of agent.text.split("\n")) if (line !== "") lines.push({ source: "agent", text: cut(sandbox.redact(line)) });
  }
  if (options.source !== "agent") {
    const workload = sandbox.workloadLog.lines();
    truncated ||= workload.truncated;
    lines.push(...workload.lines);
  }
  const max = Math.min(tail, MAX_LOG_LINES);
  if (lines.length > max) return { lines: lines.slice(-max), truncated: true };
  return { lines, truncated };
}

/** The last `maxBytes` of a file (its first partial line dropped when cut); empty when it is missing. */
async function readTail(path: string, maxBytes: number): Promise<{ text: string; truncated: boolean }> {
  const handle = await open(path, "r").catch(() => undefined);
  if (handle === undefined) return { text: "", truncated: false };
  try {
    const { size } = await handle.stat();
    const start = Math.max(0, size - maxBytes);
    const buf = Buffer.alloc(size - start);
    const { bytesRead } = await handle.read(buf, 0, buf.length, start);
    let text = buf.subarray(0, bytesRead).toString("utf8");
    if (start > 0) text = text.slice(text.indexOf("\n") + 1);
    return { text, truncated: start > 0 };
  } finally {
    await handle.close();
  }
}
