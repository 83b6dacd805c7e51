/**
 * Small schemas the API and the plan formats share (kept apart so that neither imports the other).
 */
import { z } from "zod";
import { PortSchema } from "./network-policy.js";

export const Sha256DigestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/);
export type Sha256Digest = string & { readonly __brand: "Sha256Digest" };

export const BackendName = z.enum(["namespace", "vm"]);
export type BackendName = z.infer<typeof BackendName>;

/** What a backend protects. `container`: shared host kernel. `vm-*`: own guest kernel. */
export const Tier = z.enum(["container", "vm-hardware", "vm-emulated"]);
export type Tier = z.infer<typeof Tier>;

export { MAX_PUBLISHED_PORTS } from "./limits.js";

/** A guest port published on a host loopback port (`host` absent: any free port). */
export const PortSpec = z.strictObject({ guest: PortSchema, host: PortSchema.optional() });
export type PortSpec = z.infer<typeof PortSpec>;
