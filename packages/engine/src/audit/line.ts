/**
 * Checks of one stored line on its own: size, JSON, schema, canonical form, hash. Shared by the
 * verifier (every line) and by the log's open (the last line).
 */
import { AuditEntrySchema, MAX_ENTRY_BYTES, encodeEntry, type AuditEntry } from "./entry.js";

/** Why a line or a link of the chain is bad. */
export type AuditFailureCode =
  | "torn_tail"
  | "line_too_long"
  | "malformed_json"
  | "schema"
  | "not_canonical"
  | "hash_mismatch"
  | "bad_signature"
  | "seq_out_of_order"
  | "seq_gap"
  | "prev_mismatch";

export type LineCheck = { ok: true; entry: AuditEntry } | { ok: false; code: AuditFailureCode; detail: string; seq: number | null };

/** Parses and checks `bytes` (one line, newline excluded); the signature is not checked here. */
export function checkLine(bytes: Uint8Array): LineCheck {
  if (bytes.length > MAX_ENTRY_BYTES) {
    return { ok: false, code: "line_too_long", detail: `line is ${bytes.length} bytes, more than ${MAX_ENTRY_BYTES}`, seq: null };
  }
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("utf8");
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, code: "malformed_json", detail: "line is not JSON", seq: null };
  }
  const seq = seqOf(raw);
  const parsed = AuditEntrySchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.join(".") ?? "";
    return { ok: false, code: "schema", detail: `entry does not match the schema at "${where}": ${issue?.message ?? "invalid"}`, seq };
  }
  const entry = parsed.data;
  const { line, contentHash } = encodeEntry(entry);
  // Every string the schema admits is ASCII, so equal text of equal length means equal bytes.
  if (line !== text || text.length !== bytes.length) {
    return { ok: false, code: "not_canonical", detail: "line is not the canonical JSON of its entry", seq };
  }
  if (contentHash !== entry.hash) {
    return { ok: false, code: "hash_mismatch", detail: "hash does not match the entry's content", seq };
  }
  return { ok: true, entry };
}

/** True when `sig` is the canonical base64 of 64 bytes: other spellings of the same bytes are refused. */
export function sigCanonical(sig: string): boolean {
  return Buffer.from(sig, "base64").toString("base64") === sig;
}

function seqOf(raw: unknown): number | null {
  if (typeof raw !== "object" || raw === null) return null;
  const seq = (raw as Record<string, unknown>)["seq"];
  return typeof seq === "number" && Number.isSafeInteger(seq) ? seq : null;
}
