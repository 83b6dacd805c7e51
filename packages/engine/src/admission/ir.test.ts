import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError, UnsupportedCapabilityError } from "@mvm/protocol";
import { envSha256, irFromCreateRequest, parseWorkloadIR, WorkloadIR } from "./ir.js";
import { DIGEST_A, arbIR, sampleIR, storeRef } from "./_testing.js";

describe("workload IR", () => {
  it("records the tier the workload gets, and refuses one below the request's minimumTier", () => {
    const ir = irFromCreateRequest({ minimumTier: "vm-emulated" }, { imageDigest: DIGEST_A, requiredTier: "vm-hardware" });
    assert.equal(ir.requiredTier, "vm-hardware");
    assert.equal(irFromCreateRequest({ backend: "vm", minimumTier: "vm-emulated" }, { imageDigest: DIGEST_A }).requiredTier, "vm-emulated");
    assert.throws(
      () => irFromCreateRequest({ minimumTier: "vm-emulated" }, { imageDigest: DIGEST_A, requiredTier: "container" }),
      (err: unknown) => err instanceof UnsupportedCapabilityError && /tier "container" is below the request's minimumTier "vm-emulated"/.test(err.message),
    );
  });

  it("maps a create request: env names only, values bound by digest, defaults filled in", () => {
    const ir = irFromCreateRequest(
      { image: "debian:bookworm", ttlSeconds: 120, resources: { memoryMiB: 256, cpus: 0.5 }, workMiB: 64, env: { ZED: "1", ALPHA: "secret-ish" } },
      { imageDigest: DIGEST_A },
    );
    assert.deepEqual(ir, {
      version: 1,
      imageDigest: DIGEST_A,
      command: { kind: "session" },
      envNames: ["ALPHA", "ZED"],
      envSha256: envSha256({ ALPHA: "secret-ish", ZED: "1" }),
      resources: { memoryMiB: 256, cpus: 0.5, workMiB: 64 },
      network: { version: 1, default: "deny", rules: [] },
      secrets: [],
      ttlSeconds: 120,
      ports: [],
      requiredTier: "container",
      intent: "code:execute",
    });
    assert.ok(!JSON.stringify(ir).includes("secret-ish"));
    assert.notEqual(envSha256({ ALPHA: "other", ZED: "1" }), ir.envSha256);
  });

  it("requires a VM tier when the request asks for the vm backend", () => {
    assert.equal(irFromCreateRequest({ backend: "vm" }, { imageDigest: DIGEST_A }).requiredTier, "vm-emulated");
    assert.equal(irFromCreateRequest({ backend: "namespace" }, { imageDigest: DIGEST_A }).requiredTier, "container");
  });

  it("carries the request's network policy, secret refs (sorted, never values) and published ports", () => {
    const ir = irFromCreateRequest(
      {
        network: { version: 1, default: "deny", rules: [{ kind: "https", host: "api.example.com" }] },
        secrets: { ZED_KEY: storeRef("zed", "env"), API_KEY: storeRef("api", "mediated") },
        ports: [{ guest: 8080 }],
      },
      { imageDigest: DIGEST_A },
    );
    assert.deepEqual(ir.network.rules, [{ kind: "https", host: "api.example.com" }]);
    assert.deepEqual(ir.secrets.map((s) => [s.name, s.ref.name, s.ref.posture]), [["API_KEY", "api", "mediated"], ["ZED_KEY", "zed", "env"]]);
    assert.deepEqual(ir.ports, [{ guest: 8080 }]);
    assert.deepEqual(irFromCreateRequest({}, { imageDigest: DIGEST_A }).network, { version: 1, default: "deny", rules: [] });
  });

  it('records onTtl "pause" (absent: killed at the TTL)', () => {
    assert.equal(irFromCreateRequest({ onTtl: "pause" }, { imageDigest: DIGEST_A }).onTtl, "pause");
    assert.equal("onTtl" in irFromCreateRequest({ onTtl: "kill" }, { imageDigest: DIGEST_A }), false);
    assert.equal("onTtl" in irFromCreateRequest({}, { imageDigest: DIGEST_A }), false);
  });

  it("uses the default TTL when the request has none", () => {
    assert.equal(irFromCreateRequest({}, { imageDigest: DIGEST_A, defaultTtlSeconds: 99 }).ttlSeconds, 99);
  });

  it("refuses a bad image digest, naming the field", () => {
    assert.throws(() => irFromCreateRequest({}, { imageDigest: "sha256:xyz" }), (err: unknown) => {
      assert.ok(err instanceof InvalidArgumentError);
      assert.match(err.message, /field "imageDigest"/);
      return true;
    });
  });

  it("refuses unknown fields and unknown network modes (closed union)", () => {
    assert.throws(() => parseWorkloadIR({ ...sampleIR(), extra: 1 }), InvalidArgumentError);
    assert.throws(() => parseWorkloadIR({ ...sampleIR(), network: { version: 1, default: "allow", rules: [] } }), /field "network/);
    assert.throws(() => parseWorkloadIR({ ...sampleIR(), network: { version: 1, default: "deny", rules: [{ kind: "udp", host: "a.example" }] } }), InvalidArgumentError);
    assert.throws(() => parseWorkloadIR({ ...sampleIR(), version: 2 }), /field "version"/);
  });

  it("refuses unsorted env names, duplicate secrets, a secret shadowing an env name and duplicate ports", () => {
    assert.throws(() => parseWorkloadIR(sampleIR({ envNames: ["B", "A"] })), /field "envNames"/);
    const s = { name: "K", ref: storeRef("k", "mediated") };
    assert.throws(() => parseWorkloadIR(sampleIR({ secrets: [s, s] })), /field "secrets"/);
    assert.throws(() => parseWorkloadIR(sampleIR({ envNames: ["K"], secrets: [s] })), /field "secrets"/);
    const p = { guest: 80 };
    assert.throws(() => parseWorkloadIR(sampleIR({ ports: [p, p] })), /field "ports"/);
  });

  it("refuses a malformed intent", () => {
    assert.throws(() => parseWorkloadIR(sampleIR({ intent: "Execute" })), /field "intent"/);
  });

  it("accepts every generated IR unchanged", () => {
    fc.assert(
      fc.property(arbIR, (ir) => {
        assert.deepEqual(WorkloadIR.parse(ir), ir);
      }),
    );
  });
});

describe("workload IR image provenance", () => {
  it("names the image's provenance digest when given one, and nothing otherwise", () => {
    const provenance = `sha256:${"e".repeat(64)}`;
    const ir = irFromCreateRequest({ image: "debian:bookworm", ttlSeconds: 600 }, { imageDigest: DIGEST_A, imageProvenance: provenance });
    assert.equal(ir.imageProvenance, provenance);
    assert.equal(irFromCreateRequest({ image: "debian:bookworm", ttlSeconds: 600 }, { imageDigest: DIGEST_A }).imageProvenance, undefined);
    assert.throws(() => parseWorkloadIR({ ...ir, imageProvenance: "sha256:nothex" }), InvalidArgumentError);
  });
});
