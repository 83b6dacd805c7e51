/** A sandbox's logs: the tail of its agent's log file and its workload's recent output, redacted. */
import { open } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, LogCursor, MAX_LOG_LINES, type CallOptions, type LogSource, type SandboxLogLine, type SandboxLogs } from "@mvm/protocol";
import { cut } from "../workload-log.js";
import { liveSandbox, type EngineCore } from "./core.js";

/** Bytes read from the end of the agent's log. */
const AGENT_LOG_TAIL_BYTES = 256 * 1024;

/**
 * The sandbox's logs, the last `tail` lines; with `after` (the `next` of an earlier answer) only
 * what arrived since that answer: workload chunks newer than its sequence number, agent log bytes
 * past its offset (at most the last AGENT_LOG_TAIL_BYTES of them).
 */
export async function sandboxLogs(core: EngineCore, id: string, options: CallOptions & { source?: LogSource; tail?: number; after?: string } = {}): Promise<SandboxLogs> {
  const tail = options.tail ?? MAX_LOG_LINES;
  if (!Number.isSafeInteger(tail) || tail < 1) throw new InvalidArgumentError(`Invalid tail "${tail}": expected a whole number of lines >= 1`);
  let after: { seq: number; offset: number } | undefined;
  if (options.after !== undefined) {
    const parsed = LogCursor.safeParse(options.after);
    if (!parsed.success) throw new InvalidArgumentError(`Invalid logs cursor "${String(options.after).slice(0, 40)}": expected the "next" of an earlier logs answer`);
    const [seq, offset] = parsed.data.split(".").map(Number) as [number, number];
    after = { seq, offset };
  }
  const sandbox = liveSandbox(core, id);
  const lines: SandboxLogLine[] = [];
  let truncated = false;
  let offset = after?.offset ?? 0;
  let seq = after?.seq ?? 0;
  if (options.source !== "workload") {
    const agent = await readTail(join(core.records.sandboxDir(id), "agent.log"), AGENT_LOG_TAIL_BYTES, after?.offset);
    truncated ||= agent.truncated;
    offset = agent.end;
    for (const line of agent.text.split("\n")) if (line !== "") lines.push({ source: "agent", text: cut(sandbox.redact(line)) });
  }
  if (options.source !== "agent") {
    const workload = sandbox.workloadLog.lines(after?.seq);
    truncated ||= workload.truncated;
    seq = workload.seq;
    lines.push(...workload.lines);
  }
  const next = `${seq}.${offset}`;
  const max = Math.min(tail, MAX_LOG_LINES);
  if (lines.length > max) return { lines: lines.slice(-max), truncated: true, next };
  return { lines, truncated, next };
}

/**
 * The last `maxBytes` of a file, or with `from` its bytes from that offset on (the last `maxBytes`
 * of them), up to its last whole line; empty when it is missing. A first partial line is dropped
 * when the read was cut. `end` is the offset just past the lines read.
 */
async function readTail(path: string, maxBytes: number, from?: number): Promise<{ text: string; truncated: boolean; end: number }> {
  const handle = await open(path, "r").catch(() => undefined);
  if (handle === undefined) return { text: "", truncated: false, end: 0 };
  try {
    const { size } = await handle.stat();
    // A log shorter than the cursor was started anew: read it from its start.
    const since = from !== undefined && from <= size ? from : 0;
    const start = Math.max(since, size - maxBytes);
    const cutShort = start > since || (from === undefined && start > 0);
    const buf = Buffer.alloc(size - start);
    const { bytesRead } = await handle.read(buf, 0, buf.length, start);
    let bytes = buf.subarray(0, bytesRead);
    // Only whole lines: a line still being written is read by the next call.
    const lastNewline = bytes.lastIndexOf(0x0a);
    bytes = bytes.subarray(0, lastNewline + 1);
    let text = bytes.toString("utf8");
    if (cutShort) text = text.slice(text.indexOf("\n") + 1);
    return { text, truncated: cutShort, end: start + bytes.byteLength };
  } finally {
    await handle.close();
  }
}
