/**
 * Output budgets of MCP answers: a stream keeps its first and last bytes within a budget and
 * counts what it drops, so a model sees the start and the end and a note of what was cut.
 * Memory stays within the budget however much the workload prints.
 */

/** Collects one output stream within `budgetBytes` (half for the head, half for the tail). */
export class BudgetedText {
  readonly #headMax: number;
  readonly #tailMax: number;
  #head = "";
  /** Set once anything went to the tail: later text never goes into the head. */
  #headClosed = false;
  #headBytes = 0;
  #tail: string[] = [];
  #tailBytes = 0;
  #totalBytes = 0;

  constructor(budgetBytes: number) {
    this.#headMax = Math.ceil(budgetBytes / 2);
    this.#tailMax = Math.floor(budgetBytes / 2);
  }

  /** Bytes the tail may keep: the budget less what the head holds (at least half the budget). */
  get #tailRoom(): number {
    return this.#headMax + this.#tailMax - this.#headBytes;
  }

  /** Bytes seen so far (UTF-8). */
  get totalBytes(): number {
    return this.#totalBytes;
  }

  push(chunk: string): void {
    const bytes = Buffer.byteLength(chunk);
    this.#totalBytes += bytes;
    if (!this.#headClosed) {
      const room = this.#headMax - this.#headBytes;
      if (bytes <= room) {
        this.#head += chunk;
        this.#headBytes += bytes;
        return;
      }
      const part = utf8Prefix(chunk, room);
      this.#head += part;
      this.#headBytes += Buffer.byteLength(part);
      chunk = chunk.slice(part.length);
      this.#headClosed = true;
    }
    this.#tail.push(chunk);
    this.#tailBytes += Buffer.byteLength(chunk);
    while (this.#tail.length > 1 && this.#tailBytes - Buffer.byteLength(this.#tail[0]!) >= this.#tailRoom) {
      this.#tailBytes -= Buffer.byteLength(this.#tail.shift()!);
    }
    if (this.#tail.length === 1 && this.#tailBytes > this.#tailRoom * 2) {
      const only = utf8Suffix(this.#tail[0]!, this.#tailRoom);
      this.#tail = [only];
      this.#tailBytes = Buffer.byteLength(only);
    }
  }

  /** The kept text, with a note where bytes were cut. `label` names the stream in the note. */
  text(label: string): string {
    const tail = utf8Suffix(this.#tail.join(""), this.#tailRoom);
    const kept = this.#headBytes + Buffer.byteLength(tail);
    const cut = this.#totalBytes - kept;
    if (cut <= 0) return this.#head + tail;
    return `${this.#head}\n[mvm: ${cut} of ${this.#totalBytes} bytes of ${label} cut here to fit the output budget]\n${tail}`;
  }
}

/** Trims whole text to `budgetBytes` the way BudgetedText does. */
export function trimToBudget(text: string, budgetBytes: number, label: string): string {
  const b = new BudgetedText(budgetBytes);
  b.push(text);
  return b.text(label);
}

/** The longest prefix of `s` of at most `maxBytes` UTF-8 bytes that does not split a character. */
function utf8Prefix(s: string, maxBytes: number): string {
  const buf = Buffer.from(s);
  if (buf.byteLength <= maxBytes) return s;
  let end = maxBytes;
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return buf.subarray(0, end).toString("utf8");
}

/** The longest suffix of `s` of at most `maxBytes` UTF-8 bytes that does not split a character. */
function utf8Suffix(s: string, maxBytes: number): string {
  const buf = Buffer.from(s);
  if (buf.byteLength <= maxBytes) return s;
  let start = buf.byteLength - maxBytes;
  while (start < buf.byteLength && (buf[start]! & 0xc0) === 0x80) start++;
  return buf.subarray(start).toString("utf8");
}
