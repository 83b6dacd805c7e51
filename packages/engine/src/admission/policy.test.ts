import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { InvalidArgumentError } from "@mvm/protocol";
import { evaluateImagePolicy, evaluatePolicy, evaluatePullPolicy, loadPolicy, MAX_POLICY_FILE_BYTES, parsePolicy, type ImageFacts, type OperatorPolicy } from "./policy.js";
import { DIGEST_A, DIGEST_B, RULE_CASES, arbIR } from "./_testing.js";

const root = mkdtempSync(join(tmpdir(), "mvm-policy-test-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
function policyFile(content: string): string {
  const path = join(root, `policy-${n++}.json`);
  writeFileSync(path, content);
  return path;
}

describe("operator policy", () => {
  for (const c of RULE_CASES) {
    it(`rule "${c.rule}" denies what breaks it, by name, and allows what keeps it`, () => {
      const decision = evaluatePolicy(c.breaks, c.policy);
      assert.equal(decision.ok, false);
      assert.ok(!decision.ok);
      assert.equal(decision.rule, c.rule);
      assert.ok(decision.message.length > 0);
      assert.deepEqual(evaluatePolicy(c.keeps, c.policy), { ok: true });
    });
  }

  it("an empty policy allows every valid IR", () => {
    fc.assert(fc.property(arbIR, (ir) => evaluatePolicy(ir, { version: 1 }).ok));
  });

  it("a policy with a digest allow-list allows exactly the listed images", () => {
    fc.assert(
      fc.property(arbIR, fc.boolean(), (ir, listed) => {
        const policy: OperatorPolicy = { version: 1, allowedImageDigests: listed ? [DIGEST_B, ir.imageDigest] : [DIGEST_B] };
        assert.equal(evaluatePolicy(ir, policy).ok, listed || ir.imageDigest === DIGEST_B);
      }),
    );
  });

  it("loads a valid policy file", async () => {
    const policy = { version: 1, maxTtlSeconds: 60, allowedImageDigests: [DIGEST_A], requiredTier: "container", forbidEgress: true };
    assert.deepEqual(await loadPolicy(policyFile(JSON.stringify(policy))), policy);
  });

  it("refuses an invalid policy file with InvalidArgumentError naming the field", async () => {
    const cases: [string, RegExp][] = [
      [JSON.stringify({ version: 1, maxTtlSeconds: -5 }), /field "maxTtlSeconds"/],
      [JSON.stringify({ version: 1, maxResources: { memoryMiB: "lots" } }), /field "maxResources.memoryMiB"/],
      [JSON.stringify({ version: 1, allowedImageDigests: ["sha256:nothex"] }), /field "allowedImageDigests.0"/],
      [JSON.stringify({ version: 1, maxTTL: 5 }), /field "\(root\)".*maxTTL/],
      [JSON.stringify({ version: 2 }), /field "version"/],
      [JSON.stringify({ maxTtlSeconds: 5 }), /field "version"/],
      ["{ not json", /not valid JSON/],
      [" ".repeat(MAX_POLICY_FILE_BYTES + 1), /over the limit/],
    ];
    for (const [content, message] of cases) {
      const path = policyFile(content);
      await assert.rejects(loadPolicy(path), (err: unknown) => {
        assert.ok(err instanceof InvalidArgumentError, String(err));
        assert.match(err.message, message);
        assert.ok(err.message.includes(path));
        return true;
      });
    }
    await assert.rejects(loadPolicy(join(root, "missing.json")), /Cannot read policy file/);
  });
});

describe("image rules of the operator policy", () => {
  const hex = "a".repeat(64);
  const policy = parsePolicy({ version: 1, requireDigestPinnedImages: true, allowedRegistries: ["reg.example:5000"], requireImageProvenance: true });
  const facts = (ref: string, extra: Partial<ImageFacts> = {}): ImageFacts => ({ ref, provenanceVerified: true, ...extra });

  it("refuses tags, names and debian refs when digests are required; accepts both pinned forms", () => {
    for (const ref of ["debian:bookworm", "local/img", "reg.example:5000/app:1", `reg.example/app@sha256:${"a".repeat(63)}`]) {
      const d = evaluateImagePolicy(facts(ref), policy);
      assert.equal(d.ok ? "ok" : d.rule, "requireDigestPinnedImages", ref);
    }
    assert.deepEqual(evaluateImagePolicy(facts(`sha256:${hex}`), policy), { ok: true });
    assert.deepEqual(evaluateImagePolicy(facts(`reg.example:5000/app@sha256:${hex}`, { registry: "reg.example:5000" }), policy), { ok: true });
  });

  it("refuses an image from a registry not listed, and a pull from one", () => {
    const d = evaluateImagePolicy(facts(`evil.example/app@sha256:${hex}`, { registry: "evil.example" }), policy);
    assert.equal(d.ok ? "ok" : d.rule, "allowedRegistries");
    const p = evaluatePullPolicy("evil.example", policy);
    assert.equal(p.ok ? "ok" : p.rule, "allowedRegistries");
    assert.deepEqual(evaluatePullPolicy("reg.example:5000", policy), { ok: true });
    assert.deepEqual(evaluatePullPolicy("anything.example", parsePolicy({ version: 1 })), { ok: true });
  });

  it("refuses an image without verified provenance when it is required", () => {
    const d = evaluateImagePolicy(facts(`sha256:${hex}`, { provenanceVerified: false }), policy);
    assert.equal(d.ok ? "ok" : d.rule, "requireImageProvenance");
    assert.deepEqual(evaluateImagePolicy(facts("local/img", { provenanceVerified: false }), parsePolicy({ version: 1 })), { ok: true });
  });

  it("refuses a malformed registry name in the policy", () => {
    assert.throws(() => parsePolicy({ version: 1, allowedRegistries: ["https://reg.example"] }), InvalidArgumentError);
    assert.throws(() => parsePolicy({ version: 1, requireDigestPinnedImages: "yes" }), InvalidArgumentError);
  });
});
