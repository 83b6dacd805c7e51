/**
 * ExecutionPlan v1: a WorkloadIR plus the admission profile it runs under, a validity window and a
 * one-time nonce, signed with the host's Ed25519 key. `planId` is the sha256 of the canonical JSON
 * of the plan without `planId`; the signature covers the canonical JSON of the whole plan, prefixed
 * by a domain string so the signature cannot be replayed as any other kind of signed object.
 */
import { createHash, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import {
  AdmissionError,
  ExecutionPlan,
  InvalidArgumentError,
  PLAN_RULES,
  PLAN_VERSION,
  SignedPlan,
  UnsignedPlanFields,
  canonicalJson,
  type AdmissionProfile,
  type Sha256Digest,
  type UnsignedPlan,
  type WorkloadIR,
} from "@mvm/protocol";
import { describeIssue } from "./ir.js";

/** Bytes signed = this prefix + canonical JSON of the plan. */
export const PLAN_SIGNATURE_DOMAIN = "mvm.execution-plan.v1\n";
/** Largest encoded signed plan `decodeSignedPlan` reads, in bytes. */
export const MAX_SIGNED_PLAN_BYTES = 1024 * 1024;

export { PLAN_VERSION, PolicyRef, AdmissionProfile, NonceSchema, ExecutionPlan, PlanSignature, SignedPlan } from "@mvm/protocol";
export type { UnsignedPlan } from "@mvm/protocol";

const UnsignedPlanSchema = z.strictObject(UnsignedPlanFields).check(...PLAN_RULES);

/** `sha256:` of the canonical JSON of the plan without its planId. */
export function computePlanId(plan: UnsignedPlan | ExecutionPlan): Sha256Digest {
  const { planId: _ignored, ...unsigned } = plan as ExecutionPlan;
  return `sha256:${createHash("sha256").update(canonicalJson(unsigned)).digest("hex")}` as Sha256Digest;
}

/** `sha256:` of a public key's SPKI DER encoding. */
export function keyIdOf(key: KeyObject): Sha256Digest {
  let id = keyIds.get(key);
  if (id === undefined) {
    const pub = key.type === "private" ? createPublicKey(key) : key;
    id = `sha256:${createHash("sha256").update(pub.export({ type: "spki", format: "der" })).digest("hex")}` as Sha256Digest;
    keyIds.set(key, id);
  }
  return id;
}
/** Key ids by key object: a KeyObject is immutable, and deriving the id exports and hashes the key. */
const keyIds = new WeakMap<KeyObject, Sha256Digest>();

export interface CreatePlanInput {
  ir: WorkloadIR;
  profile: AdmissionProfile;
  notBeforeMs: number;
  notAfterMs: number;
  /** 32 lowercase hex digits. @default 128 fresh random bits */
  nonce?: string;
}

/** Builds and validates a plan: fills in the nonce and planId. Throws InvalidArgumentError naming the field. */
export function createPlan(input: CreatePlanInput): ExecutionPlan {
  const unsigned = {
    version: PLAN_VERSION,
    ir: input.ir,
    profile: input.profile,
    notBeforeMs: input.notBeforeMs,
    notAfterMs: input.notAfterMs,
    nonce: input.nonce ?? randomBytes(16).toString("hex"),
  };
  const parsed = UnsignedPlanSchema.safeParse(unsigned);
  if (!parsed.success) throw new InvalidArgumentError(`Invalid execution plan: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  return { ...parsed.data, planId: computePlanId(parsed.data) };
}

function signedBytes(plan: ExecutionPlan): Buffer {
  return Buffer.from(PLAN_SIGNATURE_DOMAIN + canonicalJson(plan), "utf8");
}

/**
 * Signs a plan with an Ed25519 private key. The plan is validated and its planId checked first.
 *
 * @example
 * const signed = signPlan(createPlan({ ir, profile, notBeforeMs, notAfterMs }), hostPrivateKey);
 */
export function signPlan(plan: ExecutionPlan, privateKey: KeyObject): SignedPlan {
  checkSigningKey(privateKey);
  const parsed = ExecutionPlan.safeParse(plan);
  if (!parsed.success) throw new InvalidArgumentError(`Invalid execution plan: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  const expectedId = computePlanId(parsed.data);
  if (parsed.data.planId !== expectedId) {
    throw new InvalidArgumentError(`Cannot sign plan: planId "${parsed.data.planId}" does not match its content "${expectedId}"`);
  }
  return signValidated(parsed.data, privateKey);
}

/**
 * `createPlan` and `signPlan` in one step, validating the plan once: what an engine uses to sign
 * plans it builds itself.
 */
export function issuePlan(input: CreatePlanInput, privateKey: KeyObject): SignedPlan {
  checkSigningKey(privateKey);
  return signValidated(createPlan(input), privateKey);
}

function checkSigningKey(privateKey: KeyObject): void {
  if (privateKey.type !== "private" || privateKey.asymmetricKeyType !== "ed25519") {
    throw new InvalidArgumentError(`Cannot sign plan: key must be an Ed25519 private key, got "${privateKey.asymmetricKeyType ?? privateKey.type}"`);
  }
}

function signValidated(plan: ExecutionPlan, privateKey: KeyObject): SignedPlan {
  const value = sign(null, signedBytes(plan), privateKey).toString("hex");
  return { plan, signature: { alg: "ed25519", keyId: keyIdOf(privateKey), value } };
}

/**
 * Checks an untrusted signed plan: schema, planId, key id and Ed25519 signature. Returns the
 * validated plan. Does not look at the validity window or the nonce (`admit` does).
 * Throws AdmissionError on any failure.
 */
export function verifyPlanSignature(signed: unknown, publicKey: KeyObject): SignedPlan {
  if (publicKey.type !== "public" || publicKey.asymmetricKeyType !== "ed25519") {
    throw new InvalidArgumentError(`Cannot verify plan: key must be an Ed25519 public key, got "${publicKey.asymmetricKeyType ?? publicKey.type}"`);
  }
  const parsed = SignedPlan.safeParse(signed);
  if (!parsed.success) throw new AdmissionError(`Malformed signed plan: ${describeIssue(parsed.error)}`, { cause: parsed.error });
  const { plan, signature } = parsed.data;
  const expectedId = computePlanId(plan);
  if (plan.planId !== expectedId) throw new AdmissionError(`Plan "${plan.planId}" refused: planId does not match its content`);
  const keyId = keyIdOf(publicKey);
  if (signature.keyId !== keyId) {
    throw new AdmissionError(`Plan "${plan.planId}" refused: signed by key "${signature.keyId}", expected "${keyId}"`);
  }
  if (!verify(null, signedBytes(plan), publicKey, Buffer.from(signature.value, "hex"))) {
    throw new AdmissionError(`Plan "${plan.planId}" refused: bad signature`);
  }
  return parsed.data;
}

/** The wire form of a signed plan: its canonical JSON, UTF-8. */
export function encodeSignedPlan(signed: SignedPlan): Buffer {
  return Buffer.from(canonicalJson(signed), "utf8");
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses the wire form of a signed plan without trusting it: size-bounded, strict UTF-8, JSON,
 * and byte-for-byte canonical (so no two encodings of one plan are both accepted). The result is
 * still unverified: pass it to `verifyPlanSignature` or `admit`. Throws AdmissionError.
 */
export function decodeSignedPlan(bytes: Uint8Array): unknown {
  if (bytes.byteLength > MAX_SIGNED_PLAN_BYTES) {
    throw new AdmissionError(`Malformed signed plan: ${bytes.byteLength} bytes exceeds the limit of ${MAX_SIGNED_PLAN_BYTES}`);
  }
  let value: unknown;
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
    value = JSON.parse(text);
  } catch (err) {
    throw new AdmissionError(`Malformed signed plan: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  let canonical: string;
  try {
    canonical = canonicalJson(value);
  } catch (err) {
    throw new AdmissionError(`Malformed signed plan: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (canonical !== text) throw new AdmissionError("Malformed signed plan: encoding is not canonical JSON");
  return value;
}
