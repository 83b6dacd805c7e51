/**
 * NDJSON answers: one JSON value per line, headers sent at once so progress reaches the client;
 * `send` waits while the client is not reading.
 */
import type { ServerResponse } from "node:http";

/** Bytes a `send` may leave in the response's buffer before it waits for the client, 1 MiB. */
export const SEND_BUFFER_BYTES = 1024 * 1024;

export class NdjsonWriter {
  readonly #res: ServerResponse;

  constructor(res: ServerResponse) {
    this.#res = res;
  }

  /**
   * Sets the status line and headers and, with `flush` (the default), sends them now. Without it
   * they go out with the first line, in the same write.
   */
  start(status = 200, flush = true): void {
    this.#res.writeHead(status, {
      "Content-Type": "application/x-ndjson",
      "Cache-Control": "no-store",
      "X-Content-Type-Options": "nosniff",
    });
    if (flush) this.#res.flushHeaders();
  }

  /** True while lines can still reach the client. */
  get open(): boolean {
    return !this.#res.destroyed && !this.#res.writableEnded;
  }

  /** Writes one line; a no-op once the client is gone. */
  line(value: unknown): void {
    if (this.open) this.#res.write(`${JSON.stringify(value)}\n`);
  }

  /**
   * Writes one line and resolves once the response can take more: at once while less than
   * SEND_BUFFER_BYTES wait to go out, else on 'drain' (or when the client is gone). A caller that
   * awaits each send holds at most that much plus one line.
   */
  async send(value: unknown): Promise<void> {
    if (!this.open) return;
    this.#res.write(`${JSON.stringify(value)}\n`);
    const res = this.#res;
    if (res.writableLength <= SEND_BUFFER_BYTES) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        res.off("drain", done);
        res.off("close", done);
        resolve();
      };
      res.on("drain", done);
      res.on("close", done);
      if (!this.open) done();
    });
  }

  /** Ends the answer, with `last` as its final line (in the same write as the end) when given. */
  end(last?: unknown): void {
    if (!this.open) return;
    if (last === undefined) this.#res.end();
    else this.#res.end(`${JSON.stringify(last)}\n`);
  }
}

/** True when the client asked for an NDJSON stream. */
export function wantsNdjson(accept: string | undefined): boolean {
  return accept !== undefined && accept.split(",").some((part) => part.trim().split(";")[0] === "application/x-ndjson");
}
