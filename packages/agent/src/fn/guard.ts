/**
 * The single-shot guard: a wrapper entry runs once per process. A process that served one call
 * holds that call's module state, so serving a second caller from it would leak between them;
 * the guard makes that a hard error unless MVM_FN_ALLOW_REENTRY=1 says it is intended.
 */
import { FN_ALLOW_REENTRY_ENV } from "@mvm/protocol";

let entered = false;

/** A second entry into the wrapper in one process. */
export class ReentryError extends Error {
  override readonly name = "ReentryError";
}

/** Marks the entry as taken; throws ReentryError when it already was (and re-entry is not allowed). */
export function enterOnce(env: Readonly<Record<string, string | undefined>> = process.env): void {
  if (entered && env[FN_ALLOW_REENTRY_ENV] !== "1") {
    throw new ReentryError(`The function wrapper already ran in this process; set ${FN_ALLOW_REENTRY_ENV}=1 to allow re-entry`);
  }
  entered = true;
}
