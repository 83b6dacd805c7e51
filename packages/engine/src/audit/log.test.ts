import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { appendFile, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { loadOrCreateHostKey } from "./keys.js";
import { AUDIT_FILE, AuditLog, AuditLogCorruptError, PIPELINED_SYNC_MS } from "./log.js";
import { verifyAuditFile } from "./verify.js";
import { selfIdentity } from "../store/lock.js";

const selfStartTime = async (): Promise<string> => (await selfIdentity()).startTime;
import { buildChain, fileOf, sampleEvents } from "./_test/chain.js";

const key = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const WRITER = new URL("./_test/audit-writer.js", import.meta.url).pathname;
const sandboxId = "sbx_abcdefghijklmnopqrst";
const killed = { type: "sandbox.killed", sandboxId, by: "caller" } as const;

let root: string;
let n = 0;
const freshDir = () => join(root, `log${n++}`);
before(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-audit-log-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Spawns the writer fixture; `lines` collects its stdout lines as they arrive. */
function startWriter(stateDir: string, mode: "burst" | "written" | "hold" | `${number}`): { child: ChildProcess; lines: string[]; exited: Promise<unknown> } {
  const child = spawn(process.execPath, [WRITER, stateDir, mode], { stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  let partial = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    const parts = (partial + d).split("\n");
    partial = parts.pop() ?? "";
    lines.push(...parts);
    child.stdout!.emit("lines");
  });
  return { child, lines, exited: once(child, "close") };
}

/** Resolves when `lines` satisfies `done`, checked on each stdout chunk. */
function waitForLines(child: ChildProcess, lines: string[], done: (lines: string[]) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (done(lines)) {
        child.stdout!.off("lines", check);
        resolve();
      }
    };
    child.stdout!.on("lines", check);
    child.once("close", () => reject(new Error(`writer exited early: ${lines.slice(-3).join(" | ")}`)));
    check();
  });
}

describe("AuditLog", () => {
  it("appends durable entries with consecutive seqs, grouping concurrent appends into batches", async () => {
    const dir = freshDir();
    const log = await AuditLog.open(dir, { key });
    const receipts = await Promise.all(Array.from({ length: 50 }, () => log.append(killed)));
    assert.deepEqual(receipts.map((r) => r.seq), Array.from({ length: 50 }, (_, i) => i + 1));
    assert.match(receipts[0]!.id, /^aud_1_[0-9a-f]{16}$/);
    const stats = log.stats();
    assert.equal(stats.entries, 50);
    assert.ok(stats.batches < 50, `50 appends in one tick took ${stats.batches} batches`);
    const one = await log.append(killed);
    assert.equal(one.seq, 51);
    await log.close();
    assert.equal((await stat(join(dir, AUDIT_FILE))).mode & 0o777, 0o600);
    assert.deepEqual(await verifyAuditFile(join(dir, AUDIT_FILE), key.publicKey, { signatures: "all" }), {
      ok: true,
      entries: 51,
      lastSeq: 51,
      lastHash: one.hash,
    });
  });

  it("continues the chain after a reopen", async () => {
    const dir = freshDir();
    const first = await AuditLog.open(dir, { key });
    await first.append(killed);
    await first.close();
    const second = await AuditLog.open(dir, { key });
    assert.equal(second.nextSeq, 2);
    assert.equal((await second.append(killed)).seq, 2);
    await second.close();
    assert.equal((await verifyAuditFile(join(dir, AUDIT_FILE), key.publicKey, { signatures: "all" })).ok, true);
  });

  it("resolves a default append only once its entry is synced", async () => {
    const log = await AuditLog.open(freshDir(), { key });
    const r = await log.append(killed);
    assert.equal(log.stats().durableSeq, r.seq);
    const both = await Promise.all([log.append(killed, { wait: "written" }), log.append(killed)]);
    assert.equal(log.stats().durableSeq, both[1].seq);
    await log.close();
  });

  it("resolves a pipelined append once its line is in the file; the next batch's one sync covers it, in order", async (t) => {
    // The pipelined entry's own sync timer must not fire in between on a slow machine.
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const dir = freshDir();
    const log = await AuditLog.open(dir, { key });
    const written = await log.append(killed, { wait: "written" });
    assert.deepEqual([log.stats().syncs, log.stats().durableSeq], [0, 0]);
    const lines = (await readFile(join(dir, AUDIT_FILE), "utf8")).split("\n").filter((l) => l !== "");
    assert.equal(lines.length, 1);
    assert.equal((JSON.parse(lines[0]!) as { seq: number; hash: string }).hash, written.hash);
    const durable = await log.append(killed);
    assert.equal(durable.seq, written.seq + 1);
    assert.deepEqual([log.stats().syncs, log.stats().durableSeq], [1, durable.seq]);
    t.mock.timers.reset();
    await log.close();
    assert.equal((await verifyAuditFile(join(dir, AUDIT_FILE), key.publicKey, { signatures: "all" })).ok, true);
  });

  it(`syncs a pipelined entry by itself ${PIPELINED_SYNC_MS} ms after its write when no other append comes`, async (t) => {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const log = await AuditLog.open(freshDir(), { key });
    const written = await log.append(killed, { wait: "written" });
    const turns = async (n: number): Promise<void> => {
      for (let i = 0; i < n && log.stats().syncs === 0; i++) await new Promise((r) => setImmediate(r));
    };
    t.mock.timers.tick(PIPELINED_SYNC_MS - 1);
    await turns(50);
    assert.equal(log.stats().syncs, 0, "synced before its timer");
    t.mock.timers.tick(1);
    await turns(10_000);
    assert.deepEqual([log.stats().syncs, log.stats().durableSeq], [1, written.seq]);
    t.mock.timers.reset();
    await log.close();
  });

  it("syncs pipelined entries on close, and sync() waits for them", async () => {
    const log = await AuditLog.open(freshDir(), { key });
    await log.append(killed, { wait: "written" });
    await log.sync();
    assert.deepEqual([log.stats().syncs, log.stats().durableSeq], [1, 1]);
    await log.append(killed, { wait: "written" });
    await log.close();
    assert.deepEqual([log.stats().syncs, log.stats().durableSeq], [2, 2]);
  });

  it("rejects an event outside its schema and keeps working", async () => {
    const dir = freshDir();
    const log = await AuditLog.open(dir, { key });
    await assert.rejects(log.append({ ...killed, argv: ["cat", "secret"] } as never), { code: "INVALID_ARGUMENT" });
    assert.equal((await log.append(killed)).seq, 1);
    await log.close();
    await assert.rejects(log.append(killed), { code: "INTERNAL" });
  });

  it("reports a torn tail with its offset, leaves it untouched, and repairs it only when asked", async () => {
    const dir = freshDir();
    const { lines } = buildChain(sampleEvents(5), key.privateKey);
    const path = join(dir, AUDIT_FILE);
    const good = fileOf(lines.slice(0, 4));
    await (await AuditLog.open(dir, { key })).close();
    await writeFile(path, good + lines[4]!.slice(0, 40));
    const err = await AuditLog.open(dir, { key }).then(
      () => assert.fail("open should refuse a torn tail"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof AuditLogCorruptError);
    assert.equal(err.offset, Buffer.byteLength(good));
    assert.equal(err.code, "INTERNAL");
    assert.equal(await readFile(path, "utf8"), good + lines[4]!.slice(0, 40));

    const repaired = await AuditLog.repairTornTail(dir, { key });
    assert.equal(repaired?.movedBytes, 40);
    assert.equal(await readFile(repaired.sidePath, "utf8"), lines[4]!.slice(0, 40));
    assert.equal(await readFile(path, "utf8"), good);
    assert.equal(await AuditLog.repairTornTail(dir, { key }), undefined);

    const log = await AuditLog.open(dir, { key });
    assert.equal((await log.append(killed)).seq, 5);
    await log.close();
    assert.equal((await verifyAuditFile(path, key.publicKey, { signatures: "all" })).ok, true);
  });

  it("refuses to extend a tail whose last line is complete but bad", async () => {
    const dir = freshDir();
    await (await AuditLog.open(dir, { key })).close();
    const path = join(dir, AUDIT_FILE);
    const { lines } = buildChain(sampleEvents(3), other.privateKey);
    await appendFile(path, fileOf(lines));
    await assert.rejects(AuditLog.open(dir, { key }), (e: unknown) => e instanceof AuditLogCorruptError && /not signed by this host's key/.test(e.message));
    await writeFile(path, fileOf(buildChain(sampleEvents(3), key.privateKey).lines).replace('"by":"caller"', '"by":"engine"'));
    await assert.rejects(AuditLog.open(dir, { key }), (e: unknown) => e instanceof AuditLogCorruptError && /hash does not match/.test(e.message));
  });

  it("lets several writers share one log, one batch at a time: every acknowledged entry is there once and the chain verifies", async () => {
    const stateDir = freshDir();
    const hostKey = await loadOrCreateHostKey(stateDir);
    const auditDir = join(stateDir, "audit");
    const a = startWriter(stateDir, "400");
    const b = startWriter(stateDir, "400");
    const here = await AuditLog.open(auditDir, { key: hostKey });
    const mine = await Promise.all(Array.from({ length: 400 }, () => here.append(killed)));
    await Promise.all([a.exited, b.exited]);
    const seqs = [...a.lines, ...b.lines].filter((l) => l !== "").map(Number).concat(mine.map((r) => r.seq));
    assert.equal(seqs.length, 1200, [...a.lines, ...b.lines].find((l) => l.startsWith("error")));
    assert.equal(new Set(seqs).size, 1200, "no seq was acknowledged twice");
    // The log stays usable for this writer after the others appended behind its back.
    const last = await here.append(killed);
    assert.equal(last.seq, 1201);
    await here.close();
    const result = await verifyAuditFile(join(auditDir, AUDIT_FILE), hostKey.publicKey, { signatures: "all" });
    assert.deepEqual(result, { ok: true, entries: 1201, lastSeq: 1201, lastHash: last.hash });
    // Each writer's lock file is gone; nothing holds the lock.
    assert.deepEqual((await readdir(auditDir)).filter((n) => n.includes(".lock")), []);
  });

  it("waits for a writer that holds the lock, and breaks the lock of a writer that died holding it", async () => {
    const stateDir = freshDir();
    const hostKey = await loadOrCreateHostKey(stateDir);
    const auditDir = join(stateDir, "audit");
    const lockPath = join(auditDir, `${AUDIT_FILE}.lock`);
    const log = await AuditLog.open(auditDir, { key: hostKey });
    // A live holder (this process, as another writer would): the append waits until it lets go.
    await writeFile(lockPath, `${process.pid}-${await selfStartTime()}-abcdef\n`);
    let done = false;
    const pending = log.append(killed).then((r) => ((done = true), r));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(done, false, "the append waited for the holder");
    await rm(lockPath);
    assert.equal((await pending).seq, 1);
    // A dead holder: its lock is stale and broken.
    await writeFile(lockPath, "999999999-1-abcdef\n");
    assert.equal((await log.append(killed)).seq, 2);
    await log.close();
  });

  it("keeps every acknowledged entry through kill -9 during a burst of appends", async () => {
    const stateDir = freshDir();
    const writer = startWriter(stateDir, "burst");
    await waitForLines(writer.child, writer.lines, (l) => l.length >= 2000);
    writer.child.kill("SIGKILL");
    await writer.exited;
    assert.ok(!writer.lines.some((l) => l.startsWith("error")), writer.lines.find((l) => l.startsWith("error")));
    const acked = writer.lines.filter((l) => l !== "").map(Number);
    assert.ok(acked.every((s) => Number.isInteger(s) && s > 0));
    const maxAcked = Math.max(...acked);

    const hostKey = await loadOrCreateHostKey(stateDir);
    const path = join(stateDir, "audit", AUDIT_FILE);
    const result = await verifyAuditFile(path, hostKey.publicKey, { signatures: "all" });
    if (result.ok) {
      assert.ok(result.lastSeq >= maxAcked, `acknowledged seq ${maxAcked} missing: file ends at ${result.lastSeq}`);
    } else {
      // Only a torn write after the last acknowledged entry is allowed, and it is reported.
      assert.equal(result.firstBad.code, "torn_tail");
      assert.ok(result.entries >= maxAcked);
      await assert.rejects(AuditLog.open(join(stateDir, "audit"), { key: hostKey }), AuditLogCorruptError);
      await AuditLog.repairTornTail(join(stateDir, "audit"), { key: hostKey });
    }
    const log = await AuditLog.open(join(stateDir, "audit"), { key: hostKey });
    // The killed writer may have died holding the lock: its owner is gone, so the lock is broken.
    await log.append(killed);
    await log.close();
    assert.equal((await verifyAuditFile(path, hostKey.publicKey)).ok, true);
  });

  it("keeps every pipelined (written, not yet synced) entry through kill -9 of its writer", async () => {
    const stateDir = freshDir();
    const writer = startWriter(stateDir, "written");
    await waitForLines(writer.child, writer.lines, (l) => l.length >= 2000);
    writer.child.kill("SIGKILL");
    await writer.exited;
    assert.ok(!writer.lines.some((l) => l.startsWith("error")), writer.lines.find((l) => l.startsWith("error")));
    const maxAcked = Math.max(...writer.lines.filter((l) => l !== "").map(Number));
    const hostKey = await loadOrCreateHostKey(stateDir);
    const result = await verifyAuditFile(join(stateDir, "audit", AUDIT_FILE), hostKey.publicKey, { signatures: "all" });
    const entries = result.ok ? result.lastSeq : result.entries;
    assert.ok(entries >= maxAcked, `acknowledged seq ${maxAcked} missing: file holds ${entries} good entries`);
  });

  it("refuses to extend a tail another writer tore, and continues once it is repaired", async () => {
    const dir = freshDir();
    const log = await AuditLog.open(dir, { key });
    await log.append(killed);
    const path = join(dir, AUDIT_FILE);
    await appendFile(path, '{"event":{"type":"sandbox.kil');
    await assert.rejects(log.append(killed), AuditLogCorruptError);
    await AuditLog.repairTornTail(dir, { key });
    assert.equal((await log.append(killed)).seq, 2);
    await log.close();
    assert.equal((await verifyAuditFile(path, key.publicKey, { signatures: "all" })).ok, true);
  });

  it("reports a torn tail that a crash left mid-line, found by truncating a real log", async () => {
    const dir = freshDir();
    const log = await AuditLog.open(dir, { key });
    await Promise.all(Array.from({ length: 20 }, () => log.append(killed)));
    await log.close();
    const path = join(dir, AUDIT_FILE);
    const { size } = await stat(path);
    await truncate(path, size - 7);
    const r = await verifyAuditFile(path, key.publicKey);
    assert.equal(r.ok ? "ok" : r.firstBad.code, "torn_tail");
    await assert.rejects(AuditLog.open(dir, { key }), AuditLogCorruptError);
  });
});
