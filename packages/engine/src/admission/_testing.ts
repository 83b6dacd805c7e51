/** Test helpers for the admission module: throwaway keys, sample values and fast-check arbitraries. */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import fc from "fast-check";
import { envSha256, type WorkloadIR } from "./ir.js";
import type { AdmissionProfile } from "./plan.js";
import type { SecretRefJson } from "@mvm/protocol";
import type { OperatorPolicy, PolicyRule } from "./policy.js";

export interface TestKeys {
  publicKey: KeyObject;
  privateKey: KeyObject;
}

/** A fresh in-memory Ed25519 key pair (never written to disk). */
export function generateTestKeys(): TestKeys {
  return generateKeyPairSync("ed25519");
}

/** A SecretRef to the host's secret store, as JSON. */
export function storeRef(name: string, posture: "mediated" | "env"): SecretRefJson {
  return { kind: "secret-ref", source: "store", name, posture };
}

export const DIGEST_A = `sha256:${"a".repeat(64)}`;
export const DIGEST_B = `sha256:${"b".repeat(64)}`;

export function sampleIR(overrides: Partial<WorkloadIR> = {}): WorkloadIR {
  return {
    version: 1,
    imageDigest: DIGEST_A,
    command: { kind: "argv", argv: ["python3", "-c", "print(1)"] },
    envNames: ["LANG"],
    envSha256: envSha256({ LANG: "C.UTF-8" }),
    resources: { memoryMiB: 512, pids: 256, cpus: 1, workMiB: 1024 },
    network: { version: 1, default: "deny", rules: [] },
    secrets: [{ name: "OPENAI_API_KEY", ref: storeRef("openai-api-key", "mediated") }],
    ttlSeconds: 600,
    ports: [{ guest: 8080 }],
    requiredTier: "container",
    intent: "code:execute",
    ...overrides,
  };
}

export function sampleProfile(overrides: Partial<AdmissionProfile> = {}): AdmissionProfile {
  return {
    intent: "code:execute",
    seccompTier: "default",
    egressPolicyRef: "egress-default",
    secretRelease: "mediated",
    auditLabels: { team: "ml", "ci/job": "1234" },
    ...overrides,
  };
}

const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const envName = fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,12}$/);

/** Valid WorkloadIR values, covering every union branch. */
export const arbIR: fc.Arbitrary<WorkloadIR> = fc
  .record({
    digest: hex64,
    command: fc.oneof(
      fc.record({ kind: fc.constant("argv" as const), argv: fc.array(fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !s.includes("\0")), { minLength: 1, maxLength: 5 }) }),
      fc.record({ kind: fc.constant("entrypoint" as const), args: fc.array(fc.string({ maxLength: 20 }), { maxLength: 5 }) }),
      fc.constant({ kind: "session" as const }),
    ),
    env: fc.dictionary(envName, fc.string({ maxLength: 30 }).filter((s) => !s.includes("\0")), { maxKeys: 5 }),
    secretNames: fc.uniqueArray(fc.stringMatching(/^S_[A-Z]{1,8}$/), { maxLength: 3 }),
    posture: fc.constantFrom("mediated" as const, "env" as const),
    memoryMiB: fc.option(fc.integer({ min: 128, max: 65536 }), { nil: undefined }),
    cpus: fc.option(fc.double({ min: 0.01, max: 64, noNaN: true }), { nil: undefined }),
    network: fc.array(
      fc.oneof(
        fc.record({ kind: fc.constant("https" as const), host: fc.stringMatching(/^[a-z]{1,10}\.example\.com$/) }),
        fc.record({ kind: fc.constant("tcp" as const), host: fc.stringMatching(/^[a-z]{1,10}\.example\.com$/), port: fc.integer({ min: 1, max: 65535 }) }),
        fc.record({ kind: fc.constant("cidr" as const), cidr: fc.constantFrom("203.0.113.0/24", "2001:db8::/32"), ports: fc.constant("any" as const) }),
      ),
      { maxLength: 3 },
    ),
    ttlSeconds: fc.integer({ min: 1, max: 7 * 24 * 3600 }),
    ports: fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { maxLength: 4 }),
    tier: fc.constantFrom("container" as const, "vm-hardware" as const, "vm-emulated" as const),
    intent: fc.constantFrom("code:execute", "tool:call", "data:transform-2"),
  })
  .map((r) => {
    const resources: WorkloadIR["resources"] = { pids: 64 };
    if (r.memoryMiB !== undefined) resources.memoryMiB = r.memoryMiB;
    if (r.cpus !== undefined) resources.cpus = r.cpus;
    const ir: WorkloadIR = {
      version: 1 as const,
      imageDigest: `sha256:${r.digest}`,
      command: r.command,
      envNames: Object.keys(r.env).sort(),
      envSha256: envSha256(r.env),
      resources,
      network: { version: 1, default: "deny", rules: r.network },
      secrets: r.secretNames.map((name) => ({ name, ref: storeRef(name.toLowerCase().replaceAll("_", "-"), r.posture) })),
      ttlSeconds: r.ttlSeconds,
      ports: r.ports.map((guest) => ({ guest })),
      requiredTier: r.tier,
      intent: r.intent,
    };
    // Plain objects only: fast-check builds some records without a prototype.
    return JSON.parse(JSON.stringify(ir)) as WorkloadIR;
  });

/** Each rule with a policy that sets it, an IR that breaks it and one that keeps it. */
export const RULE_CASES: { rule: PolicyRule; policy: OperatorPolicy; breaks: WorkloadIR; keeps: WorkloadIR }[] = [
  { rule: "maxTtlSeconds", policy: { version: 1, maxTtlSeconds: 600 }, breaks: sampleIR({ ttlSeconds: 601 }), keeps: sampleIR({ ttlSeconds: 600 }) },
  { rule: "allowedImageDigests", policy: { version: 1, allowedImageDigests: [DIGEST_A] }, breaks: sampleIR({ imageDigest: DIGEST_B }), keeps: sampleIR() },
  { rule: "requiredTier", policy: { version: 1, requiredTier: "vm-hardware" }, breaks: sampleIR({ requiredTier: "container" }), keeps: sampleIR({ requiredTier: "vm-emulated" }) },
  { rule: "maxResources.memoryMiB", policy: { version: 1, maxResources: { memoryMiB: 256 } }, breaks: sampleIR(), keeps: sampleIR({ resources: { memoryMiB: 256 } }) },
  { rule: "maxResources.memoryMiB", policy: { version: 1, maxResources: { memoryMiB: 4096 } }, breaks: sampleIR({ resources: {} }), keeps: sampleIR() },
  { rule: "maxResources.pids", policy: { version: 1, maxResources: { pids: 100 } }, breaks: sampleIR(), keeps: sampleIR({ resources: { pids: 100 } }) },
  { rule: "maxResources.cpus", policy: { version: 1, maxResources: { cpus: 0.5 } }, breaks: sampleIR(), keeps: sampleIR({ resources: { cpus: 0.5 } }) },
  { rule: "maxResources.workMiB", policy: { version: 1, maxResources: { workMiB: 10 } }, breaks: sampleIR(), keeps: sampleIR({ resources: { workMiB: 10 } }) },
  {
    rule: "forbidEgress",
    policy: { version: 1, forbidEgress: true },
    breaks: sampleIR({ network: { version: 1, default: "deny", rules: [{ kind: "https", host: "api.example.com" }] } }),
    keeps: sampleIR(),
  },
  {
    rule: "forbidEnvSecrets",
    policy: { version: 1, forbidEnvSecrets: true },
    breaks: sampleIR({ secrets: [{ name: "TOKEN", ref: storeRef("token", "env") }] }),
    keeps: sampleIR(),
  },
  { rule: "allowedIntents", policy: { version: 1, allowedIntents: ["tool:call"] }, breaks: sampleIR(), keeps: sampleIR({ intent: "tool:call" }) },
];
