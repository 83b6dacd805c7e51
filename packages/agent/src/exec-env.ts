/**
 * Per-call hygiene for exec: the environment baseline and the fresh TMPDIR.
 */
import { chmodSync, lstatSync, mkdtempSync, readdirSync, rmdirSync, rmSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { logError } from "./errors.js";

/** Variables every command starts with; nothing from the agent's own environment is added. */
export const BASELINE_ENV: Readonly<Record<string, string>> = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: "/work",
  LANG: "C.UTF-8",
};

/** The sandbox user's home, used as HOME when the sandbox provides it (see {@link homeDir}). */
export const USER_HOME = "/home/user";

let home: string | undefined;

/**
 * HOME of every command: {@link USER_HOME} when it is a directory owned by the agent's own uid
 * (the backend made it for the sandbox user), else /work. Decided once.
 */
export function homeDir(): string {
  if (home === undefined) {
    let owned = false;
    try {
      const st = lstatSync(USER_HOME);
      owned = st.isDirectory() && st.uid === process.getuid?.();
    } catch {
      owned = false;
    }
    home = owned ? USER_HOME : (BASELINE_ENV["HOME"] ?? "/work");
  }
  return home;
}

/** Where fresh per-call temporary directories are created. */
export const TMP_ROOT = "/tmp";

/**
 * The environment of one command: the baseline, overlaid with the request's variables, with
 * TMPDIR always set to the call's own directory.
 */
export function buildEnv(requestEnv: Readonly<Record<string, string>>, tmpDir: string): Record<string, string> {
  const env: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(BASELINE_ENV)) env[k] = v;
  env["HOME"] = homeDir();
  for (const [k, v] of Object.entries(requestEnv)) env[k] = v;
  env["TMPDIR"] = tmpDir;
  return env;
}

/** Creates a fresh directory (mode 0700) for one call's TMPDIR. */
export async function makeTmpDir(): Promise<string> {
  // mkdtemp creates the directory with mode 0700. Synchronous: one local syscall costs less
  // than a round trip through the thread pool, and it sits on every exec's critical path.
  return mkdtempSync(join(TMP_ROOT, "mvm-exec-"));
}

/**
 * Removes a call's TMPDIR and everything in it. A workload may have left directories without
 * write or search permission; those are opened up and the removal retried once. Never throws.
 */
export async function removeTmpDir(dir: string): Promise<void> {
  try {
    rmdirSync(dir); // the common case: the call left its TMPDIR empty
    return;
  } catch {
    // Not empty (or already gone): the recursive removal below.
  }
  try {
    await rm(dir, { recursive: true, force: true, maxRetries: 2 });
    return;
  } catch {
    // Fall through to the permission repair below.
  }
  try {
    openUp(dir);
    await rm(dir, { recursive: true, force: true, maxRetries: 2 });
  } catch (err) {
    logError(`cannot remove TMPDIR "${dir}"`, err);
  }
}

/** Synchronous variant of removeTmpDir for the exit path. Never throws. */
export function removeTmpDirSync(dir: string): void {
  try {
    rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
  } catch {
    try {
      openUp(dir);
      rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
    } catch (err) {
      logError(`cannot remove TMPDIR "${dir}"`, err);
    }
  }
}

/** Gives the owner rwx on every directory under `dir` (symlinks are not followed). */
function openUp(dir: string): void {
  const st = lstatSync(dir, { throwIfNoEntry: false });
  if (!st?.isDirectory()) return;
  chmodSync(dir, 0o700);
  for (const name of readdirSync(dir)) openUp(join(dir, name));
}
