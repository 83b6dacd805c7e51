/**
 * fast-check generators of valid audit events, for the property tests.
 */
import fc from "fast-check";
import type { AuditEvent } from "../entry.js";

const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const sandboxId = fc.stringMatching(/^sbx_[a-z2-7]{20}$/);
const opaqueId = fc.stringMatching(/^[A-Za-z0-9_.:-]{1,40}$/);
const count = fc.nat();
const ts = fc.date({ min: new Date("2000-01-01T00:00:00Z"), max: new Date("2099-12-31T00:00:00Z"), noInvalidDate: true }).map((d) => d.toISOString());
const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
const hostname = fc.array(label, { minLength: 1, maxLength: 4 }).map((parts) => parts.join("."));

export const auditEvent: fc.Arbitrary<AuditEvent> = fc.oneof(
  fc.record({ type: fc.constant("plan.admitted" as const), planId: opaqueId, planDigest: hex64 }, { noNullPrototype: true }),
  fc.record(
    { type: fc.constant("plan.denied" as const), planId: opaqueId, planDigest: hex64, reason: fc.constantFrom("signature_invalid" as const, "nonce_replayed" as const, "policy_violation" as const) },
    { requiredKeys: ["type", "planDigest", "reason"], noNullPrototype: true },
  ),
  fc.record(
    {
      type: fc.constant("sandbox.created" as const),
      sandboxId,
      planId: opaqueId,
      imageDigest: hex64.map((h) => `sha256:${h}`),
      backend: fc.constantFrom("namespace" as const, "vm" as const),
    },
    { requiredKeys: ["type", "sandboxId", "imageDigest", "backend"], noNullPrototype: true },
  ),
  fc.record(
    { type: fc.constant("sandbox.claimed" as const), sandboxId, planId: opaqueId, pool: fc.stringMatching(/^pool_[0-9a-f]{16}$/) },
    { noNullPrototype: true },
  ),
  fc.record({ type: fc.constant("sandbox.killed" as const), sandboxId, by: fc.constantFrom("caller" as const, "engine" as const, "oom" as const, "crash" as const) }, { noNullPrototype: true }),
  fc.record({ type: fc.constant("sandbox.expired" as const), sandboxId, ttlSeconds: count }, { noNullPrototype: true }),
  fc.record(
    {
      type: fc.constant("sandbox.paused" as const),
      sandboxId,
      by: fc.constantFrom("caller" as const, "ttl" as const),
      ttl: fc.constantFrom("running" as const, "frozen" as const, "spent" as const),
    },
    { noNullPrototype: true },
  ),
  fc.record({ type: fc.constant("sandbox.resumed" as const), sandboxId, pausedMs: count }, { noNullPrototype: true }),
  fc.record({ type: fc.constant("sandbox.ttl_set" as const), sandboxId, ttlSeconds: count }, { noNullPrototype: true }),
  fc.record(
    { type: fc.constant("port.published" as const), sandboxId, guest: fc.integer({ min: 1, max: 65535 }), host: fc.integer({ min: 1, max: 65535 }) },
    { noNullPrototype: true },
  ),
  fc.record({ type: fc.constant("exec.started" as const), sandboxId, execId: opaqueId, argvDigest: hex64, argc: count }, { noNullPrototype: true }),
  fc.record({
    type: fc.constant("exec.finished" as const),
    sandboxId,
    execId: opaqueId,
    exitCode: fc.option(fc.integer({ min: 0, max: 255 }), { nil: null }),
    signal: fc.option(fc.constantFrom("SIGKILL", "SIGTERM", "SIGSEGV"), { nil: null }),
    timedOut: fc.boolean(),
    durationMs: count,
  }, { noNullPrototype: true }),
  fc.record(
    { type: fc.constant("file.written" as const), sandboxId, pathDigest: hex64, sizeBytes: count, contentSha256: hex64 },
    { requiredKeys: ["type", "sandboxId", "pathDigest", "sizeBytes"], noNullPrototype: true },
  ),
  fc.record({
    type: fc.constant("network.summary" as const),
    sandboxId,
    fromTs: ts,
    toTs: ts,
    allowedConnections: count,
    deniedConnections: count,
    deniedHosts: fc.array(hostname, { maxLength: 16 }),
  }, { noNullPrototype: true }),
  fc.record({ type: fc.constant("bundle.pushed" as const), bundleDigest: hex64, kind: fc.constantFrom("snapshot" as const, "image" as const), sourceDigest: hex64 }, { noNullPrototype: true }),
  fc.record(
    {
      type: fc.constant("bundle.pulled" as const),
      bundleDigest: hex64,
      kind: fc.constantFrom("snapshot" as const, "image" as const),
      imageDigest: hex64,
      snapshotId: fc.stringMatching(/^snap_[a-z2-7]{20}$/),
    },
    { requiredKeys: ["type", "bundleDigest", "kind", "imageDigest"], noNullPrototype: true },
  ),
  fc.record(
    {
      type: fc.constant("image.refused" as const),
      rule: fc.constantFrom("requireDigestPinnedImages" as const, "allowedRegistries" as const, "requireImageProvenance" as const),
      at: fc.constantFrom("create" as const, "pull" as const),
      refDigest: hex64,
      imageDigest: hex64,
    },
    { requiredKeys: ["type", "rule", "at", "refDigest"], noNullPrototype: true },
  ),
  fc.record({ type: fc.constant("policy.changed" as const), policyId: opaqueId, previousDigest: fc.option(hex64, { nil: null }), policyDigest: hex64 }, { noNullPrototype: true }),
);
