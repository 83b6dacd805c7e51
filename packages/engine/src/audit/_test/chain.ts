/**
 * Builds audit files in memory for tests, the way the writer does.
 */
import { createHash, type KeyObject } from "node:crypto";
import { GENESIS_PREV, entryLine, signEntry, type AuditEntry, type AuditEvent } from "../entry.js";

/** Signed entries chained from seq 1, with their lines. */
export function buildChain(events: readonly AuditEvent[], key: KeyObject, startMs = Date.UTC(2026, 0, 1)): { entries: AuditEntry[]; lines: string[] } {
  const entries: AuditEntry[] = [];
  const lines: string[] = [];
  let prev = GENESIS_PREV;
  events.forEach((event, i) => {
    const entry = signEntry({ v: 1, seq: i + 1, ts: new Date(startMs + i).toISOString(), prev, event }, key);
    const line = entryLine(entry);
    entries.push(entry);
    lines.push(line);
    prev = createHash("sha256").update(line).digest("hex");
  });
  return { entries, lines };
}

/** The file content of `lines`. */
export function fileOf(lines: readonly string[]): string {
  return lines.map((l) => `${l}\n`).join("");
}

/** A few events of every kind an engine writes. */
export function sampleEvents(n: number): AuditEvent[] {
  const sandboxId = "sbx_abcdefghijklmnopqrst";
  return Array.from({ length: n }, (_, i): AuditEvent =>
    i % 3 === 0
      ? { type: "exec.started", sandboxId, execId: `ex_${i}`, argvDigest: "a".repeat(64), argc: 2 }
      : i % 3 === 1
        ? { type: "exec.finished", sandboxId, execId: `ex_${i - 1}`, exitCode: 0, signal: null, timedOut: false, durationMs: i }
        : { type: "sandbox.killed", sandboxId, by: "caller" },
  );
}
