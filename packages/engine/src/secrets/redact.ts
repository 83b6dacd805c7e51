/**
 * Replace secret values in text and byte streams (command output, error messages) before they
 * leave the host side. Matching scans left to right; where several secrets start at the same
 * place the longest wins. A streamed redaction gives the same bytes as redacting the whole.
 */
import { Transform, type TransformCallback } from "node:stream";

/**
 * Secrets shorter than this many UTF-8 bytes are not redacted (they would mangle ordinary text).
 * No secret this short reaches a sandbox: every way in refuses values under
 * MIN_SECRET_VALUE_BYTES (8), so every secret a sandbox gets is redacted.
 */
export const MIN_REDACTED_SECRET_BYTES = 4;

interface Entry {
  readonly secret: string;
  readonly secretBytes: Buffer;
  readonly replacement: string;
  readonly replacementBytes: Buffer;
}

/**
 * Redacts a fixed set of secrets.
 *
 * @example
 * const r = new Redactor([{ secret: "sk-live-123", replacement: "mvm-placeholder-…" }]);
 * r.redactString("key=sk-live-123"); // "key=mvm-placeholder-…"
 * child.stdout.pipe(r.transform()).pipe(process.stdout);
 */
export class Redactor {
  /** True when there is nothing to redact; callers may skip redaction entirely. */
  readonly empty: boolean;
  readonly #entries: readonly Entry[];
  // Candidates by first byte / first UTF-16 unit, longest first.
  readonly #byFirstByte: ReadonlyMap<number, readonly Entry[]>;
  readonly #byFirstUnit: ReadonlyMap<number, readonly Entry[]>;
  readonly #maxBytes: number;

  constructor(pairs: readonly { secret: string; replacement: string }[]) {
    const seen = new Set<string>();
    const entries: Entry[] = [];
    for (const { secret, replacement } of pairs) {
      if (Buffer.byteLength(secret, "utf8") < MIN_REDACTED_SECRET_BYTES || seen.has(secret)) continue;
      seen.add(secret);
      entries.push({ secret, secretBytes: Buffer.from(secret, "utf8"), replacement, replacementBytes: Buffer.from(replacement, "utf8") });
    }
    entries.sort((a, b) => b.secretBytes.length - a.secretBytes.length);
    this.#entries = entries;
    this.empty = entries.length === 0;
    this.#maxBytes = entries[0]?.secretBytes.length ?? 0;
    this.#byFirstByte = groupBy(entries, (e) => e.secretBytes[0] ?? 0);
    this.#byFirstUnit = groupBy(entries, (e) => e.secret.charCodeAt(0));
  }

  /** `s` with every secret replaced. */
  redactString(s: string): string {
    if (this.empty) return s;
    let out = "";
    let copied = 0;
    let i = 0;
    while (i < s.length) {
      const hit = this.#byFirstUnit.get(s.charCodeAt(i))?.find((e) => s.startsWith(e.secret, i));
      if (hit === undefined) {
        i += 1;
        continue;
      }
      out += s.slice(copied, i) + hit.replacement;
      i += hit.secret.length;
      copied = i;
    }
    return copied === 0 ? s : out + s.slice(copied);
  }

  /** `b` with every secret's UTF-8 bytes replaced. Returns `b` itself when nothing matched. */
  redactBuffer(b: Buffer): Buffer {
    if (this.empty) return b;
    const { parts, consumed, changed } = this.#scan(b, true);
    if (!changed) return b;
    if (consumed < b.length) parts.push(b.subarray(consumed));
    return Buffer.concat(parts);
  }

  /**
   * A byte stream that redacts what flows through it, including secrets split across chunks.
   * Holds back at most (longest secret - 1) bytes until more data arrives or the stream ends.
   */
  transform(): Transform {
    const cursor = this.cursor();
    return new Transform({
      transform: (chunk: Buffer | string, _encoding: BufferEncoding, callback: TransformCallback) => {
        callback(null, cursor.push(typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk));
      },
      flush: (callback: TransformCallback) => callback(null, cursor.end()),
    });
  }

  /**
   * The same streamed redaction as {@link transform}, called directly: `push` returns the bytes
   * that are ready (undefined when none), `end` what was held back.
   */
  cursor(): { push(chunk: Uint8Array): Buffer | undefined; end(): Buffer | undefined } {
    let held: Buffer = Buffer.alloc(0);
    return {
      push: (chunk) => {
        const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        if (this.empty) return data.length > 0 ? data : undefined;
        const buf = held.length === 0 ? data : Buffer.concat([held, data]);
        const { parts, consumed } = this.#scan(buf, false);
        // Copy what is held so the caller's chunk buffer may be reused.
        held = Buffer.from(buf.subarray(consumed));
        const out = parts.length === 1 ? parts[0] : Buffer.concat(parts);
        return out !== undefined && out.length > 0 ? out : undefined;
      },
      end: () => {
        const rest = held;
        held = Buffer.alloc(0);
        return rest.length > 0 ? this.redactBuffer(rest) : undefined;
      },
    };
  }

  /**
   * Redacts `buf` from the start. Unless `final`, stops at the first position where a secret
   * could still begin with bytes not yet seen, and reports how far it got.
   */
  #scan(buf: Buffer, final: boolean): { parts: Buffer[]; consumed: number; changed: boolean } {
    const parts: Buffer[] = [];
    let copied = 0;
    let changed = false;
    let i = 0;
    while (i < buf.length) {
      const candidates = this.#byFirstByte.get(buf[i] ?? -1);
      if (candidates === undefined) {
        i += 1;
        continue;
      }
      const remaining = buf.length - i;
      if (!final && remaining < this.#maxBytes && candidates.some((e) => e.secretBytes.length > remaining && isPrefixAt(buf, i, e.secretBytes))) {
        break; // A longer secret may still match here: wait for more bytes.
      }
      const hit = candidates.find((e) => e.secretBytes.length <= remaining && isPrefixAt(buf, i, e.secretBytes, e.secretBytes.length));
      if (hit === undefined) {
        i += 1;
        continue;
      }
      if (i > copied) parts.push(buf.subarray(copied, i));
      parts.push(hit.replacementBytes);
      changed = true;
      i += hit.secretBytes.length;
      copied = i;
    }
    if (i > copied) parts.push(buf.subarray(copied, i));
    return { parts, consumed: i, changed };
  }

  /** Number of distinct secrets redacted. */
  get size(): number {
    return this.#entries.length;
  }
}

/** Whether `buf` from `at` agrees with `secret` over `length` bytes (default: all bytes available). */
function isPrefixAt(buf: Buffer, at: number, secret: Buffer, length = Math.min(secret.length, buf.length - at)): boolean {
  return buf.compare(secret, 0, length, at, at + length) === 0;
}

function groupBy(entries: readonly Entry[], key: (e: Entry) => number): Map<number, Entry[]> {
  const map = new Map<number, Entry[]>();
  for (const e of entries) {
    const list = map.get(key(e));
    if (list === undefined) map.set(key(e), [e]);
    else list.push(e);
  }
  return map;
}
