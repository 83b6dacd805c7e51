/**
 * What the end-to-end tests that run `mvmctl` processes share: the host's image store (filled by
 * scripts/setup.sh), why the tests skip without it, and the environment that points a CLI at a
 * private state directory on the namespace backend.
 */
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_IMAGE, defaultStateDir } from "@mvm/engine";

export const imagesDir = process.env["MVM_TEST_IMAGES_DIR"] ?? join(defaultStateDir(), "images");
export const skipWithoutImages = existsSync(imagesDir) ? undefined : `no image store at ${imagesDir}: run scripts/setup.sh first (it builds ${DEFAULT_IMAGE})`;

/** The environment of an `mvmctl` (or daemon) whose config and state live under `dir`. */
export function cliEnv(dir: string): NodeJS.ProcessEnv {
  const config = join(dir, "config.json");
  writeFileSync(config, "{}");
  return {
    ...process.env,
    MVM_CONFIG: config,
    MVM_ACK_CONTAINER_TIER: "1",
    MVM_DEFAULT_BACKEND: "namespace",
    MVM_STATE_DIR: join(dir, "state"),
    MVM_IMAGES_DIR: imagesDir,
    MVM_VM_CACHE_DIR: process.env["MVM_TEST_VM_CACHE_DIR"] ?? join(defaultStateDir(), "vm"),
  };
}
