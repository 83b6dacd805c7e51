/**
 * Errors in how mvmctl was invoked. They exit with code 2 and never reach the engine.
 */

/** A command line mvmctl cannot act on: unknown option, missing argument, bad flag value. */
export class UsageError extends Error {
  override readonly name = "UsageError";
  /** What to do about it, printed on a `hint:` line. */
  readonly hint: string | undefined;

  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.hint = options.hint;
  }
}
