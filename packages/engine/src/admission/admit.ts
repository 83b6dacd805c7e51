/**
 * Admission: the gate a signed plan passes before anything boots. In order: schema and Ed25519
 * signature, validity window, operator policy, then the nonce is consumed. The nonce is consumed
 * last so that only an admission that succeeds uses it up; a plan refused by policy stays refused
 * on every retry because the policy check has no state.
 */
import type { KeyObject } from "node:crypto";
import { AdmissionError, InvalidArgumentError, PolicyDeniedError, type Sha256Digest } from "@mvm/protocol";
import { evaluatePolicy, type OperatorPolicy, type PolicyRule } from "./policy.js";
import { verifyPlanSignature, type ExecutionPlan } from "./plan.js";
import type { ReplayStore } from "./replay.js";

export interface AdmitOptions {
  /** The host's Ed25519 public key. */
  publicKey: KeyObject;
  /** The current time, ms since the Unix epoch. */
  nowMs: number;
  replayStore: ReplayStore;
  policy: OperatorPolicy;
  /**
   * How far the clocks of signer and admitter may disagree, in ms. A nonce is kept until
   * `notAfterMs + clockSkewMs`, so use one value for the life of a replay store. @default 30_000
   */
  clockSkewMs?: number;
  /** Longest validity window accepted, in ms; bounds how long the replay store keeps a nonce. @default 86_400_000 (24 h) */
  maxValidityMs?: number;
  /**
   * Reserve the nonce but leave making it durable to the caller (`replayStore.commit()`), so the
   * caller can overlap that disk flush with its own; nothing may boot before both are done.
   * @default false
   */
  deferCommit?: boolean;
}

export interface AdmittedPlan {
  planId: Sha256Digest;
  plan: ExecutionPlan;
}

/** Why admission refused a plan: the codes the audit log records. */
export type RefusalReason = "signature_invalid" | "plan_expired" | "plan_not_yet_valid" | "nonce_replayed" | "malformed" | "request_mismatch";

/** A plan admission refused before the policy was consulted; `reason` says why, as a stable code. */
export class PlanRefusedError extends AdmissionError {
  readonly reason: RefusalReason;
  constructor(reason: RefusalReason, message: string, options: { cause?: unknown } = {}) {
    super(message, options);
    this.reason = reason;
  }
}

/** A refusal by the operator policy, naming the rule. */
export class PolicyRuleDeniedError extends PolicyDeniedError {
  readonly rule: PolicyRule;
  constructor(rule: PolicyRule, message: string) {
    super(message, { hint: `The operator policy rule "${rule}" refused this workload` });
    this.rule = rule;
  }
}

/**
 * Admits an untrusted signed plan or throws: AdmissionError (malformed, bad signature, not yet
 * valid, expired, window too long, replayed) or PolicyDeniedError naming the rule (its `rule`
 * field holds the rule's name).
 *
 * @example
 * const { planId, plan } = await admit(decodeSignedPlan(bytes), { publicKey, nowMs: Date.now(), replayStore, policy });
 */
export async function admit(signed: unknown, options: AdmitOptions): Promise<AdmittedPlan> {
  const clockSkewMs = options.clockSkewMs ?? 30_000;
  const maxValidityMs = options.maxValidityMs ?? 24 * 3600 * 1000;
  if (!Number.isSafeInteger(options.nowMs) || options.nowMs < 0) throw new InvalidArgumentError(`Invalid nowMs "${options.nowMs}"`);
  if (!Number.isSafeInteger(clockSkewMs) || clockSkewMs < 0) throw new InvalidArgumentError(`Invalid clockSkewMs "${clockSkewMs}"`);

  let plan: ExecutionPlan;
  try {
    plan = verifyPlanSignature(signed, options.publicKey).plan;
  } catch (err) {
    if (!(err instanceof AdmissionError)) throw err;
    const reason = /^Malformed/.test(err.message) ? "malformed" : "signature_invalid";
    throw new PlanRefusedError(reason, err.message, { cause: err });
  }
  const id = plan.planId;
  if (plan.notAfterMs - plan.notBeforeMs > maxValidityMs) {
    throw new PlanRefusedError("malformed", `Plan "${id}" refused: validity window of ${plan.notAfterMs - plan.notBeforeMs} ms exceeds the maximum of ${maxValidityMs} ms`);
  }
  if (options.nowMs + clockSkewMs < plan.notBeforeMs) {
    throw new PlanRefusedError("plan_not_yet_valid", `Plan "${id}" refused: not valid before ${new Date(plan.notBeforeMs).toISOString()}`);
  }
  if (options.nowMs - clockSkewMs > plan.notAfterMs) {
    throw new PlanRefusedError("plan_expired", `Plan "${id}" refused: expired at ${new Date(plan.notAfterMs).toISOString()}`);
  }

  const decision = evaluatePolicy(plan.ir, options.policy);
  if (!decision.ok) throw new PolicyRuleDeniedError(decision.rule, `Plan "${id}" denied by policy rule "${decision.rule}": ${decision.message}`);

  // Kept until the window (with skew) is over: after that the window check refuses the plan anyway.
  const store = options.replayStore;
  const retainUntil = plan.notAfterMs + clockSkewMs;
  const fresh = await (options.deferCommit ? store.reserve(plan.nonce, retainUntil) : store.consume(plan.nonce, retainUntil)).catch((err: unknown) => {
    throw new AdmissionError(`Plan "${id}" refused: the replay store failed: ${(err as Error).message}`, { cause: err });
  });
  if (!fresh) throw new PlanRefusedError("nonce_replayed", `Plan "${id}" refused: nonce "${plan.nonce}" was already used (replay)`);
  return { planId: id as Sha256Digest, plan };
}
