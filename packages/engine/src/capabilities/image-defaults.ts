/**
 * What an OCI image's config supplies to a sandbox where the create does not, and the record of
 * it in the sandbox's info (and so its receipt): env entries the create does not set, the default
 * working directory of execs (only when it is a real directory of the image), the user workloads
 * run as (resolved to numbers in the image's own passwd and group files), and, recorded for the
 * caller (`mvmctl run` with no command runs them), the image's entrypoint and cmd.
 */
import { createHash } from "node:crypto";
import { lstat } from "node:fs/promises";
import { posix } from "node:path";
import type { SandboxInfo } from "@mvm/protocol";
import { PolicyRuleDeniedError } from "../admission/admit.js";
import { evaluateImagePolicy, type ImageFacts, type OperatorPolicy, type PolicyRule } from "../admission/policy.js";
import type { ImageRecord } from "../images/store.js";
import { resolveImageUser, type ImageUser } from "../images/oci/user.js";
import type { EngineCore } from "./core.js";

export interface ImageApplied {
  /** The create's env with the image's entries beneath it (undefined when neither has any). */
  env: Record<string, string> | undefined;
  /** `SandboxInfo.image` for this create. */
  info: SandboxInfo["image"];
  /** The uid and gid workloads run as, when the image names a user. */
  user?: ImageUser;
}

/** Longest image working directory applied as the exec default, in characters. */
const MAX_WORKING_DIR_CHARS = 1024;

export async function applyImageDefaults(imageRef: string, image: ImageRecord, requestEnv: Record<string, string> | undefined): Promise<ImageApplied> {
  const info: SandboxInfo["image"] = { ref: imageRef, digest: image.digest };
  if (image.oci === undefined) return { env: requestEnv, info };
  const { manifestDigest, configDigest, reference, defaults } = image.oci;
  info.oci = { configDigest, ...(manifestDigest ? { manifestDigest } : {}), ...(reference !== undefined ? { reference } : {}) };
  const fromImage: NonNullable<SandboxInfo["image"]["fromImage"]> = {};
  let env = requestEnv;
  const imageEnv = Object.entries(defaults.env ?? {}).filter(([name]) => requestEnv?.[name] === undefined);
  if (imageEnv.length > 0) {
    env = { ...Object.fromEntries(imageEnv), ...(requestEnv ?? {}) };
    fromImage.envNames = imageEnv.map(([name]) => name).sort();
  }
  const wd = defaults.workingDir;
  if (wd !== undefined && wd.length <= MAX_WORKING_DIR_CHARS && (await isRealDir(image.rootfsDir, wd))) fromImage.workingDir = posix.normalize(wd);
  let user: ImageUser | undefined;
  if (defaults.user !== undefined) {
    user = await resolveImageUser(image.rootfsDir, defaults.user);
    fromImage.user = defaults.user;
  }
  if (defaults.entrypoint !== undefined) fromImage.entrypoint = defaults.entrypoint;
  if (defaults.cmd !== undefined) fromImage.cmd = defaults.cmd;
  if (Object.keys(fromImage).length > 0) info.fromImage = fromImage;
  return { env, info, ...(user !== undefined ? { user } : {}) };
}

/**
 * The facts the policy's image rules judge; `provenanceVerified` is whether the image's build
 * provenance record verified against the host key (images/provenance.ts `verifyProvenance`).
 */
export function imageFacts(ref: string, image: ImageRecord, provenanceVerified: boolean): ImageFacts {
  const reference = image.oci?.reference;
  // Only a pull records a reference, and it always starts with its registry host.
  const registry = reference !== undefined ? reference.slice(0, reference.indexOf("/")) : undefined;
  return { ref, ...(registry ? { registry } : {}), provenanceVerified };
}

/**
 * The operator policy for the image rules, read once per create; undefined when it cannot be
 * read, which is left to admission (it refuses every workload under it and records why).
 */
export async function imagePolicy(core: EngineCore): Promise<OperatorPolicy | undefined> {
  return core.gate.policy().catch(() => undefined);
}

/**
 * Judges `facts` by the policy's image rules; a refusal is recorded in the audit log
 * (`image.refused`: the rule, sha256 of the reference, the image's digest when known) before it
 * is thrown.
 * @throws PolicyRuleDeniedError when the policy's image rules refuse the image.
 */
export async function checkImagePolicy(core: EngineCore, policy: OperatorPolicy | undefined, facts: ImageFacts, imageDigest?: string): Promise<void> {
  if (policy === undefined) return;
  const decision = evaluateImagePolicy(facts, policy);
  if (decision.ok) return;
  await recordImageRefusal(core, decision.rule, "create", facts.ref, imageDigest);
  throw new PolicyRuleDeniedError(decision.rule, `Image "${facts.ref}" denied by policy rule "${decision.rule}": ${decision.message}`);
}

/** Appends `image.refused` for an image rule's refusal of `ref`; other rules are not image rules and are not recorded here. */
export async function recordImageRefusal(core: EngineCore, rule: PolicyRule, at: "create" | "pull", ref: string, imageDigest?: string): Promise<void> {
  if (rule !== "requireDigestPinnedImages" && rule !== "allowedRegistries" && rule !== "requireImageProvenance") return;
  const digest = imageDigest !== undefined && /^sha256:[0-9a-f]{64}$/.test(imageDigest) ? imageDigest.slice("sha256:".length) : undefined;
  await core.gate.record({ type: "image.refused", rule, at, refDigest: createHash("sha256").update(ref, "utf8").digest("hex"), ...(digest !== undefined ? { imageDigest: digest } : {}) });
}

/** True when every component of the absolute `path` is a real directory under `root` (no symlink followed). */
async function isRealDir(root: string, path: string): Promise<boolean> {
  const parts = posix.normalize(path).split("/").filter((p) => p !== "");
  if (parts.includes("..")) return false;
  let abs = root;
  for (const part of parts) {
    abs = posix.join(abs, part);
    const st = await lstat(abs).catch(() => undefined);
    if (st?.isDirectory() !== true) return false;
  }
  return true;
}
