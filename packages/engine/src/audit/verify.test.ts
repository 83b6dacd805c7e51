import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { entryLine, sha256Hex, signEntry, type AuditEntry } from "./entry.js";
import { verifyAuditFile, type VerifyOptions, type VerifyResult } from "./verify.js";
import { auditEvent } from "./_test/arbitraries.js";
import { buildChain, fileOf, sampleEvents } from "./_test/chain.js";

const key = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const MODES = ["tail", "all"] as const;

let dir: string;
let n = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-audit-verify-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function verifyContent(content: string | Buffer, options: VerifyOptions = {}): Promise<VerifyResult> {
  const path = join(dir, `f${n++}.log`);
  await writeFile(path, content);
  return verifyAuditFile(path, key.publicKey, options);
}

function bad(result: VerifyResult): { seq: number | null; line: number; code: string } {
  assert.equal(result.ok, false, "verification should fail");
  const { seq, line, code } = (result as Extract<VerifyResult, { ok: false }>).firstBad;
  return { seq, line, code };
}

/** Re-signs `entry` (after `change`) with `signer`, keeping its prev. */
function resign(entry: AuditEntry, signer: typeof key, change: (e: AuditEntry) => AuditEntry = (e) => e): string {
  const { hash: _h, sig: _s, ...unsigned } = change(entry);
  return entryLine(signEntry(unsigned, signer.privateKey));
}

describe("verifyAuditFile", () => {
  const { entries, lines } = buildChain(sampleEvents(10), key.privateKey);

  for (const signatures of MODES) {
    describe(`signatures: ${signatures}`, () => {
      it("accepts an intact chain and an empty file", async () => {
        assert.deepEqual(await verifyContent(fileOf(lines), { signatures }), { ok: true, entries: 10, lastSeq: 10, lastHash: entries[9]!.hash });
        assert.deepEqual(await verifyContent("", { signatures }), { ok: true, entries: 0, lastSeq: 0, lastHash: null });
      });

      it("names an edited field", async () => {
        const edited = lines.slice();
        edited[4] = edited[4]!.replace('"durationMs":4', '"durationMs":5');
        assert.notEqual(edited[4], lines[4]);
        assert.deepEqual(bad(await verifyContent(fileOf(edited), { signatures })), { seq: 5, line: 5, code: "hash_mismatch" });
      });

      it("names an edited entry whose hash was recomputed and signed with another key", async () => {
        const edited = lines.slice();
        edited[4] = resign(entries[4]!, other, (e) => ({ ...e, event: { ...e.event, durationMs: 999 } as AuditEntry["event"] }));
        assert.deepEqual(bad(await verifyContent(fileOf(edited), { signatures })), { seq: 5, line: 5, code: "bad_signature" });
      });

      it("names an entry re-signed with another key, in the middle and at the end", async () => {
        const middle = lines.slice();
        middle[2] = resign(entries[2]!, other);
        assert.deepEqual(bad(await verifyContent(fileOf(middle), { signatures })), { seq: 3, line: 3, code: "bad_signature" });
        const last = lines.slice();
        last[9] = resign(entries[9]!, other);
        assert.deepEqual(bad(await verifyContent(fileOf(last), { signatures })), { seq: 10, line: 10, code: "bad_signature" });
      });

      it("names the first of a run of entries an attacker re-chained and re-signed", async () => {
        // Entry 4 edited, then 4..10 re-linked and re-signed with another key: every link holds.
        const relinked = relinkFrom(lines.slice(0, 3), entries.slice(3).map((e, i) => (i === 0 ? { ...e, event: { ...e.event, argc: 99 } as AuditEntry["event"] } : e)));
        assert.deepEqual(bad(await verifyContent(fileOf(relinked), { signatures })), { seq: 4, line: 4, code: "bad_signature" });
      });

      it("names a deleted entry (first, middle and last but one)", async () => {
        assert.deepEqual(bad(await verifyContent(fileOf(lines.slice(1)), { signatures })), { seq: 2, line: 1, code: "seq_gap" });
        assert.deepEqual(bad(await verifyContent(fileOf([...lines.slice(0, 4), ...lines.slice(5)]), { signatures })), { seq: 6, line: 5, code: "seq_gap" });
        assert.deepEqual(bad(await verifyContent(fileOf([...lines.slice(0, 8), lines[9]!]), { signatures })), { seq: 10, line: 9, code: "seq_gap" });
      });

      it("names reordered and repeated entries", async () => {
        const swapped = lines.slice();
        [swapped[3], swapped[4]] = [swapped[4]!, swapped[3]!];
        assert.deepEqual(bad(await verifyContent(fileOf(swapped), { signatures })), { seq: 5, line: 4, code: "seq_gap" });
        const repeated = [...lines.slice(0, 5), lines[4]!, ...lines.slice(5)];
        assert.deepEqual(bad(await verifyContent(fileOf(repeated), { signatures })), { seq: 5, line: 6, code: "seq_out_of_order" });
      });

      it("names a torn tail, and a cut at a line boundary when the expected last seq is given", async () => {
        const content = fileOf(lines);
        const torn = content.slice(0, content.length - 30);
        const r = await verifyContent(torn, { signatures });
        assert.deepEqual(bad(r), { seq: null, line: 10, code: "torn_tail" });
        assert.equal((r as Extract<VerifyResult, { ok: false }>).entries, 9);
        const noNewline = content.slice(0, content.length - 1);
        assert.deepEqual(bad(await verifyContent(noNewline, { signatures })), { seq: null, line: 10, code: "torn_tail" });
        const cut = fileOf(lines.slice(0, 7));
        assert.equal((await verifyContent(cut, { signatures })).ok, true);
        assert.deepEqual(bad(await verifyContent(cut, { signatures, expectLastSeq: 10 })), { seq: 8, line: 8, code: "truncated" });
      });

      it("names a non-canonical spelling of a valid entry and an over-long line", async () => {
        const spaced = lines.slice();
        spaced[1] = JSON.stringify(JSON.parse(spaced[1]!), null, 1).replace(/\n/g, "");
        assert.deepEqual(bad(await verifyContent(fileOf(spaced), { signatures })), { seq: 2, line: 2, code: "not_canonical" });
        const long = [lines[0]!, "x".repeat(10_000)];
        assert.deepEqual(bad(await verifyContent(fileOf(long), { signatures })), { seq: null, line: 2, code: "line_too_long" });
      });
    });
  }

  it("verifies every random event sequence (property)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(auditEvent, { minLength: 1, maxLength: 20 }), async (events) => {
        const chain = buildChain(events, key.privateKey);
        for (const signatures of MODES) {
          const r = await verifyContent(fileOf(chain.lines), { signatures });
          assert.deepEqual(r, { ok: true, entries: events.length, lastSeq: events.length, lastHash: chain.entries.at(-1)!.hash });
        }
      }),
      { numRuns: 40 },
    );
  });

  it("detects any single-byte change of a valid file (property)", async () => {
    const small = buildChain(sampleEvents(4), key.privateKey);
    const content = Buffer.from(fileOf(small.lines));
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: content.length - 1 }), fc.integer({ min: 1, max: 255 }), async (at, xor) => {
        const mutated = Buffer.from(content);
        mutated[at] = mutated[at]! ^ xor;
        for (const signatures of MODES) {
          const r = await verifyContent(mutated, { signatures });
          assert.equal(r.ok, false, `byte ${at} ^ ${xor} went undetected (${signatures})`);
        }
      }),
      { numRuns: 300 },
    );
  });

  it("refuses a key that is not Ed25519", async () => {
    const rsa = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await assert.rejects(verifyAuditFile(join(dir, "none"), rsa.publicKey), { code: "INVALID_ARGUMENT" });
  });
});

/** Appends `rest` to `head` with prev links recomputed and signatures by `other`. */
function relinkFrom(head: string[], rest: AuditEntry[]): string[] {
  const out = head.slice();
  for (const e of rest) {
    const { hash: _h, sig: _s, ...unsigned } = e;
    out.push(entryLine(signEntry({ ...unsigned, prev: sha256Hex(out.at(-1)!) }, other.privateKey)));
  }
  return out;
}
