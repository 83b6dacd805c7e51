/**
 * `mvm-pty`, the agent's terminal helper (packages/engine/guest/mvm-pty.c): it makes a new
 * pseudo-terminal the controlling terminal of a command the agent starts with `pty`, and resizes
 * it. Compiled statically on the host with the system C compiler (so it runs in any image, with
 * no loader or libraries) and shipped in the agent runtime as `bin/mvm-pty`. Without a compiler
 * the runtime has no helper, and a `pty` exec fails with UnsupportedCapabilityError.
 */
import { access, constants } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { buildCProgram, type CProgram } from "../_internal/c-program.js";
import { isStaticElf } from "../backends/vm/guest-helper.js";
import type { HostFacts } from "../store/host-facts.js";

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

/**
 * The helper's path, or undefined when it cannot be built here (terminals are then unsupported).
 * With `facts`, a build is kept between engine starts while the source, the `cc` that PATH finds
 * and the built file are unchanged, so an engine start runs no compiler (not even `cc --version`).
 */
export async function ptyHelperIfBuildable(outRoot: string, facts?: HostFacts): Promise<string | undefined> {
  const attempt = async (): Promise<string | undefined> => {
    try {
      return (await buildPtyHelper({ outRoot })).path;
    } catch {
      return undefined;
    }
  };
  if (facts === undefined) return attempt();
  // The compiler a build would run: the first `cc` on PATH. Its path is part of the context, so
  // another PATH or another first `cc` is a new fact.
  const path = process.env["PATH"] ?? "";
  const cc = await firstExecutable("cc", path);
  if (cc === undefined) return attempt();
  const built = await facts.fact({
    key: `pty-helper:${outRoot}`,
    context: `${cc}\0${path}`,
    files: [ptyHelperSourcePath(), cc],
    schema: z.string().max(4096),
    compute: async () => {
      const found = await attempt();
      return found === undefined ? { value: "" } : { value: found, discovered: [found] };
    },
    // Only a build is kept: a host where it failed is asked again at the next start.
    keep: (value) => value !== "",
  });
  return built === "" ? undefined : built;
}

/** The first executable file named `name` in PATH's absolute directories, or undefined. */
async function firstExecutable(name: string, path: string): Promise<string | undefined> {
  for (const dir of path.split(":")) {
    if (!isAbsolute(dir)) continue;
    const candidate = join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}
