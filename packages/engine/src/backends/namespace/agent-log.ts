/**
 * The agent's stderr (and bubblewrap's own messages) written to a file, capped: bytes past the
 * cap are read and dropped so the sandbox never blocks on a full pipe.
 */
import { type FileHandle, open } from "node:fs/promises";
import type { Readable } from "node:stream";

/** Default cap of the agent log, bytes. */
export const AGENT_LOG_MAX_BYTES = 1024 * 1024;
/** How much of the log's start is kept in memory for error messages, bytes. */
const HEAD_BYTES = 2048;

export class CappedLog {
  private written = 0;
  private head = Buffer.alloc(0);
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  private done: Promise<void> = Promise.resolve();

  private constructor(private readonly file: FileHandle, private readonly maxBytes: number) {}

  /** Opens (truncating) `path` with mode 0600. */
  static async open(path: string, maxBytes = AGENT_LOG_MAX_BYTES): Promise<CappedLog> {
    return new CappedLog(await open(path, "w", 0o600), maxBytes);
  }

  /** Starts copying `source` into the file. Call once. */
  follow(source: Readable): void {
    this.done = new Promise((resolve) => {
      source.on("data", (chunk: Buffer) => this.accept(chunk));
      source.once("close", () => resolve());
      source.once("error", () => resolve());
    });
  }

  private accept(chunk: Buffer): void {
    if (this.head.length < HEAD_BYTES) this.head = Buffer.concat([this.head, chunk.subarray(0, HEAD_BYTES - this.head.length)]);
    const room = this.maxBytes - this.written;
    if (room <= 0 || this.closed) return;
    const slice = chunk.subarray(0, room);
    this.written += slice.length;
    this.chain = this.chain.then(async () => {
      await this.file.write(slice);
    }).catch(() => undefined);
  }

  /** The first bytes logged, as text (for error messages). */
  headText(): string {
    return this.head.toString("utf8");
  }

  /** Bytes written to the file so far (at most the cap). */
  get bytesWritten(): number {
    return this.written;
  }

  /**
   * Waits (at most `timeoutMs`) until the source has closed, flushes, and closes the file.
   * Anything the source sends afterwards is dropped.
   */
  async close(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.done, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    this.closed = true;
    await this.chain;
    await this.file.close().catch(() => undefined);
  }
}
