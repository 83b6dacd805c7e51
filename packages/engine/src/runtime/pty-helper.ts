/**
 * `mvm-pty`, the agent's terminal helper (packages/engine/guest/mvm-pty.c): it makes a new
 * pseudo-terminal the controlling terminal of a command the agent starts with `pty`, and resizes
 * it. Compiled statically on the host with the system C compiler (so it runs in any image, with
 * no loader or libraries) and shipped in the agent runtime as `bin/mvm-pty`. Without a compiler
 * the runtime has no helper, and a `pty` exec fails with UnsupportedCapabilityError.
 */
import { fileURLToPath } from "node:url";
import { buildCProgram, type CProgram } from "../_internal/c-program.js";
import { isStaticElf } from "../backends/vm/guest-helper.js";

/** File name of the helper in its store directory and in the runtime's `bin/`. */
export const PTY_HELPER_NAME = "mvm-pty";

/** Compiler flags; part of the store key. */
export const PTY_HELPER_CFLAGS: readonly string[] = ["-std=c11", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"];

/** The C source, found relative to this module (dist/runtime/ → packages/engine/guest/). */
export function ptyHelperSourcePath(): string {
  return fileURLToPath(new URL("../../guest/mvm-pty.c", import.meta.url));
}

/**
 * Compiles the helper into `outRoot/<key>/mvm-pty` (or finds it there).
 * @throws UnsupportedCapabilityError when there is no working compiler or static C library
 * @example const { path } = await buildPtyHelper({ outRoot: "/var/lib/mvm/pty-helper" });
 */
export function buildPtyHelper(options: { readonly outRoot: string; readonly ccPath?: string; readonly signal?: AbortSignal }): Promise<CProgram> {
  return buildCProgram({
    sourcePath: ptyHelperSourcePath(),
    name: PTY_HELPER_NAME,
    cflags: PTY_HELPER_CFLAGS,
    outRoot: options.outRoot,
    dirMode: 0o755,
    what: "build the terminal helper",
    hint: "Install a C compiler and static C library (Debian: apt-get install gcc libc6-dev); without it sandboxes have no terminals",
    ccPath: options.ccPath,
    signal: options.signal,
    refuse: (bytes) => (isStaticElf(bytes) ? undefined : "the result is not a static executable"),
  });
}

/** The helper's path, or undefined when it cannot be built here (terminals are then unsupported). */
export async function ptyHelperIfBuildable(outRoot: string): Promise<string | undefined> {
  try {
    return (await buildPtyHelper({ outRoot })).path;
  } catch {
    return undefined;
  }
}
