import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { appendFile, mkdtemp, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { loadOrCreateHostKey } from "./keys.js";
import { AUDIT_FILE, AuditLog, AuditLogCorruptError } from "./log.js";
import { verifyAuditFile } from "./verify.js";
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
function startWriter(stateDir: string, mode: "burst" | "hold"): { child: ChildProcess; lines: string[]; exited: Promise<unknown> } {
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

  it("allows one writer at a time: a second one is refused while the first lives, and takes over once it is dead", async () => {
    const stateDir = freshDir();
    const holder = startWriter(stateDir, "hold");
    await waitForLines(holder.child, holder.lines, (l) => l.includes("ready"));
    const hostKey = await loadOrCreateHostKey(stateDir);
    const auditDir = join(stateDir, "audit");
    await assert.rejects(AuditLog.open(auditDir, { key: hostKey }), (e: unknown) => {
      assert.equal((e as { code?: string }).code, "ALREADY_EXISTS");
      assert.match((e as Error).message, new RegExp(`pid ${holder.child.pid}`));
      return true;
    });
    holder.child.kill("SIGKILL");
    await holder.exited;
    const log = await AuditLog.open(auditDir, { key: hostKey });
    assert.equal((await log.append(killed)).seq, 2);
    // The same process cannot open it twice either.
    await assert.rejects(AuditLog.open(auditDir, { key: hostKey }), { code: "ALREADY_EXISTS" });
    await log.close();
    await (await AuditLog.open(auditDir, { key: hostKey })).close();
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
    await log.append(killed);
    await log.close();
    assert.equal((await verifyAuditFile(path, hostKey.publicKey)).ok, true);
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
