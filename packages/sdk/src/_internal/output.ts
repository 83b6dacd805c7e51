/**
 * One output stream of a command: decoded as UTF-8 while it arrives (a character split across
 * chunks is kept whole), kept up to a byte cap, and readable as text or as an async iterator of
 * chunks. Iterators share the stored chunks, so memory stays within the cap.
 */
export class OutputBuffer {
  readonly #maxBytes: number;
  readonly #onText: ((text: string) => unknown) | undefined;
  readonly #decoder = new TextDecoder("utf-8");
  readonly #chunks: string[] = [];
  #bytes = 0;
  #truncated = false;
  #ended = false;
  #waiters: (() => void)[] = [];

  /**
   * @param onText called with each decoded chunk; what it throws propagates out of `push`, and
   * what it returns is what `push` returns (a promise there holds the stream)
   */
  constructor(maxBytes: number, onText?: (text: string) => unknown) {
    this.#maxBytes = maxBytes;
    this.#onText = onText;
  }

  /** Bytes kept so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** True once bytes past the cap were dropped. */
  get truncated(): boolean {
    return this.#truncated;
  }

  push(chunk: Uint8Array): unknown {
    if (this.#ended) return;
    const room = this.#maxBytes - this.#bytes;
    let kept = chunk;
    if (chunk.byteLength > room) {
      kept = chunk.subarray(0, Math.max(room, 0));
      this.#truncated = true;
    }
    if (kept.byteLength === 0) return;
    this.#bytes += kept.byteLength;
    return this.#add(this.#decoder.decode(kept, { stream: true }));
  }

  /** Marks the end of the stream; a dangling partial character becomes U+FFFD. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    try {
      void this.#add(this.#decoder.decode());
    } finally {
      this.#wake();
    }
  }

  text(): string {
    return this.#chunks.join("");
  }

  /** Every chunk from the first, then new ones as they arrive, until the end. */
  async *chunks(): AsyncGenerator<string, void, undefined> {
    let next = 0;
    for (;;) {
      while (next < this.#chunks.length) yield this.#chunks[next++] as string;
      if (this.#ended) return;
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  #add(text: string): unknown {
    if (text === "") return;
    this.#chunks.push(text);
    this.#wake();
    return this.#onText?.(text);
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}
