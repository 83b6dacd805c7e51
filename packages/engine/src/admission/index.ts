/** Admission: workload IR, signed execution plans, the replay store and the operator policy. */
export {
  IR_VERSION,
  IntentSchema,
  WorkloadCommand,
  SecretBinding,
  IrResources,
  WorkloadIR,
  envSha256,
  irFromCreateRequest,
  parseWorkloadIR,
} from "./ir.js";
export type { Intent, IrFromCreateOptions } from "./ir.js";
export {
  PLAN_VERSION,
  PLAN_SIGNATURE_DOMAIN,
  MAX_SIGNED_PLAN_BYTES,
  AdmissionProfile,
  ExecutionPlan,
  SignedPlan,
  PlanSignature,
  computePlanId,
  keyIdOf,
  createPlan,
  signPlan,
  issuePlan,
  verifyPlanSignature,
  encodeSignedPlan,
  decodeSignedPlan,
} from "./plan.js";
export type { CreatePlanInput, UnsignedPlan } from "./plan.js";
export { ReplayStore } from "./replay.js";
export type { ReplayStoreOptions, CompactResult } from "./replay.js";
export { POLICY_VERSION, OperatorPolicy, evaluatePolicy, parsePolicy, loadPolicy } from "./policy.js";
export type { PolicyRule, PolicyDecision } from "./policy.js";
export { admit, PlanRefusedError, PolicyRuleDeniedError } from "./admit.js";
export type { AdmitOptions, AdmittedPlan, RefusalReason } from "./admit.js";
export { AdmissionGate, DEFAULT_PLAN_VALIDITY_MS, MAX_PLAN_VALIDITY_MS, profileFor } from "./gate.js";
export type { AdmissionGateOptions, AdmittedRecord } from "./gate.js";
