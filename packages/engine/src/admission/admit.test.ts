import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdmissionError, PolicyDeniedError } from "@mvm/protocol";
import { admit, PolicyRuleDeniedError, type AdmitOptions } from "./admit.js";
import { createPlan, decodeSignedPlan, encodeSignedPlan, signPlan, type SignedPlan } from "./plan.js";
import { ReplayStore } from "./replay.js";
import { RULE_CASES, generateTestKeys, sampleIR, sampleProfile } from "./_testing.js";
import type { WorkloadIR } from "./ir.js";

const root = mkdtempSync(join(tmpdir(), "mvm-admit-test-"));
const opened: ReplayStore[] = [];
after(async () => {
  for (const store of opened) await store.close();
  rmSync(root, { recursive: true, force: true });
});
/** A store closed when the tests end. */
function storeAt(dir: string): ReplayStore {
  const store = new ReplayStore({ dir });
  opened.push(store);
  return store;
}
let n = 0;
const keys = generateTestKeys();
const T0 = 1_800_000_000_000;
const HOUR = 3600_000;

function signed(ir: WorkloadIR = sampleIR(), notBeforeMs = T0, notAfterMs = T0 + HOUR): SignedPlan {
  return signPlan(createPlan({ ir, profile: sampleProfile({ intent: ir.intent, secretRelease: "env" }), notBeforeMs, notAfterMs }), keys.privateKey);
}

function options(overrides: Partial<AdmitOptions> = {}): AdmitOptions {
  return {
    publicKey: keys.publicKey,
    nowMs: T0 + 1000,
    replayStore: storeAt(join(root, `store-${n++}`)),
    policy: { version: 1 },
    clockSkewMs: 5000,
    ...overrides,
  };
}

async function refusedWith(promise: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof AdmissionError, String(err));
    assert.match(err.message, message);
    return true;
  });
}

describe("admission", () => {
  it("admits a valid plan from its wire form and returns its planId", async () => {
    const plan = signed();
    const admitted = await admit(decodeSignedPlan(encodeSignedPlan(plan)), options());
    assert.equal(admitted.planId, plan.plan.planId);
    assert.deepEqual(admitted.plan, plan.plan);
  });

  it("refuses a replayed plan in the same process", async () => {
    const opts = options();
    const plan = signed();
    await admit(plan, opts);
    await refusedWith(admit(plan, opts), /already used \(replay\)/);
  });

  it("refuses a replayed plan after a restart (new store on the same directory)", async () => {
    const dir = join(root, `store-${n++}`);
    const plan = signed();
    await admit(plan, options({ replayStore: storeAt(dir) }));
    await refusedWith(admit(plan, options({ replayStore: storeAt(dir) })), /replay/);
  });

  it("admits exactly one of many concurrent admissions of one plan", async () => {
    const opts = options();
    const plan = signed();
    const results = await Promise.allSettled(Array.from({ length: 32 }, () => admit(plan, opts)));
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    for (const r of results) if (r.status === "rejected") assert.ok(r.reason instanceof AdmissionError);
  });

  it("refuses an expired plan, honouring the clock skew tolerance", async () => {
    const plan = signed(sampleIR(), T0, T0 + HOUR);
    await refusedWith(admit(plan, options({ nowMs: T0 + HOUR + 5001 })), /expired/);
    assert.ok(await admit(plan, options({ nowMs: T0 + HOUR + 5000 })));
  });

  it("refuses a plan that is not yet valid, honouring the clock skew tolerance", async () => {
    const plan = signed(sampleIR(), T0, T0 + HOUR);
    await refusedWith(admit(plan, options({ nowMs: T0 - 5001 })), /not valid before/);
    assert.ok(await admit(plan, options({ nowMs: T0 - 5000 })));
  });

  it("refuses a refused plan without consuming its nonce", async () => {
    const opts = options();
    const plan = signed(sampleIR(), T0, T0 + HOUR);
    await refusedWith(admit(plan, { ...opts, nowMs: T0 + 2 * HOUR }), /expired/);
    await assert.rejects(admit(plan, { ...opts, policy: { version: 1, maxTtlSeconds: 1 } }), PolicyDeniedError);
    assert.equal(await opts.replayStore.has(plan.plan.nonce), false);
    assert.ok(await admit(plan, opts));
  });

  it("refuses a validity window longer than the maximum", async () => {
    const plan = signed(sampleIR(), T0, T0 + 2 * HOUR);
    await refusedWith(admit(plan, options({ maxValidityMs: HOUR })), /exceeds the maximum/);
  });

  it("refuses bad signatures, other keys and malformed input", async () => {
    const plan = signed();
    const forged = { ...plan, signature: { ...plan.signature, value: "0".repeat(128) } };
    await refusedWith(admit(forged, options()), /bad signature/);
    await refusedWith(admit(plan, options({ publicKey: generateTestKeys().publicKey })), /signed by key/);
    await refusedWith(admit({ plan: plan.plan }, options()), /Malformed signed plan/);
    await refusedWith(admit("nonsense", options()), /Malformed signed plan/);
  });

  for (const c of RULE_CASES) {
    it(`denies by policy rule "${c.rule}" with a PolicyDeniedError naming it`, async () => {
      await assert.rejects(admit(signed(c.breaks), options({ policy: c.policy })), (err: unknown) => {
        assert.ok(err instanceof PolicyDeniedError);
        assert.ok(err instanceof PolicyRuleDeniedError);
        assert.equal(err.rule, c.rule);
        assert.ok(err.message.includes(`"${c.rule}"`), err.message);
        return true;
      });
      assert.ok(await admit(signed(c.keeps), options({ policy: c.policy })));
    });
  }

  it("refuses when the replay store cannot record the nonce", async () => {
    const file = join(root, `file-${n++}`);
    writeFileSync(file, "");
    await refusedWith(admit(signed(), options({ replayStore: storeAt(file) })), /replay store failed/);
  });
});
