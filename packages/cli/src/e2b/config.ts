/**
 * The E2B server's config file: which mvm image each E2B template name starts, and the limits of
 * a create. Parsed strictly; unknown fields are an error.
 *
 * ```json
 * { "templates": { "base": "debian:bookworm+python3" }, "backend": "namespace",
 *   "timeoutSeconds": { "default": 300, "max": 3600 } }
 * ```
 */
import { readFile } from "node:fs/promises";
import { z } from "zod";
import { BackendName, ImageRefSchema, InvalidArgumentError, MAX_TTL_SECONDS, parseJsonStrict } from "@mvm/protocol";

const MAX_CONFIG_BYTES = 256 * 1024;

export const E2bConfig = z.strictObject({
  /** E2B template name (or id) → mvm image reference. */
  templates: z.record(z.string().min(1).max(128), ImageRefSchema).refine((t) => Object.keys(t).length <= 256, "at most 256 templates"),
  /** The backend of every sandbox; absent: the daemon's default. */
  backend: BackendName.optional(),
  /** A create's TTL when it names none, and the most it may ask for, in seconds. */
  timeoutSeconds: z
    .strictObject({ default: z.number().int().min(1).max(MAX_TTL_SECONDS), max: z.number().int().min(1).max(MAX_TTL_SECONDS) })
    .refine((t) => t.default <= t.max, "default must not exceed max")
    .optional(),
});
export type E2bConfig = z.infer<typeof E2bConfig>;

/** E2B's own default: a sandbox lives 300 s unless the create says otherwise. */
export const DEFAULT_TIMEOUT_SECONDS = 300;

/** The config used without a file: the E2B SDK's default template "base" starts `defaultImage`. */
export function defaultE2bConfig(defaultImage: string): E2bConfig {
  return { templates: { base: defaultImage } };
}

/** Reads and checks a config file. */
export async function loadE2bConfig(path: string): Promise<E2bConfig> {
  const raw = await readFile(path);
  if (raw.byteLength > MAX_CONFIG_BYTES) throw new InvalidArgumentError(`The E2B config "${path}" is over ${MAX_CONFIG_BYTES} bytes`);
  const parsed = E2bConfig.safeParse(parseJsonStrict(raw.toString("utf8"), { maxDepth: 8 }));
  if (!parsed.success) {
    throw new InvalidArgumentError(`Invalid E2B config "${path}": ${parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}`);
  }
  return parsed.data;
}
