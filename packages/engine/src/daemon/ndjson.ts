/** NDJSON answers: one JSON value per line, headers sent at once so progress reaches the client. */
import type { ServerResponse } from "node:http";

export class NdjsonWriter {
  readonly #res: ServerResponse;

  constructor(res: ServerResponse) {
    this.#res = res;
  }

  /** Sends the status line and headers now. */
  start(status = 200): void {
    this.#res.writeHead(status, {
      "Content-Type": "application/x-ndjson",
      "Cache-Control": "no-store",
      "X-Content-Type-Options": "nosniff",
    });
    this.#res.flushHeaders();
  }

  /** True while lines can still reach the client. */
  get open(): boolean {
    return !this.#res.destroyed && !this.#res.writableEnded;
  }

  /** Writes one line; a no-op once the client is gone. */
  line(value: unknown): void {
    if (this.open) this.#res.write(`${JSON.stringify(value)}\n`);
  }

  end(): void {
    if (this.open) this.#res.end();
  }
}

/** True when the client asked for an NDJSON stream. */
export function wantsNdjson(accept: string | undefined): boolean {
  return accept !== undefined && accept.split(",").some((part) => part.trim().split(";")[0] === "application/x-ndjson");
}
