/**
 * Reading entries for display (`mvmctl audit tail|show`), streaming with bounded memory. Lines are
 * parsed and checked on their own; chain and signatures are `verifyAuditFile`'s job.
 */
import { MAX_ENTRY_BYTES, type AuditEntry } from "./entry.js";
import { checkLine } from "./line.js";
import { readLines } from "./verify.js";

/** One line of the file: its entry when it parses, else what is wrong with it. */
export interface StoredEntry {
  /** 1-based line number. */
  readonly line: number;
  readonly offset: number;
  readonly entry: AuditEntry | null;
  readonly problem: string | null;
}

function toStored(raw: { bytes: Buffer | null; lineNo: number; offset: number; terminated: boolean }): StoredEntry {
  if (raw.bytes === null) return { line: raw.lineNo, offset: raw.offset, entry: null, problem: `line is longer than ${MAX_ENTRY_BYTES} bytes` };
  if (!raw.terminated) return { line: raw.lineNo, offset: raw.offset, entry: null, problem: "torn last line (no newline)" };
  const checked = checkLine(raw.bytes);
  return checked.ok
    ? { line: raw.lineNo, offset: raw.offset, entry: checked.entry, problem: null }
    : { line: raw.lineNo, offset: raw.offset, entry: null, problem: checked.detail };
}

/** The last `count` lines of the audit file at `path`, oldest first. */
export async function tailAuditEntries(path: string, count: number, signal?: AbortSignal): Promise<StoredEntry[]> {
  const ring: StoredEntry[] = [];
  if (count <= 0) return ring;
  for await (const raw of readLines(path, MAX_ENTRY_BYTES, signal)) {
    ring.push(toStored(raw));
    if (ring.length > count) ring.shift();
  }
  return ring;
}

/** The first line whose entry has `seq`, or undefined. */
export async function findAuditEntry(path: string, seq: number, signal?: AbortSignal): Promise<StoredEntry | undefined> {
  for await (const raw of readLines(path, MAX_ENTRY_BYTES, signal)) {
    const stored = toStored(raw);
    if (stored.entry?.seq === seq) return stored;
  }
  return undefined;
}
