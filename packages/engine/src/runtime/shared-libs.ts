/**
 * Finds the dynamic loader and shared libraries a host binary needs, as `ldd` reports them.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { InternalError, UnsupportedCapabilityError } from "@mvm/protocol";

const execFileAsync = promisify(execFile);

/** A shared library: the name the binary asks for (its soname) and where the host resolves it. */
export interface SharedLibrary {
  readonly name: string;
  readonly path: string;
}

export interface SharedLibraryList {
  /** Absolute host path of the program interpreter (the dynamic loader). */
  readonly loader: string;
  readonly libraries: readonly SharedLibrary[];
}

/** The loader name the agent runtime ships; x86_64 glibc is the only supported target. */
export const LOADER_NAME = "ld-linux-x86-64.so.2";

const SAFE_NAME = /^[A-Za-z0-9._+-]+$/;

/**
 * Parses `ldd` output. Throws when a library is missing, the binary is not dynamic, or a name
 * would not be a plain file name.
 */
export function parseLddOutput(output: string, binary: string, purpose = "assemble the agent runtime"): SharedLibraryList {
  let loader: string | undefined;
  const libraries: SharedLibrary[] = [];
  for (const raw of output.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    if (/not a dynamic executable|statically linked/.test(line)) {
      throw new UnsupportedCapabilityError(`Cannot ${purpose}: "${binary}" is not dynamically linked`);
    }
    const arrow = /^(\S+) => (.*)$/.exec(line);
    if (arrow) {
      const name = arrow[1] ?? "";
      const target = (arrow[2] ?? "").trim();
      if (target.startsWith("not found")) {
        throw new InternalError(`Cannot ${purpose}: library "${name}" of "${binary}" not found`);
      }
      const path = /^(\/\S+)/.exec(target)?.[1];
      if (path === undefined) continue; // e.g. "linux-vdso.so.1 =>  (0x...)" on older glibc
      if (!SAFE_NAME.test(name) || name === "." || name === "..") {
        throw new InternalError(`Cannot ${purpose}: unexpected library name "${name}"`);
      }
      libraries.push({ name, path });
      continue;
    }
    const bare = /^(\/\S+)\s+\(0x[0-9a-f]+\)$/.exec(line);
    if (bare?.[1] !== undefined) {
      loader = bare[1];
      continue;
    }
    // Entries without a path (the vDSO) need no file.
  }
  if (loader === undefined) {
    throw new InternalError(`Cannot ${purpose}: ldd named no dynamic loader for "${binary}"`);
  }
  if (!loader.endsWith(`/${LOADER_NAME}`)) {
    throw new UnsupportedCapabilityError(
      `Cannot ${purpose}: loader "${loader}" is not "${LOADER_NAME}" (only x86_64 glibc hosts are supported)`,
    );
  }
  return { loader, libraries: libraries.filter((lib) => lib.name !== LOADER_NAME) };
}

/** Runs `ldd` on `binary` and parses its answer. */
export async function listSharedLibraries(binary: string, purpose = "assemble the agent runtime"): Promise<SharedLibraryList> {
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync("ldd", [binary], {
      env: { PATH: "/usr/bin:/bin", LC_ALL: "C" },
      timeout: 30_000,
      maxBuffer: 1024 * 1024,
    }));
  } catch (err) {
    throw new InternalError(`Cannot ${purpose}: "ldd ${binary}" failed`, { cause: err });
  }
  return parseLddOutput(stdout, binary, purpose);
}
