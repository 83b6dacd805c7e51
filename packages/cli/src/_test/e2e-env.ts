/**
 * What the end-to-end tests that run `mvmctl` processes share: the shipped executable, the host's
 * image store (filled by scripts/setup.sh), why the tests skip without it, the environment that
 * points a CLI at a private state directory on the namespace backend, and a daemon started there.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_IMAGE, defaultStateDir } from "@mvm/engine";

/** The shipped executable: the bundle, run with its code cache. */
export const MVMCTL = fileURLToPath(new URL("../../bin/mvmctl.cjs", import.meta.url));

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

export interface TestDaemon {
  readonly child: ChildProcess;
  readonly socketPath: string;
  /** SIGTERM, then its exit code once it has closed. */
  stop(): Promise<number | null>;
}

/** Starts `mvmctl daemon` on `socketPath`; resolves once it says it listens. */
export async function startDaemon(env: NodeJS.ProcessEnv, socketPath: string): Promise<TestDaemon> {
  const child = spawn(process.execPath, [MVMCTL, "daemon", "--socket", socketPath], { env, stdio: ["ignore", "ignore", "pipe"] });
  const closed = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  let seen = "";
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on("data", (c: Buffer) => {
      if (seen.length < 64 * 1024) seen += c.toString();
      if (seen.includes(`listening on ${socketPath}`)) resolve();
    });
    child.on("close", () => reject(new Error(`daemon exited before listening: ${seen}`)));
  });
  return {
    child,
    socketPath,
    async stop() {
      child.kill("SIGTERM");
      return closed;
    },
  };
}

/** What a finished `mvmctl` run printed, and its exit code. */
export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the shipped `mvmctl` with `args` in `env` (no stdin) to its end. */
export function run(env: NodeJS.ProcessEnv, args: readonly string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MVMCTL, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }));
  });
}
