#!/usr/bin/env node
// Audit log benchmarks. Prints one JSON document on stdout.
//   node bench/audit.mjs                       # defaults
//   AUDIT_ENTRIES=50000 AUDIT_CONCURRENCY=256 node bench/audit.mjs
// append: AUDIT_CONCURRENCY callers each await their append before making the next one, so every
// counted entry was acknowledged after fdatasync; batch sizes are what group commit formed.
// verify: the file just written, in the default ("tail") and "all" signature modes, after one
// untimed warm-up run.
import { generateKeyPairSync } from "node:crypto";
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

async function main() {
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
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
