/**
 * A client reading a signed plan leniently (protocol lenientSchema) keeps every field, unknown
 * ones included, since the plan goes back to the daemon whose signature covers them all; a
 * mistyped known field still fails.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SignedPlan, lenientSchema } from "@mvm/protocol";
import { createPlan, signPlan, verifyPlanSignature } from "./plan.js";
import { generateTestKeys, sampleIR, sampleProfile } from "./_testing.js";

const keys = generateTestKeys();
const T0 = 1_800_000_000_000;

test("a signed plan read leniently is returned whole, a newer daemon's fields included", () => {
  const signed = signPlan(createPlan({ ir: sampleIR(), profile: sampleProfile(), notBeforeMs: T0, notAfterMs: T0 + 60_000 }), keys.privateKey);
  const read = lenientSchema(SignedPlan).parse(signed);
  assert.deepEqual(read, signed);
  assert.doesNotThrow(() => verifyPlanSignature(read, keys.publicKey));
  const newer = { ...signed, plan: { ...signed.plan, addedLater: { x: 1 }, ir: { ...signed.plan.ir, alsoNew: [1] } } };
  assert.deepEqual(lenientSchema(SignedPlan).parse(newer), newer);
  assert.equal(lenientSchema(SignedPlan).safeParse({ ...signed, signature: { ...signed.signature, value: 7 } }).success, false);
  assert.equal(lenientSchema(SignedPlan).safeParse({ ...signed, plan: { ...signed.plan, planId: "sha256:x" } }).success, false);
});
