/**
 * The workload's output as the engine last saw it: a window of the most recent output of every
 * command (already redacted), bounded in bytes, so `mvmctl logs ID` shows what background
 * commands printed. Older output is dropped and counted.
 */
import { MAX_LOG_LINE_CHARS, type SandboxLogLine } from "@mvm/protocol";

/** Bytes of output kept per sandbox. */
export const WORKLOAD_LOG_BYTES = 1024 * 1024;

interface Chunk {
  /** Its place in the order output arrived: 1, 2, 3, ... */
  seq: number;
  proc: number;
  stream: "stdout" | "stderr";
  /** Whether only its last bytes were kept (it was larger than the whole window). */
  cut: boolean;
  /** When it arrived, in ms since the epoch. */
  time: number;
  bytes: Buffer;
}

/**
 * Output is kept as bytes and decoded only when the log is read: adding a chunk, which happens on
 * every piece of every command's output, is a copy into the window and nothing more.
 */
export class WorkloadLog {
  readonly #chunks: Chunk[] = [];
  readonly #maxBytes: number;
  #bytes = 0;
  #dropped = false;
  /** Sequence number of the latest chunk added (0: none yet). */
  #seq = 0;

  constructor(maxBytes = WORKLOAD_LOG_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /** Keeps a copy of `chunk` (its last `maxBytes` when larger), dropping the oldest output over the bound. */
  add(proc: number, stream: "stdout" | "stderr", chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    const tail = chunk.byteLength > this.#maxBytes ? chunk.subarray(chunk.byteLength - this.#maxBytes) : chunk;
    if (tail !== chunk) this.#dropped = true;
    this.#chunks.push({ seq: ++this.#seq, proc, stream, cut: tail !== chunk, time: Date.now(), bytes: Buffer.from(tail) });
    this.#bytes += tail.byteLength;
    while (this.#bytes > this.#maxBytes && this.#chunks.length > 1) {
      const old = this.#chunks.shift() as Chunk;
      this.#bytes -= old.bytes.byteLength;
      this.#dropped = true;
    }
  }

  /**
   * The kept output as lines (a chunk's text split at newlines), oldest first. Each command's
   * stream is decoded in order, so a character split across its chunks stays whole. With
   * `afterSeq` (a `seq` of an earlier answer), only output that arrived after that answer, and
   * `truncated` says whether some of it was dropped before it could be read. `seq` marks where
   * this answer ends.
   */
  lines(afterSeq?: number): { lines: SandboxLogLine[]; truncated: boolean; seq: number } {
    const lines: SandboxLogLine[] = [];
    const decoders = new Map<string, InstanceType<typeof TextDecoder>>();
    for (const c of this.#chunks) {
      const key = `${c.proc}:${c.stream}`;
      let decoder = decoders.get(key);
      if (decoder === undefined) decoders.set(key, (decoder = new TextDecoder("utf-8")));
      const text = decoder.decode(c.bytes, { stream: true });
      if (text === "" || (afterSeq !== undefined && c.seq <= afterSeq)) continue;
      const parts = text.split("\n");
      if (parts.at(-1) === "") parts.pop();
      const time = new Date(c.time).toISOString();
      for (const part of parts) lines.push({ source: "workload", stream: c.stream, proc: c.proc, time, text: cut(part) });
    }
    const oldest = this.#chunks[0]?.seq ?? this.#seq + 1;
    const truncated = afterSeq === undefined ? this.#dropped : oldest > afterSeq + 1 || this.#chunks.some((c) => c.seq > afterSeq && c.cut);
    return { lines, truncated, seq: this.#seq };
  }
}

/** A line cut to MAX_LOG_LINE_CHARS, marked when cut. */
export function cut(line: string): string {
  return line.length > MAX_LOG_LINE_CHARS ? `${line.slice(0, MAX_LOG_LINE_CHARS)} [cut]` : line;
}
