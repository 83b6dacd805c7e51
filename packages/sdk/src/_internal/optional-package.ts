/**
 * The SDK's heavy packages are optional peers: a client that only creates sandboxes and runs
 * commands installs neither the TypeScript compiler nor esbuild. Each is loaded here, on first
 * use by the feature that needs it, and its absence is a MissingPackageError naming what to install.
 */
import { createRequire } from "node:module";
import { UnsupportedCapabilityError } from "@mvm/protocol";

/** A feature of the SDK needs an optional package that is not installed. */
export class MissingPackageError extends UnsupportedCapabilityError {
  constructor(
    /** The npm package to install, e.g. `"typescript"`. */
    readonly packageName: string,
    feature: string,
    options: { cause?: unknown } = {},
  ) {
    super(`${feature} needs the package "${packageName}", which is not installed`, {
      ...options,
      hint: `install it beside @mvm/sdk: npm install ${packageName}`,
    });
  }
}

const requireHere = createRequire(import.meta.url);

/** Whether `err` says that `name` itself (not a file inside it) cannot be found. */
function isMissing(err: unknown, name: string): boolean {
  const e = err as NodeJS.ErrnoException;
  return (e.code === "MODULE_NOT_FOUND" || e.code === "ERR_MODULE_NOT_FOUND") && String(e.message).includes(`'${name}'`);
}

/**
 * `require(name)` for a synchronous caller.
 * @throws MissingPackageError when the package is not installed
 */
export function requireOptional<T>(name: string, feature: string): T {
  try {
    return requireHere(name) as T;
  } catch (err) {
    if (isMissing(err, name)) throw new MissingPackageError(name, feature, { cause: err });
    throw err;
  }
}

/**
 * `import(name)`; a CommonJS package's `module.exports` is returned as it is (its `default`).
 * @throws MissingPackageError when the package is not installed
 */
export async function importOptional<T>(name: string, feature: string): Promise<T> {
  let mod: { default?: unknown };
  try {
    mod = (await import(name)) as { default?: unknown };
  } catch (err) {
    if (isMissing(err, name)) throw new MissingPackageError(name, feature, { cause: err });
    throw err;
  }
  return (mod.default ?? mod) as T;
}
