/**
 * Payload codec of function calls: `[args, kwargs]` and results, as JSON or MessagePack, under the
 * same rules on both sides of the wrapper. A value may be null, a boolean, a finite number, a
 * string, an array, a plain object with string keys, and (MessagePack only) bytes. Refused:
 * encoded size past the cap, nesting past maxDepth, a key twice in one map, a `__proto__` key,
 * NaN or ±Infinity, anything else (Date, Map, class instances, bigint, functions, extension
 * types). Nothing in either format runs code when decoded.
 *
 * MessagePack bytes are walked by a bounded scanner before @msgpack/msgpack decodes them: the
 * library merges duplicate keys and recurses without a depth bound, so the scanner is what
 * enforces the rules, and the library only builds values from bytes already known to be good.
 */
import { Decoder, Encoder } from "@msgpack/msgpack";
import { InvalidArgumentError } from "./errors.js";
import type { FnFormat } from "./fn.js";
import { StrictJsonError, parseJsonStrict } from "./json-strict.js";

/** The rule a payload broke. */
export type FnCodecFault = "too-large" | "depth" | "duplicate-key" | "proto-key" | "non-finite" | "type" | "syntax";

/** A payload or result that breaks a codec rule. */
export class FnCodecError extends InvalidArgumentError {
  constructor(
    readonly fault: FnCodecFault,
    message: string,
  ) {
    super(message);
  }
}

export interface FnCodecLimits {
  /** Largest encoded size, in bytes. */
  readonly maxBytes: number;
  /** Deepest nesting; the top-level array or map is depth 1. */
  readonly maxDepth: number;
}

const where = (path: string): string => (path === "" ? "the top level" : path.length > 80 ? `${path.slice(0, 80)}…` : path);

/** Checks a value against the rules before it is encoded. */
function checkValue(v: unknown, depth: number, limits: FnCodecLimits, bytesAllowed: boolean, path: string): void {
  if (v === null || typeof v === "boolean" || typeof v === "string" || v === undefined) return;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new FnCodecError("non-finite", `${String(v)} at ${where(path)} cannot be sent: only finite numbers can`);
    // JSON writes such a number as an integer literal the other side refuses (it cannot be
    // exact); msgpack sends it as a float.
    if (!bytesAllowed && Number.isInteger(v) && !Number.isSafeInteger(v)) throw new FnCodecError("type", `${String(v)} at ${where(path)} is an integer past 2^53 - 1: JSON cannot carry it exactly (use format "msgpack" or a string)`);
    return;
  }
  if (typeof v !== "object") throw new FnCodecError("type", `A ${typeof v} at ${where(path)} cannot be sent`);
  if (v instanceof Uint8Array) {
    if (bytesAllowed) return;
    throw new FnCodecError("type", `Bytes at ${where(path)} cannot be sent as JSON: use format "msgpack"`);
  }
  if (depth + 1 > limits.maxDepth) throw new FnCodecError("depth", `Nesting deeper than ${limits.maxDepth} at ${where(path)}`);
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) checkValue(v[i], depth + 1, limits, bytesAllowed, `${path}[${i}]`);
    return;
  }
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) {
    const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
    throw new FnCodecError("type", `A ${typeof name === "string" ? name : "non-plain object"} at ${where(path)} cannot be sent: only plain objects, arrays and primitives`);
  }
  for (const key of Object.keys(v)) {
    if (key === "__proto__") throw new FnCodecError("proto-key", `Key "__proto__" at ${where(path)} is refused`);
    checkValue((v as Record<string, unknown>)[key], depth + 1, limits, bytesAllowed, `${path}.${key}`);
  }
  if (Object.getOwnPropertySymbols(v).length > 0) throw new FnCodecError("type", `Symbol keys at ${where(path)} cannot be sent`);
}

/**
 * Refuses integer literals in JSON text past ±(2^53 − 1): JSON.parse would round them to a
 * nearby double, so the value received would not be the value sent (msgpack's scanner refuses the
 * same integers). A literal with a fraction or an exponent is a float and stays allowed. `text` is
 * valid JSON, so outside strings a `-` or a digit starts a number.
 */
function checkIntegerLiterals(text: string): void {
  const length = text.length;
  for (let at = 0; at < length; at++) {
    const c = text.charCodeAt(at);
    if (c === 0x22) {
      for (at++; at < length && text.charCodeAt(at) !== 0x22; at++) if (text.charCodeAt(at) === 0x5c) at++;
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      const start = at;
      if (c === 0x2d) at++;
      while (at < length && text.charCodeAt(at) >= 0x30 && text.charCodeAt(at) <= 0x39) at++;
      const next = text.charCodeAt(at);
      if (next === 0x2e || next === 0x65 || next === 0x45) {
        while (at < length && /[0-9eE+.-]/.test(text[at]!)) at++;
      } else if (at - start > 15) {
        const v = BigInt(text.slice(start, at));
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) throw new FnCodecError("type", "An integer is past 2^53 - 1 and would lose its value");
      }
      at--;
    }
  }
}

/** Finds non-finite numbers JSON.parse made from huge literals (1e400 is Infinity). */
function checkFiniteParsed(v: unknown, path: string): void {
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new FnCodecError("non-finite", `A number at ${where(path)} is not finite`);
  } else if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) checkFiniteParsed(v[i], `${path}[${i}]`);
  } else if (v !== null && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) checkFiniteParsed(x, `${path}.${k}`);
  }
}

const msgpackEncoder = new Encoder({ ignoreUndefined: true, initialBufferSize: 2048 });
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Encodes `value` in `format`. Throws FnCodecError when it breaks a rule or its encoding is
 * larger than `limits.maxBytes`. An `undefined` member of an object is left out, and of an array
 * sent as null (as JSON.stringify does).
 */
export function encodeFnValue(value: unknown, format: FnFormat, limits: FnCodecLimits): Uint8Array {
  checkValue(value, 0, limits, format === "msgpack", "");
  const bytes = format === "json" ? Buffer.from(JSON.stringify(value === undefined ? null : value)) : msgpackEncoder.encode(value === undefined ? null : value);
  if (bytes.length > limits.maxBytes) throw new FnCodecError("too-large", `Encoded size ${bytes.length} bytes is past the limit of ${limits.maxBytes}`);
  return bytes;
}

/** Decodes bytes the other side sent, refusing anything that breaks a rule (FnCodecError). */
export function decodeFnValue(bytes: Uint8Array, format: FnFormat, limits: FnCodecLimits): unknown {
  if (bytes.length > limits.maxBytes) throw new FnCodecError("too-large", `Payload of ${bytes.length} bytes is past the limit of ${limits.maxBytes}`);
  if (format === "json") {
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      throw new FnCodecError("syntax", "Payload is not UTF-8");
    }
    // TextDecoder drops a leading byte order mark; JSON has none, so a payload that starts with
    // one is refused as the other side's decoder would refuse it.
    if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) throw new FnCodecError("syntax", "Payload starts with a byte order mark");
    let value: unknown;
    try {
      value = parseJsonStrict(text, { maxDepth: limits.maxDepth });
    } catch (err) {
      if (!(err instanceof StrictJsonError)) throw err;
      const fault = err.fault === "duplicate-key" ? "duplicate-key" : err.fault === "depth" ? "depth" : err.fault === "proto-key" ? "proto-key" : "syntax";
      throw new FnCodecError(fault, `Payload refused: ${err.detail}`);
    }
    checkFiniteParsed(value, "");
    checkIntegerLiterals(text);
    return value;
  }
  scanMsgpack(bytes, limits.maxDepth);
  const decoder = new Decoder({ useBigInt64: false });
  try {
    return decoder.decode(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (err) {
    throw new FnCodecError("syntax", `Payload is not MessagePack: ${err instanceof Error ? err.message.slice(0, 120) : "invalid"}`);
  }
}

/**
 * Walks MessagePack bytes without building values: one top-level item filling the buffer, depth
 * within `maxDepth`, map keys strings, unique, and not `__proto__`, floats finite, integers within
 * ±2^53, no extension types. Iterative, so hostile depth cannot overflow the stack.
 */
export function scanMsgpack(b: Uint8Array, maxDepth: number): void {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 0;
  // Open containers: items left, whether it is a map, the keys seen (maps), and key/value turn.
  const stack: { left: number; map: boolean; keys: Set<string> | undefined; keyNext: boolean }[] = [];
  const fail = (fault: FnCodecFault, msg: string): never => {
    throw new FnCodecError(fault, `MessagePack payload refused at byte ${pos}: ${msg}`);
  };
  const need = (n: number): void => {
    if (pos + n > b.length) fail("syntax", "truncated");
  };
  const u8 = (): number => (need(1), view.getUint8(pos++));
  const u16 = (): number => (need(2), (pos += 2), view.getUint16(pos - 2));
  const u32 = (): number => (need(4), (pos += 4), view.getUint32(pos - 4));
  let first = true;
  while (first || stack.length > 0) {
    first = false;
    const top = stack[stack.length - 1];
    const isKey = top !== undefined && top.map && top.keyNext;
    const t = u8();
    let strLen = -1;
    let open: { n: number; map: boolean } | undefined;
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) {
      // fixint, nil, false, true
    } else if (t >= 0x80 && t <= 0x8f) open = { n: t & 0x0f, map: true };
    else if (t >= 0x90 && t <= 0x9f) open = { n: t & 0x0f, map: false };
    else if (t >= 0xa0 && t <= 0xbf) strLen = t & 0x1f;
    else if (t === 0xd9) strLen = u8();
    else if (t === 0xda) strLen = u16();
    else if (t === 0xdb) strLen = u32();
    else if (t === 0xc4 || t === 0xc5 || t === 0xc6) {
      const n = t === 0xc4 ? u8() : t === 0xc5 ? u16() : u32();
      need(n);
      pos += n;
    } else if (t === 0xca) {
      need(4);
      if (!Number.isFinite(view.getFloat32(pos))) fail("non-finite", "a float is not finite");
      pos += 4;
    } else if (t === 0xcb) {
      need(8);
      if (!Number.isFinite(view.getFloat64(pos))) fail("non-finite", "a float is not finite");
      pos += 8;
    } else if (t === 0xcc || t === 0xd0) pos += (need(1), 1);
    else if (t === 0xcd || t === 0xd1) pos += (need(2), 2);
    else if (t === 0xce || t === 0xd2) pos += (need(4), 4);
    else if (t === 0xcf || t === 0xd3) {
      need(8);
      const v = t === 0xcf ? view.getBigUint64(pos) : view.getBigInt64(pos);
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) fail("type", "a 64-bit integer is past 2^53");
      pos += 8;
    } else if (t === 0xdc) open = { n: u16(), map: false };
    else if (t === 0xdd) open = { n: u32(), map: false };
    else if (t === 0xde) open = { n: u16(), map: true };
    else if (t === 0xdf) open = { n: u32(), map: true };
    else fail("type", `type byte 0x${t.toString(16)} (extension types and reserved bytes are refused)`);

    if (strLen >= 0) {
      need(strLen);
      if (isKey) {
        let key: string;
        try {
          key = utf8.decode(b.subarray(pos, pos + strLen));
        } catch {
          return fail("syntax", "a key is not UTF-8");
        }
        if (key === "__proto__") fail("proto-key", 'key "__proto__"');
        if (top.keys!.has(key)) fail("duplicate-key", `duplicate key ${JSON.stringify(key.slice(0, 64))}`);
        top.keys!.add(key);
      }
      pos += strLen;
    } else if (isKey) {
      fail("type", "a map key is not a string");
    }
    if (top !== undefined) {
      if (top.map) {
        top.keyNext = !top.keyNext;
        if (top.keyNext) top.left--;
      } else top.left--;
    }
    if (open !== undefined) {
      if (stack.length + 1 > maxDepth) fail("depth", `nesting deeper than ${maxDepth}`);
      // Each item takes at least one byte: a count past what is left is a lie, refused before use.
      if (open.n * (open.map ? 2 : 1) > b.length - pos) fail("syntax", "a container claims more items than bytes left");
      stack.push({ left: open.n, map: open.map, keys: open.map ? new Set() : undefined, keyNext: true });
    }
    while (stack.length > 0 && stack[stack.length - 1]!.left === 0) stack.pop();
  }
  if (pos !== b.length) fail("syntax", "bytes after the value");
}

/**
 * The checked `[args, kwargs]` of a call: an array of arguments and a plain object of keyword
 * arguments (empty for JavaScript callers).
 */
export function asCallPayload(value: unknown): { args: unknown[]; kwargs: Record<string, unknown> } {
  if (!Array.isArray(value) || value.length !== 2) throw new FnCodecError("type", "Payload must be [args, kwargs]");
  const [args, kwargs] = value as [unknown, unknown];
  if (!Array.isArray(args)) throw new FnCodecError("type", "Payload args must be an array");
  if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs) || kwargs instanceof Uint8Array) {
    throw new FnCodecError("type", "Payload kwargs must be a map");
  }
  return { args, kwargs: kwargs as Record<string, unknown> };
}
