/**
 * Strict JSON for bytes a peer sent (the agent's control messages, QEMU's QMP lines): one text has
 * one meaning. JSON.parse keeps the last of two equal keys, so `{"ok":true,"ok":false}` would mean
 * whatever the reader's parser makes of it; parseJsonStrict refuses it instead, at any depth, and
 * also refuses a `__proto__` key anywhere and nesting deeper than a bound.
 *
 * JSON.parse checks the syntax and builds the value; a scan of the same text (then known to be
 * valid JSON, so it only has to find strings and brackets) sees every key as written, decodes the
 * few that hold escapes (`"\u0061"` is the key `a`), and keeps a set of keys per open object.
 * The scan reads each character once, so its cost grows linearly with the text. (Measured on
 * control messages, jsonc-parser's visit did the same job about 2 times slower and momoa's AST 5
 * to 13 times, and either would be bundled into the agent.)
 */
import { TransportError } from "./errors.js";

export interface StrictJsonOptions {
  /** Deepest nesting of objects and arrays allowed; the top-level `{}` or `[]` is depth 1. @default 64 */
  readonly maxDepth?: number;
}

/** What parseJsonStrict refused. */
export type StrictJsonFault = "syntax" | "duplicate-key" | "proto-key" | "depth";

/**
 * JSON text a peer sent that parseJsonStrict refuses. A TransportError (code TRANSPORT): the peer
 * broke the protocol. `detail` says what is wrong without the "Bad JSON" prefix, for callers that
 * name the message kind themselves.
 */
export class StrictJsonError extends TransportError {
  constructor(
    readonly fault: StrictJsonFault,
    readonly detail: string,
    options: { cause?: unknown } = {},
  ) {
    super(`Bad JSON: ${detail}`, options);
  }
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const OPEN_ARRAY = 0x5b;
const CLOSE_OBJECT = 0x7d;
const CLOSE_ARRAY = 0x5d;

/** Quotes a key for an error message, cut so the message stays short whatever the peer sent. */
const quoteKey = (key: string): string => JSON.stringify(key.length > 64 ? `${key.slice(0, 64)}…` : key);

/**
 * Parses JSON text a peer sent. Throws StrictJsonError (a TransportError) when it is not JSON,
 * when an object holds the same key twice (keys compared after decoding escapes) or a `__proto__`
 * key, or when objects and arrays nest deeper than `maxDepth`. The message stays short whatever
 * the input: a key is cut to 64 characters, JSON.parse's own message to 128. Otherwise returns
 * what JSON.parse returns.
 *
 * @example
 * parseJsonStrict('{"a":1}'); // { a: 1 }
 * parseJsonStrict('{"a":1,"a":2}'); // throws StrictJsonError: Bad JSON: duplicate key "a"
 */
export function parseJsonStrict(text: string, options: StrictJsonOptions = {}): unknown {
  const maxDepth = options.maxDepth ?? 64;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new StrictJsonError("syntax", `not JSON: ${(err as Error).message.slice(0, 128)}`, { cause: err });
  }
  checkKeys(text, maxDepth);
  return value;
}

/** Throws on a duplicate or `__proto__` key or on nesting past `maxDepth`; `text` is valid JSON. */
function checkKeys(text: string, maxDepth: number): void {
  // One entry per open container: the keys seen so far in an object, undefined for an array.
  const open: (Set<string> | undefined)[] = [];
  const length = text.length;
  for (let at = 0; at < length; at++) {
    const c = text.charCodeAt(at);
    if (c === QUOTE) {
      // Skip the string: a backslash escapes the next character (\uXXXX's digits are neither
      // quote nor backslash), so the first quote not skipped that way closes it.
      const start = at;
      let escaped = false;
      let end = start + 1;
      for (let d = text.charCodeAt(end); d !== QUOTE && end < length; d = text.charCodeAt(end)) {
        if (d === BACKSLASH) {
          escaped = true;
          end += 2;
        } else end++;
      }
      // A string followed by a colon is a key (valid JSON has colons nowhere else).
      at = end + 1;
      while (at < length && text.charCodeAt(at) <= 0x20) at++;
      if (text.charCodeAt(at) !== COLON) {
        at--;
        continue;
      }
      const key = escaped ? (JSON.parse(text.slice(start, end + 1)) as string) : text.slice(start + 1, end);
      if (key === "__proto__") throw new StrictJsonError("proto-key", `key "__proto__"`);
      const keys = open[open.length - 1]!;
      if (keys.has(key)) throw new StrictJsonError("duplicate-key", `duplicate key ${quoteKey(key)}`);
      keys.add(key);
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (open.length >= maxDepth) throw new StrictJsonError("depth", `nested deeper than ${maxDepth}`);
      open.push(c === OPEN_OBJECT ? new Set() : undefined);
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      open.pop();
    }
  }
}
