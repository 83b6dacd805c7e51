/**
 * The optional mvmctl config file: `$MVM_CONFIG`, else `/etc/mvm/config.json` for root, else
 * `$XDG_CONFIG_HOME/mvm/config.json` or `~/.config/mvm/config.json`. It is validated strictly:
 * an unknown key or a wrong type is an error, never ignored.
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { z } from "zod";
import { InvalidArgumentError } from "@mvm/protocol";

export const CliConfigSchema = z.strictObject({
  /** Silences the warning printed when a sandbox runs on the container tier. */
  ackContainerTier: z.boolean().optional(),
  /** Operator group (name or gid) whose members may use `mvmctl daemon`'s socket; `--group` wins. */
  daemonGroup: z.string().min(1).max(64).optional(),
});
export type CliConfig = z.infer<typeof CliConfigSchema>;

/** Largest config file read, in bytes. */
export const MAX_CONFIG_BYTES = 64 * 1024;

export interface ConfigLocation {
  path: string;
  /** True when `$MVM_CONFIG` named it: then a missing file is an error. */
  explicit: boolean;
}

/** Where the config file is looked for. */
export function configLocation(env: Readonly<Record<string, string | undefined>>, uid: number | undefined, homeDir: string): ConfigLocation {
  const fromEnv = env["MVM_CONFIG"];
  if (fromEnv !== undefined && fromEnv !== "") return { path: fromEnv, explicit: true };
  if (uid === 0) return { path: "/etc/mvm/config.json", explicit: false };
  const xdg = env["XDG_CONFIG_HOME"];
  const base = xdg !== undefined && isAbsolute(xdg) ? xdg : join(homeDir, ".config");
  return { path: join(base, "mvm", "config.json"), explicit: false };
}

/** Validates parsed config JSON; throws InvalidArgumentError naming the file and the bad key. */
export function parseConfig(value: unknown, path: string): CliConfig {
  const r = CliConfigSchema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const where = issue && issue.path.length > 0 ? `${issue.path.join(".")}: ` : "";
  throw new InvalidArgumentError(`Invalid config file "${path}": ${where}${issue?.message ?? "invalid"}`, {
    cause: r.error,
    hint: `The keys are "ackContainerTier" (true or false) and "daemonGroup" (a group name or gid); fix or remove the file`,
  });
}

/** Reads and validates the config file. A missing file at a default location means no settings. */
export async function loadConfig(location: ConfigLocation): Promise<CliConfig> {
  let bytes: Buffer;
  try {
    bytes = await readBounded(location.path);
  } catch (err) {
    if (isNodeError(err) && err.code === "ENOENT" && !location.explicit) return {};
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`Cannot read config file "${location.path}": ${(err as Error).message}`, {
      cause: err,
      hint: location.explicit ? "Point MVM_CONFIG at a readable JSON file or unset it" : "Make the file readable or remove it",
    });
  }
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString("utf8"));
  } catch (err) {
    throw new InvalidArgumentError(`Invalid config file "${location.path}": not JSON`, {
      cause: err,
      hint: 'Write a JSON object such as {"ackContainerTier": true}',
    });
  }
  return parseConfig(value, location.path);
}

async function readBounded(path: string): Promise<Buffer> {
  // O_NONBLOCK: a FIFO at the config path fails instead of blocking mvmctl.
  const handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const buf = Buffer.alloc(MAX_CONFIG_BYTES + 1);
    let filled = 0;
    while (filled < buf.length) {
      const { bytesRead } = await handle.read(buf, filled, buf.length - filled, null);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    if (filled > MAX_CONFIG_BYTES) {
      throw new InvalidArgumentError(`Config file "${path}" is larger than ${MAX_CONFIG_BYTES} bytes`, {
        hint: "The config file holds a few settings; check that MVM_CONFIG points at the right file",
      });
    }
    return buf.subarray(0, filled);
  } finally {
    await handle.close();
  }
}

function isNodeError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === "string";
}
