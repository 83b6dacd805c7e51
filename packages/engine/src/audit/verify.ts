/**
 * Offline verification of an audit file, streaming: memory stays bounded by one read buffer plus
 * two lines whatever the file's size.
 *
 * Every line is checked on its own (size, JSON, strict schema, canonical bytes, hash) and against
 * the line before it (seq one more, prev = sha256 of the previous line). Signatures:
 * - "all": every entry's Ed25519 signature is verified (about 8,000 entries/s per core here);
 * - "tail" (default): the last entry's signature is verified, and an entry's signature whenever
 *   the link after it breaks. Because `prev` hashes the whole previous line, signature included,
 *   an intact chain ending in a valid signature fixes every earlier byte; and the writer verifies
 *   the tail's signature before it appends, so it never chains over a line it did not accept.
 *   When the final signature fails, the file is scanned again in "all" mode to name the first
 *   entry whose signature fails.
 * A clean cut at a line boundary leaves a valid shorter chain: detecting it needs the expected
 * last seq or hash from elsewhere (`expectLastSeq`).
 */
import { createHash, type KeyObject } from "node:crypto";
import { open } from "node:fs/promises";
import { InvalidArgumentError } from "@mvm/protocol";
import { GENESIS_PREV, MAX_ENTRY_BYTES, signatureValid, type AuditEntry } from "./entry.js";
import { checkLine, sigCanonical, type AuditFailureCode } from "./line.js";

/** The first entry that fails verification. */
export interface BadEntry {
  /** The seq the line claims, when it could be read. */
  readonly seq: number | null;
  /** 1-based line number. */
  readonly line: number;
  /** Byte offset of the line's first byte. */
  readonly offset: number;
  readonly code: AuditFailureCode | "truncated";
  /** A sentence saying what is wrong. */
  readonly reason: string;
}

export type VerifyResult =
  | { readonly ok: true; readonly entries: number; readonly lastSeq: number; readonly lastHash: string | null }
  | { readonly ok: false; readonly entries: number; readonly firstBad: BadEntry };

export interface VerifyOptions {
  /** Which signatures to check; see the module comment. @default "tail" */
  signatures?: "tail" | "all";
  /** When set, a file whose last seq is lower fails with code "truncated". */
  expectLastSeq?: number;
  signal?: AbortSignal;
}

const READ_CHUNK_BYTES = 256 * 1024;

/** One line of a file as read: bytes without the newline, or a marker when it is too long. */
export interface RawLine {
  bytes: Buffer | null;
  lineNo: number;
  offset: number;
  terminated: boolean;
}

/** Yields the lines of `path`; a line over `maxBytes` is yielded with `bytes: null` and reading stops. */
export async function* readLines(path: string, maxBytes: number, signal?: AbortSignal): AsyncGenerator<RawLine> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    let carry: Buffer = Buffer.alloc(0);
    let offset = 0; // offset of carry[0]
    let lineNo = 1;
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const data = carry.length === 0 ? buf.subarray(0, bytesRead) : Buffer.concat([carry, buf.subarray(0, bytesRead)]);
      let start = 0;
      for (;;) {
        const nl = data.indexOf(0x0a, start);
        if (nl < 0) break;
        if (nl - start > maxBytes) {
          yield { bytes: null, lineNo, offset: offset + start, terminated: true };
          return;
        }
        yield { bytes: data.subarray(start, nl), lineNo, offset: offset + start, terminated: true };
        lineNo++;
        start = nl + 1;
      }
      carry = Buffer.from(data.subarray(start));
      offset += start;
      if (carry.length > maxBytes) {
        yield { bytes: null, lineNo, offset, terminated: false };
        return;
      }
    }
    if (carry.length > 0) yield { bytes: carry, lineNo, offset, terminated: false };
  } finally {
    await fh.close();
  }
}

/**
 * Verifies the audit file at `path` against `publicKey` (Ed25519).
 * @returns `ok: true` with the number of entries, or the first bad entry.
 */
export async function verifyAuditFile(path: string, publicKey: KeyObject, options: VerifyOptions = {}): Promise<VerifyResult> {
  if (publicKey.asymmetricKeyType !== "ed25519") {
    throw new InvalidArgumentError(`Cannot verify with a "${publicKey.asymmetricKeyType ?? "unknown"}" key: expected "ed25519"`);
  }
  const all = options.signatures === "all";
  let prev: { entry: AuditEntry; lineHash: string; lineNo: number; offset: number } | undefined;
  let entries = 0;
  let endOffset = 0;
  const fail = (bad: BadEntry): VerifyResult => ({ ok: false, entries, firstBad: bad });
  const badSig = (entry: AuditEntry, lineNo: number, offset: number): BadEntry => ({
    seq: entry.seq,
    line: lineNo,
    offset,
    code: "bad_signature",
    reason: `entry ${entry.seq} is not signed by the given key`,
  });
  const sigOk = (entry: AuditEntry): boolean => sigCanonical(entry.sig) && signatureValid(entry, publicKey);

  for await (const raw of readLines(path, MAX_ENTRY_BYTES, options.signal)) {
    if (raw.bytes === null) {
      return fail({ seq: null, line: raw.lineNo, offset: raw.offset, code: "line_too_long", reason: `line ${raw.lineNo} is longer than ${MAX_ENTRY_BYTES} bytes` });
    }
    if (!raw.terminated) {
      return fail({
        seq: null,
        line: raw.lineNo,
        offset: raw.offset,
        code: "torn_tail",
        reason: `the file ends inside line ${raw.lineNo} (${raw.bytes.length} bytes without a newline): the last write was torn`,
      });
    }
    const checked = checkLine(raw.bytes);
    if (!checked.ok) {
      return fail({ seq: checked.seq, line: raw.lineNo, offset: raw.offset, code: checked.code, reason: `line ${raw.lineNo}: ${checked.detail}` });
    }
    const entry = checked.entry;
    const expectedSeq = prev === undefined ? 1 : prev.entry.seq + 1;
    if (entry.seq !== expectedSeq) {
      const gap = entry.seq > expectedSeq;
      return fail({
        seq: entry.seq,
        line: raw.lineNo,
        offset: raw.offset,
        code: gap ? "seq_gap" : "seq_out_of_order",
        reason: gap
          ? `entry ${entry.seq} follows entry ${expectedSeq - 1}: entries are missing`
          : `entry ${entry.seq} appears where entry ${expectedSeq} belongs: entries are reordered or repeated`,
      });
    }
    const expectedPrev = prev === undefined ? GENESIS_PREV : prev.lineHash;
    if (entry.prev !== expectedPrev) {
      if (prev !== undefined && !all && !sigOk(prev.entry)) {
        return { ok: false, entries: entries - 1, firstBad: badSig(prev.entry, prev.lineNo, prev.offset) };
      }
      return fail({
        seq: entry.seq,
        line: raw.lineNo,
        offset: raw.offset,
        code: "prev_mismatch",
        reason: `entry ${entry.seq} does not link to the entry before it: prev is not that line's sha256`,
      });
    }
    if (all && !sigOk(entry)) return fail(badSig(entry, raw.lineNo, raw.offset));
    endOffset = raw.offset + raw.bytes.length + 1;
    prev = { entry, lineHash: createHash("sha256").update(raw.bytes).digest("hex"), lineNo: raw.lineNo, offset: raw.offset };
    entries++;
  }
  if (prev !== undefined && !all && !sigOk(prev.entry)) {
    return verifyAuditFile(path, publicKey, { ...options, signatures: "all" });
  }
  const lastSeq = prev?.entry.seq ?? 0;
  if (options.expectLastSeq !== undefined && lastSeq < options.expectLastSeq) {
    return fail({
      seq: lastSeq + 1,
      line: entries + 1,
      offset: endOffset,
      code: "truncated",
      reason: `the file ends after entry ${lastSeq}, expected at least ${options.expectLastSeq}`,
    });
  }
  return { ok: true, entries, lastSeq, lastHash: prev?.entry.hash ?? null };
}
