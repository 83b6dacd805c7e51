import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { AuditLog, loadOrCreateHostKey, publicKeyPem } from "@mvm/engine";
import { cli } from "../_test/test-io.js";

const sandboxId = "sbx_abcdefghijklmnopqrst";
let stateDir: string;
let logPath: string;
const receipts: { id: string; hash: string }[] = [];

before(async () => {
  stateDir = await mkdtemp(join(tmpdir(), "mvm-cli-audit-"));
  const key = await loadOrCreateHostKey(stateDir);
  const log = await AuditLog.open(join(stateDir, "audit"), { key });
  for (let i = 0; i < 5; i++) receipts.push(await log.append({ type: "sandbox.expired", sandboxId, ttlSeconds: i }));
  await log.close();
  logPath = join(stateDir, "audit", "audit.log");
});
after(async () => {
  await rm(stateDir, { recursive: true, force: true });
});

describe("mvmctl audit", () => {
  it("verify exits 0 on an intact log, with the host key or --pubkey", async () => {
    const r = await cli(["audit", "verify", "--state-dir", stateDir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ok: 5 entries/);
    const pub = join(stateDir, "pub.pem");
    const pem = await cli(["audit", "pubkey", "--state-dir", stateDir]);
    await writeFile(pub, pem.stdout);
    const json = await cli(["audit", "verify", "--json", "--all-signatures", "--pubkey", pub, "--file", logPath]);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual({ ...JSON.parse(json.stdout), lastHash: null }, { file: logPath, ok: true, entries: 5, lastSeq: 5, lastHash: null });
  });

  it("verify exits 1 naming the first bad entry, and fails against another key", async () => {
    const copy = join(stateDir, "edited.log");
    await writeFile(copy, (await readFile(logPath, "utf8")).replace('"ttlSeconds":2', '"ttlSeconds":7'));
    const r = await cli(["audit", "verify", "--json", "--state-dir", stateDir, "--file", copy]);
    assert.equal(r.code, 1);
    const out = JSON.parse(r.stdout) as { ok: boolean; firstBad: { seq: number; line: number; code: string } };
    assert.deepEqual([out.ok, out.firstBad.seq, out.firstBad.line, out.firstBad.code], [false, 3, 3, "hash_mismatch"]);
    assert.match(r.stderr, /entry 3 \(line 3\)/);
    const otherPub = join(stateDir, "other.pem");
    await writeFile(otherPub, publicKeyPem(generateKeyPairSync("ed25519").publicKey));
    const human = await cli(["audit", "verify", "--pubkey", otherPub, "--file", logPath]);
    assert.equal(human.code, 1);
    assert.match(human.stdout, /^BAD: entry 1 \(line 1\) at byte 0: bad_signature/);
  });

  it("tail prints the last N entries and show prints one", async () => {
    const tail = await cli(["audit", "tail", "-n", "2", "--json", "--state-dir", stateDir]);
    assert.equal(tail.code, 0, tail.stderr);
    const entries = JSON.parse(tail.stdout) as { entry: { seq: number } }[];
    assert.deepEqual(entries.map((e) => e.entry.seq), [4, 5]);
    const human = await cli(["audit", "tail", "-n", "2", "--state-dir", stateDir]);
    assert.match(human.stdout, /^4\t\S+\tsandbox\.expired\tsandboxId=sbx_\S+ ttlSeconds=3\n5\t/);
    const show = await cli(["audit", "show", "--json", "--state-dir", stateDir, "3"]);
    assert.equal((JSON.parse(show.stdout) as { entry: { seq: number } }).entry.seq, 3);
    const missing = await cli(["audit", "show", "--state-dir", stateDir, "9"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /No audit entry 9/);
    const usage = await cli(["audit", "show", "--state-dir", stateDir, "x"]);
    assert.equal(usage.code, 2);
    // A receipt's audit entry id finds its entry, and only when the hash matches.
    const byId = await cli(["audit", "show", "--json", "--state-dir", stateDir, receipts[1]!.id]);
    assert.equal(byId.code, 0, byId.stderr);
    assert.equal((JSON.parse(byId.stdout) as { entry: { hash: string } }).entry.hash, receipts[1]!.hash);
    const wrongHash = await cli(["audit", "show", "--state-dir", stateDir, receipts[1]!.id.replace(/_[0-9a-f]{16}$/, "_0000000000000000")]);
    assert.equal(wrongHash.code, 1);
    assert.match(wrongHash.stderr, /has hash/);
  });

  it("verify --expect-last-seq detects a log cut back at a line boundary", async () => {
    const cut = join(stateDir, "cut.log");
    const lines = (await readFile(logPath, "utf8")).split("\n");
    await writeFile(cut, `${lines.slice(0, 3).join("\n")}\n`);
    assert.equal((await cli(["audit", "verify", "--state-dir", stateDir, "--file", cut])).code, 0, "a clean cut verifies on its own");
    const r = await cli(["audit", "verify", "--json", "--state-dir", stateDir, "--file", cut, "--expect-last-seq", "5"]);
    assert.equal(r.code, 1);
    assert.equal((JSON.parse(r.stdout) as { firstBad: { code: string } }).firstBad.code, "truncated");
  });

  it("reports a missing log as not found", async () => {
    const r = await cli(["audit", "tail", "--file", join(stateDir, "nope.log")]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /does not exist/);
  });
});
