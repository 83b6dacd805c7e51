#!/usr/bin/env node
// Admission overhead micro-benchmark: per admission, decode the wire form, verify the Ed25519
// signature, check the window and the operator policy, and consume the nonce (file create + fsync
// of file and directory). Plans are signed before timing starts. Prints one JSON object.
// The replay store lives in os.tmpdir() (disk: the figure that counts); when /dev/shm exists the
// admissions are repeated there (tmpfs: fsync is free) to show the cost without the disk flush.
// Run after building: node packages/engine/src/admission/bench/admission.mjs [count]
import { generateKeyPairSync } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  ReplayStore,
  admit,
  createPlan,
  decodeSignedPlan,
  encodeSignedPlan,
  envSha256,
  evaluatePolicy,
  signPlan,
  verifyPlanSignature,
} from "../packages/engine/dist/admission/index.js";

const count = Number(process.argv[2] ?? 1000);
const warmup = 50;
const { publicKey, privateKey } = generateKeyPairSync("ed25519");
const digest = `sha256:${"a".repeat(64)}`;
const ir = {
  version: 1,
  imageDigest: digest,
  command: { kind: "argv", argv: ["python3", "-c", "print(1)"] },
  envNames: ["LANG"],
  envSha256: envSha256({ LANG: "C.UTF-8" }),
  resources: { memoryMiB: 512, pids: 256, cpus: 1, workMiB: 1024 },
  network: { mode: "deny-all" },
  secrets: [{ name: "OPENAI_API_KEY", ref: "store:openai-api-key", posture: "mediated" }],
  ttlSeconds: 600,
  ports: [],
  requiredTier: "container",
  intent: "code:execute",
};
const profile = { intent: "code:execute", seccompTier: "default", secretRelease: "mediated", auditLabels: { team: "bench" } };
const policy = {
  version: 1,
  maxTtlSeconds: 3600,
  allowedImageDigests: [digest],
  requiredTier: "container",
  maxResources: { memoryMiB: 4096, pids: 1024, cpus: 2, workMiB: 4096 },
  forbidEgress: true,
  forbidEnvSecrets: true,
  allowedIntents: ["code:execute"],
};

const now = Date.now();
const signWires = () =>
  Array.from({ length: count + warmup }, () =>
    encodeSignedPlan(signPlan(createPlan({ ir, profile, notBeforeMs: now - 1000, notAfterMs: now + 3600_000 }), privateKey)),
  );
const wires = signWires();
const dir = mkdtempSync(join(tmpdir(), "mvm-admission-bench-"));
const replayStore = new ReplayStore({ dir: join(dir, "nonces") });

/** Times `admit` over freshly signed plans with the given replay store. */
async function timeAdmissions(plans, store) {
  const samples = [];
  for (let i = 0; i < plans.length; i++) {
    const t0 = performance.now();
    await admit(decodeSignedPlan(plans[i]), { publicKey, nowMs: Date.now(), replayStore: store, policy });
    const t1 = performance.now();
    if (i >= warmup) samples.push(t1 - t0);
  }
  return samples;
}

function stats(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const round = (ms) => Math.round(ms * 1000) / 1000;
  return { p50Ms: round(at(0.5)), p95Ms: round(at(0.95)), p99Ms: round(at(0.99)), maxMs: round(sorted.at(-1)) };
}

try {
  const total = [];
  const verifyOnly = [];
  const policyOnly = [];
  for (let i = 0; i < wires.length; i++) {
    const bytes = wires[i];
    const t0 = performance.now();
    const decoded = decodeSignedPlan(bytes);
    const { plan } = verifyPlanSignature(decoded, publicKey);
    const t1 = performance.now();
    evaluatePolicy(plan.ir, policy);
    const t2 = performance.now();
    if (i >= warmup) {
      verifyOnly.push(t1 - t0);
      policyOnly.push(t2 - t1);
    }
  }
  total.push(...(await timeAdmissions(wires, replayStore)));
  let tmpfs;
  if (existsSync("/dev/shm")) {
    const shmDir = mkdtempSync(join("/dev/shm", "mvm-admission-bench-"));
    try {
      const shmStore = new ReplayStore({ dir: join(shmDir, "nonces") });
      tmpfs = stats(await timeAdmissions(signWires(), shmStore));
      await shmStore.close();
    } finally {
      rmSync(shmDir, { recursive: true, force: true });
    }
  }
  const admission = stats(total);
  console.log(
    JSON.stringify(
      {
        benchmark: "admission overhead per sandbox create (decode + verify + window + policy + nonce consume with fsync)",
        admissions: count,
        admission,
        decodeAndVerify: stats(verifyOnly),
        policy: stats(policyOnly),
        admissionWithReplayStoreOnTmpfs: tmpfs ?? null,
        target: { p50Ms: 2 },
        meetsTarget: admission.p50Ms <= 2,
        node: process.version,
        replayDir: tmpdir(),
      },
      null,
      2,
    ),
  );
} finally {
  await replayStore.close();
  rmSync(dir, { recursive: true, force: true });
}
