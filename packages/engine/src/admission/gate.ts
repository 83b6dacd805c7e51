/**
 * The admission gate of an engine: the one path from a create request to a backend. It holds the
 * host's Ed25519 key, the replay store, the operator policy and the audit log of a state
 * directory, and it
 * - issues plans (the engine signs its own plan for a live create, or hands one out for review),
 * - admits a signed plan (signature, window, policy, nonce), checking that the request describes
 *   exactly the plan's workload, and records the outcome in the audit log before anything boots,
 * - records the sandbox's later events in the same log.
 *
 * Layout in the state directory:
 *   keys/host-ed25519.pem     the host key (0600), shared with the audit log
 *   admission/nonces/         the replay store
 *   admission/policy.sha256   digest of the operator policy last recorded as `policy.changed`
 *   policy.json               the operator policy (optional; MVM_POLICY_FILE names another file)
 *   audit/audit.log           the audit log
 */
import { createHash, randomBytes } from "node:crypto";
import { lstatSync, type Stats } from "node:fs";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  AdmissionError,
  InvalidArgumentError,
  UnsupportedCapabilityError,
  canonicalJson,
  type AdmissionProfile,
  type SignedPlan,
  type WorkloadIR,
} from "@mvm/protocol";
import { loadOrCreateHostKey, type HostKey } from "../audit/keys.js";
import { AuditLog, auditDir, type AppendOptions, type AuditReceipt } from "../audit/log.js";
import type { AuditEvent } from "../audit/entry.js";
import { admit, PlanRefusedError, PolicyRuleDeniedError, type AdmittedPlan } from "./admit.js";
import { issuePlan } from "./plan.js";
import { loadPolicy, type OperatorPolicy } from "./policy.js";
import { ReplayStore } from "./replay.js";

/** How long a plan the engine signs for its own live create stays valid, ms. */
const LIVE_PLAN_VALIDITY_MS = 60_000;
/** Default validity of a plan handed out for review, ms. */
export const DEFAULT_PLAN_VALIDITY_MS = 3600_000;
/** Longest validity of a plan handed out for review, ms (the replay store keeps nonces this long). */
export const MAX_PLAN_VALIDITY_MS = 24 * 3600_000;
/** Empty policy: every valid workload is allowed. */
const OPEN_POLICY: OperatorPolicy = { version: 1 };

export interface AdmissionGateOptions {
  /**
   * The operator policy file. Missing file: no policy (everything the engine can run is allowed).
   * @default $MVM_POLICY_FILE, else `<stateDir>/policy.json`
   */
  policyFile?: string;
}

/** An admitted plan and the audit entry that records its admission. */
export interface AdmittedRecord extends AdmittedPlan {
  receipt: AuditReceipt;
}

export class AdmissionGate {
  readonly policyFile: string;
  readonly audit: AuditLog;
  readonly #key: HostKey;
  readonly #replay: ReplayStore;
  readonly #digestFile: string;
  #policy: OperatorPolicy = OPEN_POLICY;
  #policyStamp = "";
  #policyLoading: Promise<OperatorPolicy> | undefined;

  private constructor(key: HostKey, replay: ReplayStore, audit: AuditLog, policyFile: string, digestFile: string) {
    this.#key = key;
    this.#replay = replay;
    this.audit = audit;
    this.policyFile = policyFile;
    this.#digestFile = digestFile;
  }

  /**
   * Opens the gate of a state directory: host key (created on first use), replay store, audit log,
   * and the operator policy (a policy that differs from the one last recorded is recorded).
   * @throws InvalidArgumentError when the policy file is invalid or writable by others
   */
  static async open(stateDir: string, options: AdmissionGateOptions = {}): Promise<AdmissionGate> {
    const key = await loadOrCreateHostKey(stateDir);
    const dir = join(stateDir, "admission");
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const replay = new ReplayStore({ dir: join(dir, "nonces"), maxRetentionMs: MAX_PLAN_VALIDITY_MS + 7 * 24 * 3600_000 });
    const audit = await AuditLog.open(auditDir(stateDir), { key });
    const policyFile = options.policyFile ?? process.env["MVM_POLICY_FILE"] ?? join(stateDir, "policy.json");
    const gate = new AdmissionGate(key, replay, audit, policyFile, join(dir, "policy.sha256"));
    try {
      await gate.policy();
      void replay.compact(Date.now()).catch(() => undefined);
    } catch (err) {
      await gate.close();
      throw err;
    }
    return gate;
  }

  /** The host's public key (verifies plans and the audit log). */
  get publicKey(): HostKey["publicKey"] {
    return this.#key.publicKey;
  }

  /** The host key pair, for the engine's other signed records (snapshot manifests). */
  get hostKey(): Pick<HostKey, "privateKey" | "publicKey"> {
    return { privateKey: this.#key.privateKey, publicKey: this.#key.publicKey };
  }

  /**
   * The operator policy in force: the file is re-read when it changed on disk, and a policy that
   * differs from the last recorded one is recorded as `policy.changed` before it is used.
   * @throws InvalidArgumentError when the file is invalid or writable by group or others
   */
  policy(): Promise<OperatorPolicy> {
    this.#policyLoading ??= this.#loadPolicy().finally(() => (this.#policyLoading = undefined));
    return this.#policyLoading;
  }

  async #loadPolicy(): Promise<OperatorPolicy> {
    // Checked on every admission: one synchronous lstat, no thread-pool hop and no error object
    // when the file is absent.
    let st: Stats | undefined;
    try {
      st = lstatSync(this.policyFile, { throwIfNoEntry: false });
    } catch (err) {
      throw new InvalidArgumentError(`Cannot read policy file "${this.policyFile}": ${(err as Error).message}`, { cause: err });
    }
    const stamp = st ? `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}` : "absent";
    if (stamp === this.#policyStamp) return this.#policy;
    if (st && !st.isFile()) throw new InvalidArgumentError(`Policy file "${this.policyFile}" is not a regular file`);
    if (st && (st.mode & 0o022) !== 0) {
      throw new InvalidArgumentError(`Policy file "${this.policyFile}" is writable by group or others (mode ${(st.mode & 0o777).toString(8)})`, {
        hint: `chmod go-w ${this.policyFile}`,
      });
    }
    const policy = st ? await loadPolicy(this.policyFile) : OPEN_POLICY;
    const digest = sha256Hex(canonicalJson(policy));
    const previous = (await readFile(this.#digestFile, "utf8").catch(() => "")).trim();
    if (previous !== digest) {
      await this.audit.append({
        type: "policy.changed",
        policyId: "operator",
        previousDigest: /^[0-9a-f]{64}$/.test(previous) ? previous : null,
        policyDigest: digest,
      });
      const temp = `${this.#digestFile}.${randomBytes(6).toString("hex")}`;
      await writeFile(temp, `${digest}\n`, { mode: 0o600 });
      await rename(temp, this.#digestFile);
    }
    this.#policy = policy;
    this.#policyStamp = stamp;
    return policy;
  }

  /**
   * Signs a plan for `ir` with the host key: valid from now for `validityMs`, with a fresh nonce.
   * @throws InvalidArgumentError when the validity is out of range
   */
  issue(ir: WorkloadIR, options: { validityMs?: number; nowMs?: number; labels?: Record<string, string> } = {}): SignedPlan {
    const validityMs = options.validityMs ?? DEFAULT_PLAN_VALIDITY_MS;
    if (!Number.isSafeInteger(validityMs) || validityMs < 1000 || validityMs > MAX_PLAN_VALIDITY_MS) {
      throw new InvalidArgumentError(`Invalid plan validity "${validityMs}" ms: must be from 1 s to 24 h`);
    }
    const now = options.nowMs ?? Date.now();
    return issuePlan({ ir, profile: profileFor(ir, options.labels ?? {}), notBeforeMs: now, notAfterMs: now + validityMs }, this.#key.privateKey);
  }

  /**
   * Admits `signed` for a request whose workload is `requestIr`, or throws. Either way the outcome
   * is in the audit log when this returns: `plan.admitted` (its receipt is returned) or
   * `plan.denied` with the reason's code.
   * @throws PlanRefusedError (AdmissionError) with a reason code; PolicyRuleDeniedError naming the rule
   */
  admit(signed: unknown, requestIr: WorkloadIR): Promise<AdmittedRecord> {
    return this.#admit(signed, requestIr);
  }

  /** `requestIr` undefined: the plan was issued for this request by the gate itself (same IR object). */
  async #admit(signed: unknown, requestIr: WorkloadIR | undefined): Promise<AdmittedRecord> {
    let admitted: AdmittedPlan;
    try {
      const policy = await this.policy().catch((err: unknown) => {
        throw new AdmissionError(`Admission refused: the operator policy cannot be used: ${(err as Error).message}`, { cause: err });
      });
      const seccompTier = (signed as { plan?: { profile?: { seccompTier?: unknown } } } | null)?.plan?.profile?.seccompTier;
      if (seccompTier !== undefined && seccompTier !== "default") {
        throw new UnsupportedCapabilityError(`Plan refused: seccomp tier "${String(seccompTier)}" is not one this engine enforces (only "default")`);
      }
      const ir = (signed as { plan?: { ir?: unknown } } | null)?.plan?.ir;
      if (requestIr !== undefined && ir !== undefined && canonicalJson(ir) !== canonicalJson(requestIr)) {
        throw new PlanRefusedError("request_mismatch", `Plan refused: the request does not describe the plan's workload (${firstDifference(ir, requestIr)})`);
      }
      admitted = await admit(signed, {
        publicKey: this.#key.publicKey,
        nowMs: Date.now(),
        replayStore: this.#replay,
        policy,
        maxValidityMs: MAX_PLAN_VALIDITY_MS,
        deferCommit: true,
      });
    } catch (err) {
      await this.audit.append(deniedEvent(signed, err));
      throw err;
    }
    // The nonce is reserved (no one else can use it); its entry and the admission record reach the
    // disk together, and nothing boots before both have.
    const [receipt] = await Promise.all([
      this.audit.append({ type: "plan.admitted", planId: admitted.planId, planDigest: admitted.planId.slice("sha256:".length) }),
      this.#replay.commit().catch((err: unknown) => {
        throw new AdmissionError(`Plan "${admitted.planId}" refused: the replay store failed: ${(err as Error).message}`, { cause: err });
      }),
    ]);
    return { ...admitted, receipt };
  }

  /** Signs and admits the engine's own plan for a live create. */
  admitLive(ir: WorkloadIR): Promise<AdmittedRecord> {
    return this.#admit(this.issue(ir, { validityMs: LIVE_PLAN_VALIDITY_MS, labels: { "mvm/mode": "live" } }), undefined);
  }

  /** Appends an event; resolves once it is durable, or with `{ wait: "written" }` once it is written (see AuditLog.append). */
  record(event: AuditEvent, options?: AppendOptions): Promise<AuditReceipt> {
    return this.audit.append(event, options);
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.audit.close(), this.#replay.close()]);
  }
}

/** The admission profile the engine gives a workload: its intent and references to the policies it runs under. */
export function profileFor(ir: WorkloadIR, labels: Record<string, string>): AdmissionProfile {
  const release = ir.secrets.some((s) => s.ref.posture === "env") ? "env" : ir.secrets.length > 0 ? "mediated" : "none";
  return {
    intent: ir.intent,
    seccompTier: "default",
    networkPolicyRef: `network@sha256:${sha256Hex(canonicalJson(ir.network))}`,
    filesystemPolicyRef: "work-rw-root-ro",
    egressPolicyRef: ir.network.rules.length === 0 ? "egress-none" : "egress-gateway",
    toolPolicyRef: ir.command.kind === "argv" ? `tool-argv@sha256:${sha256Hex(canonicalJson(ir.command.argv))}` : "tool-session",
    secretRelease: release,
    auditLabels: labels,
  };
}

function deniedEvent(signed: unknown, err: unknown): AuditEvent {
  let planDigest: string;
  try {
    planDigest = sha256Hex(canonicalJson(signed));
  } catch {
    planDigest = sha256Hex("");
  }
  const planId = (signed as { plan?: { planId?: unknown } } | null)?.plan?.planId;
  const reason =
    err instanceof PlanRefusedError
      ? err.reason
      : err instanceof PolicyRuleDeniedError
        ? "policy_violation"
        : err instanceof UnsupportedCapabilityError
          ? "capability_unsupported"
          : "malformed";
  return {
    type: "plan.denied",
    ...(typeof planId === "string" && /^sha256:[0-9a-f]{64}$/.test(planId) ? { planId } : {}),
    planDigest,
    reason,
  };
}

/** Names the first top-level IR field where the plan and the request differ. */
function firstDifference(planIr: unknown, requestIr: WorkloadIR): string {
  if (planIr === null || typeof planIr !== "object") return "the plan has no workload";
  const a = planIr as Record<string, unknown>;
  const b = requestIr as unknown as Record<string, unknown>;
  for (const key of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
    if (canonicalJson(a[key] ?? null) !== canonicalJson(b[key] ?? null)) return `field "${key}" differs`;
  }
  return "encoding differs";
}

function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
