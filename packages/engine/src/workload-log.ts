/**
 * The workload's output as the engine last saw it: a window of the most recent output of every
 * command (already redacted), bounded in bytes, so `mvmctl logs ID` shows what background
 * commands printed. Older output is dropped and counted.
 */
import { MAX_LOG_LINE_CHARS, type SandboxLogLine } from "@mvm/protocol";

/** Bytes of output kept per sandbox. */
export const WORKLOAD_LOG_BYTES = 1024 * 1024;

interface Chunk {
  proc: number;
  stream: "stdout" | "stderr";
  time: string;
  text: string;
}

export class WorkloadLog {
  readonly #chunks: Chunk[] = [];
  readonly #maxBytes: number;
  #bytes = 0;
  #dropped = false;
  readonly #decoders = new Map<string, InstanceType<typeof TextDecoder>>();

  constructor(maxBytes = WORKLOAD_LOG_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /** Keeps `chunk` (decoded as UTF-8, a character split across chunks kept whole), dropping the oldest over the bound. */
  add(proc: number, stream: "stdout" | "stderr", chunk: Uint8Array): void {
    const key = `${proc}:${stream}`;
    let decoder = this.#decoders.get(key);
    if (decoder === undefined) {
      if (this.#decoders.size >= 256) this.#decoders.clear();
      decoder = new TextDecoder("utf-8");
      this.#decoders.set(key, decoder);
    }
    const tail = chunk.byteLength > this.#maxBytes ? chunk.subarray(chunk.byteLength - this.#maxBytes) : chunk;
    if (tail !== chunk) this.#dropped = true;
    const text = decoder.decode(tail, { stream: true });
    if (text === "") return;
    this.#chunks.push({ proc, stream, time: new Date().toISOString(), text });
    this.#bytes += tail.byteLength;
    while (this.#bytes > this.#maxBytes && this.#chunks.length > 1) {
      const old = this.#chunks.shift() as Chunk;
      this.#bytes -= Buffer.byteLength(old.text);
      this.#dropped = true;
    }
  }

  /** The kept output as lines (a chunk's text split at newlines), oldest first. */
  lines(): { lines: SandboxLogLine[]; truncated: boolean } {
    const lines: SandboxLogLine[] = [];
    for (const c of this.#chunks) {
      const parts = c.text.split("\n");
      if (parts.at(-1) === "") parts.pop();
      for (const part of parts) lines.push({ source: "workload", stream: c.stream, proc: c.proc, time: c.time, text: cut(part) });
    }
    return { lines, truncated: this.#dropped };
  }
}

/** A line cut to MAX_LOG_LINE_CHARS, marked when cut. */
export function cut(line: string): string {
  return line.length > MAX_LOG_LINE_CHARS ? `${line.slice(0, MAX_LOG_LINE_CHARS)} [cut]` : line;
}
