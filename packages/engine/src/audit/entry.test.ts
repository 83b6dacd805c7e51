import { generateKeyPairSync } from "node:crypto";
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { canonicalJson } from "@mvm/protocol";
import { AuditEntrySchema, AuditEventSchema, GENESIS_PREV, argvDigest, entryHash, entryLine, sha256Hex, signEntry, signatureValid } from "./entry.js";
import { checkLine } from "./line.js";
import { auditEvent } from "./_test/arbitraries.js";

const key = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const ts = fc.date({ min: new Date("2000-01-01T00:00:00Z"), max: new Date("2099-12-31T00:00:00Z"), noInvalidDate: true }).map((d) => d.toISOString());
const unsigned = fc.record({
  v: fc.constant(1 as const),
  seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  ts,
  prev: fc.stringMatching(/^[0-9a-f]{64}$/),
  event: auditEvent,
}, { noNullPrototype: true });

describe("audit entry", () => {
  it("stores an entry as canonicalJson, and the line parses back to the same entry", () => {
    fc.assert(
      fc.property(unsigned, (u) => {
        const entry = signEntry(u, key.privateKey);
        const line = entryLine(entry);
        assert.equal(line, canonicalJson(entry));
        const back: unknown = JSON.parse(line);
        assert.deepEqual(AuditEntrySchema.parse(back), entry);
        assert.equal(canonicalJson(back), line);
        const checked = checkLine(Buffer.from(line));
        assert.ok(checked.ok);
      }),
      { numRuns: 300 },
    );
  });

  it("hashes the canonical JSON of the entry without hash and sig, and signs that hash", () => {
    fc.assert(
      fc.property(unsigned, (u) => {
        const entry = signEntry(u, key.privateKey);
        assert.equal(entry.hash, sha256Hex(canonicalJson({ v: u.v, seq: u.seq, ts: u.ts, prev: u.prev, event: u.event })));
        assert.equal(entryHash(u), entry.hash);
        assert.ok(signatureValid(entry, key.publicKey));
        assert.ok(!signatureValid(entry, other.publicKey));
      }),
      { numRuns: 100 },
    );
  });

  it("refuses events with fields outside their schema, such as a plain argv or a secret", () => {
    const base = { type: "exec.started", sandboxId: "sbx_abcdefghijklmnopqrst", execId: "ex_1", argvDigest: argvDigest(["ls"]), argc: 1 };
    assert.ok(AuditEventSchema.safeParse(base).success);
    assert.ok(!AuditEventSchema.safeParse({ ...base, argv: ["ls"] }).success);
    assert.ok(!AuditEventSchema.safeParse({ ...base, argvDigest: "ls -la" }).success);
    assert.ok(!AuditEventSchema.safeParse({ type: "secret.read", name: "OPENAI_API_KEY" }).success);
    assert.ok(!AuditEventSchema.safeParse({ type: "plan.admitted", planId: "has space", planDigest: "0".repeat(64) }).success);
  });

  it("digests argv canonically: same argv, same digest; a different split, another digest", () => {
    assert.equal(argvDigest(["echo", "a b"]), sha256Hex('["echo","a b"]'));
    assert.notEqual(argvDigest(["echo", "a", "b"]), argvDigest(["echo", "a b"]));
  });

  it("starts the chain at 64 zeros", () => {
    assert.equal(GENESIS_PREV, "0".repeat(64));
  });
});
