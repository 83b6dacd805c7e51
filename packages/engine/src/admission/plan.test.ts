import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { AdmissionError, InvalidArgumentError, canonicalJson } from "@mvm/protocol";
import { createHash, generateKeyPairSync, verify } from "node:crypto";
import {
  MAX_SIGNED_PLAN_BYTES,
  computePlanId,
  createPlan,
  decodeSignedPlan,
  encodeSignedPlan,
  keyIdOf,
  signPlan,
  verifyPlanSignature,
  type ExecutionPlan,
} from "./plan.js";
import { arbIR, generateTestKeys, sampleIR, sampleProfile, storeRef } from "./_testing.js";

const keys = generateTestKeys();
const T0 = 1_800_000_000_000;

function samplePlan(): ExecutionPlan {
  return createPlan({ ir: sampleIR(), profile: sampleProfile(), notBeforeMs: T0, notAfterMs: T0 + 60_000 });
}

/** Rebuilds a value with its object keys in a random order. */
function shuffleKeys(value: unknown, rand: () => number): unknown {
  if (Array.isArray(value)) return value.map((v) => shuffleKeys(v, rand));
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value).sort(() => rand() - 0.5);
    return Object.fromEntries(entries.map(([k, v]) => [k, shuffleKeys(v, rand)]));
  }
  return value;
}

describe("execution plans", () => {
  it("round-trips: sign, encode, decode, verify", () => {
    const plan = samplePlan();
    const signed = signPlan(plan, keys.privateKey);
    assert.equal(signed.signature.keyId, keyIdOf(keys.publicKey));
    const back = verifyPlanSignature(decodeSignedPlan(encodeSignedPlan(signed)), keys.publicKey);
    assert.deepEqual(back, signed);
    assert.equal(back.plan.planId, computePlanId(plan));
  });

  it("signs exactly the bytes README.md describes: domain line + canonical JSON of the plan", () => {
    const signed = signPlan(samplePlan(), keys.privateKey);
    const bytes = Buffer.from(`mvm.execution-plan.v1\n${canonicalJson(signed.plan)}`, "utf8");
    assert.equal(verify(null, bytes, keys.publicKey, Buffer.from(signed.signature.value, "hex")), true);
    const { planId, ...unsigned } = signed.plan;
    assert.equal(planId, `sha256:${createHash("sha256").update(canonicalJson(unsigned)).digest("hex")}`);
    assert.deepEqual(Object.keys(JSON.parse(encodeSignedPlan(signed).toString("utf8"))), ["plan", "signature"]);
  });

  it("gives each plan a fresh 128-bit nonce", () => {
    const a = samplePlan();
    const b = samplePlan();
    assert.match(a.nonce, /^[0-9a-f]{32}$/);
    assert.notEqual(a.nonce, b.nonce);
    assert.notEqual(a.planId, b.planId);
  });

  it("refuses any single-byte mutation of an encoded signed plan", () => {
    const bytes = encodeSignedPlan(signPlan(samplePlan(), keys.privateKey));
    fc.assert(
      fc.property(fc.nat({ max: bytes.length - 1 }), fc.integer({ min: 1, max: 255 }), (index, delta) => {
        const mutated = Buffer.from(bytes);
        mutated[index] = (mutated[index]! + delta) & 0xff;
        assert.throws(() => verifyPlanSignature(decodeSignedPlan(mutated), keys.publicKey), AdmissionError);
      }),
      { numRuns: 2000 },
    );
  });

  it("refuses a plan whose content changed after signing, even with a recomputed planId", () => {
    const signed = signPlan(samplePlan(), keys.privateKey);
    const changed = { ...signed.plan, ir: { ...signed.plan.ir, ttlSeconds: 7200 } };
    assert.throws(() => verifyPlanSignature({ ...signed, plan: changed }, keys.publicKey), /planId does not match/);
    const reIded = { ...changed, planId: computePlanId(changed) };
    assert.throws(() => verifyPlanSignature({ ...signed, plan: reIded }, keys.publicKey), /bad signature/);
  });

  it("refuses a plan signed by another key", () => {
    const other = generateTestKeys();
    const signed = signPlan(samplePlan(), other.privateKey);
    assert.throws(() => verifyPlanSignature(signed, keys.publicKey), /signed by key/);
    // Same signature presented under the expected key id: the signature check itself refuses it.
    const relabelled = { ...signed, signature: { ...signed.signature, keyId: keyIdOf(keys.publicKey) } };
    assert.throws(() => verifyPlanSignature(relabelled, keys.publicKey), /bad signature/);
  });

  it("refuses non-canonical, oversized and non-UTF-8 encodings", () => {
    const signed = signPlan(samplePlan(), keys.privateKey);
    assert.throws(() => decodeSignedPlan(Buffer.from(JSON.stringify(signed, null, 1))), /not canonical/);
    assert.throws(() => decodeSignedPlan(Buffer.alloc(MAX_SIGNED_PLAN_BYTES + 1, 0x20)), /exceeds the limit/);
    assert.throws(() => decodeSignedPlan(Buffer.from([0x7b, 0xff, 0x7d])), AdmissionError);
    assert.throws(() => decodeSignedPlan(Buffer.from("[")), AdmissionError);
    assert.throws(() => decodeSignedPlan(Buffer.from("[".repeat(400_000) + "]".repeat(400_000))), AdmissionError);
  });

  it("refuses schema violations as AdmissionError", () => {
    const signed = signPlan(samplePlan(), keys.privateKey);
    assert.throws(() => verifyPlanSignature({ ...signed, extra: true }, keys.publicKey), /Malformed signed plan/);
    assert.throws(() => verifyPlanSignature({ ...signed, signature: { ...signed.signature, value: "AB".repeat(64) } }, keys.publicKey), AdmissionError);
    assert.throws(() => verifyPlanSignature(null, keys.publicKey), AdmissionError);
  });

  it("keeps the profile consistent with the IR", () => {
    assert.throws(
      () => createPlan({ ir: sampleIR(), profile: sampleProfile({ intent: "tool:call" }), notBeforeMs: T0, notAfterMs: T0 + 1 }),
      /field "profile.intent"/,
    );
    assert.throws(
      () => createPlan({ ir: sampleIR(), profile: sampleProfile({ secretRelease: "none" }), notBeforeMs: T0, notAfterMs: T0 + 1 }),
      /field "profile.secretRelease"/,
    );
    const envSecret = sampleIR({ secrets: [{ name: "TOKEN", ref: storeRef("t", "env") }] });
    assert.throws(() => createPlan({ ir: envSecret, profile: sampleProfile(), notBeforeMs: T0, notAfterMs: T0 + 1 }), InvalidArgumentError);
    assert.ok(createPlan({ ir: envSecret, profile: sampleProfile({ secretRelease: "env" }), notBeforeMs: T0, notAfterMs: T0 + 1 }));
    assert.throws(() => createPlan({ ir: sampleIR(), profile: sampleProfile(), notBeforeMs: T0, notAfterMs: T0 }), /field "notAfterMs"/);
  });

  it("signs only with an Ed25519 private key and checks the planId first", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 });
    assert.throws(() => signPlan(samplePlan(), rsa.privateKey), InvalidArgumentError);
    assert.throws(() => signPlan(samplePlan(), keys.publicKey), InvalidArgumentError);
    assert.throws(() => signPlan({ ...samplePlan(), planId: `sha256:${"0".repeat(64)}` }, keys.privateKey), /does not match/);
    assert.throws(() => verifyPlanSignature(signPlan(samplePlan(), keys.privateKey), keys.privateKey), InvalidArgumentError);
  });

  it("serializes plans canonically: key order never changes the bytes, the planId or the signature check", () => {
    fc.assert(
      fc.property(arbIR, fc.nat({ max: 1e9 }), fc.integer(), (ir, start, seed) => {
        let state = seed;
        const rand = () => ((state = (state * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
        const plan = createPlan({ ir, profile: sampleProfile({ intent: ir.intent, secretRelease: "env" }), notBeforeMs: start, notAfterMs: start + 1000 });
        const shuffled = shuffleKeys(plan, rand) as ExecutionPlan;
        assert.equal(canonicalJson(shuffled), canonicalJson(plan));
        assert.equal(computePlanId(shuffled), plan.planId);
        const signed = signPlan(plan, keys.privateKey);
        const encoded = encodeSignedPlan(signed);
        assert.deepEqual(encodeSignedPlan(shuffleKeys(signed, rand) as typeof signed), encoded);
        assert.deepEqual(verifyPlanSignature(decodeSignedPlan(encoded), keys.publicKey), signed);
      }),
      { numRuns: 200 },
    );
  });
});
