#!/usr/bin/env node
// Audit log benchmarks. Prints one JSON document on stdout.
//   node bench/audit.mjs                       # defaults
//   AUDIT_ENTRIES=50000 AUDIT_CONCURRENCY=256 node bench/audit.mjs
// append: AUDIT_CONCURRENCY callers each await their append before making the next one, so every
// counted entry was acknowledged after fdatasync; batch sizes are what group commit formed.
// verify: the file just written, in the default ("tail") and "all" signature modes, after one
// untimed warm-up run.
import { generateKeyPairSync } from "node:crypto";
import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { AuditLog, argvDigest, verifyAuditFile } from "../packages/engine/dist/audit/index.js";

const ENTRIES = Number(process.env.AUDIT_ENTRIES ?? 50_000);
const CONCURRENCY = Number(process.env.AUDIT_CONCURRENCY ?? 128);
const DIR_BASE = process.env.AUDIT_DIR ?? tmpdir();

const sandboxId = "sbx_abcdefghijklmnopqrst";
function event(i) {
  return i % 2 === 0
    ? { type: "exec.started", sandboxId, execId: `ex_${i}`, argvDigest: argvDigest(["python3", "-c", String(i)]), argc: 3 }
    : { type: "exec.finished", sandboxId, execId: `ex_${i - 1}`, exitCode: 0, signal: null, timedOut: false, durationMs: i };
}

/** The disk's own rate: one writer, write + fdatasync per 300-byte line, no batching. */
function rawSyncRate(dir, n) {
  const fd = openSync(join(dir, "raw.log"), "a");
  const line = Buffer.alloc(300, 0x61);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    writeSync(fd, line);
    fdatasyncSync(fd);
  }
  const ms = performance.now() - t0;
  closeSync(fd);
  return Math.round((n / ms) * 1000);
}

/** Two writers (two AuditLog instances, as two engines on one state directory) taking turns. */
async function twoWriters(dir, key, n) {
  const a = await AuditLog.open(dir, { key });
  const b = await AuditLog.open(dir, { key });
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async (_, i) => {
      const log = i % 2 === 0 ? a : b;
      while (next < n) await log.append(event(next++));
    }),
  );
  const ms = performance.now() - t0;
  await a.close();
  await b.close();
  return Math.round((n / ms) * 1000);
}

export async function benchAudit() {
  const dir = await mkdtemp(join(DIR_BASE, "mvm-audit-bench-"));
  const key = generateKeyPairSync("ed25519");
  try {
    const log = await AuditLog.open(dir, { key });
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < ENTRIES) await log.append(event(next++));
      }),
    );
    const appendMs = performance.now() - t0;
    const stats = log.stats();
    await log.close();
    const path = join(dir, "audit.log");
    const { size } = await stat(path);

    await verifyAuditFile(path, key.publicKey); // warm-up run, not timed
    const t1 = performance.now();
    const tail = await verifyAuditFile(path, key.publicKey);
    const verifyTailMs = performance.now() - t1;
    const t2 = performance.now();
    const all = await verifyAuditFile(path, key.publicKey, { signatures: "all" });
    const verifyAllMs = performance.now() - t2;
    if (!tail.ok || !all.ok || tail.entries !== ENTRIES) throw new Error(`verification failed: ${JSON.stringify({ tail, all })}`);

    const rate = (n, ms) => Math.round((n / ms) * 1000);
    const result = {
      entries: ENTRIES,
      fileBytes: size,
      dir: DIR_BASE,
      append: {
        concurrency: CONCURRENCY,
        entriesPerSecond: rate(ENTRIES, appendMs),
        targetEntriesPerSecond: 5000,
        batches: stats.batches,
        meanBatch: Math.round((stats.entries / stats.batches) * 10) / 10,
        maxBatch: stats.maxBatch,
      },
      verify: {
        tailSignatureEntriesPerSecond: rate(ENTRIES, verifyTailMs),
        allSignaturesEntriesPerSecond: rate(ENTRIES, verifyAllMs),
        targetEntriesPerSecond: 50000,
      },
    };
    const raw = rawSyncRate(dir, 2000);
    result.append.baselineRawWriteFdatasyncPerLine = raw;
    result.append.ratioToRaw = Math.round((result.append.entriesPerSecond / raw) * 100) / 100;
    result.append.twoWritersEntriesPerSecond = await twoWriters(join(dir, "two"), key, Math.min(ENTRIES, 20_000));
    result.append.met = result.append.entriesPerSecond >= 5000;
    result.verify.met = result.verify.tailSignatureEntriesPerSecond >= 50000;
    return result;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(`${JSON.stringify(await benchAudit(), null, 2)}\n`);
