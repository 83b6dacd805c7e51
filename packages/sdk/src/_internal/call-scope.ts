/**
 * One call's cancellation: the caller's AbortSignal and deadline folded into a single signal whose
 * reason is already the typed error (AbortedError or TimeoutError).
 */
import { AbortedError, InvalidArgumentError, MvmError, TimeoutError, TransportError, type CallOptions } from "@mvm/protocol";

export class CallScope {
  /** Aborts when the caller aborts, the deadline passes, or `abort()` is called. */
  readonly signal: AbortSignal;
  /** e.g. `Call "exec" to the daemon at "/run/mvm/mvmd.sock"` */
  readonly describe: string;
  readonly #controller = new AbortController();
  readonly #parent: AbortSignal | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(describe: string, options: CallOptions = {}, defaultTimeoutMs?: number) {
    this.describe = describe;
    this.signal = this.#controller.signal;
    this.#parent = options.signal;
    const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
    if (timeoutMs !== undefined) {
      if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new InvalidArgumentError(`Invalid timeoutMs "${timeoutMs}"`);
      this.#timer = setTimeout(() => this.abort(new TimeoutError(`${describe} timed out after ${timeoutMs} ms`)), timeoutMs);
    }
    if (this.#parent?.aborted) this.#onParentAbort();
    else this.#parent?.addEventListener("abort", this.#onParentAbort, { once: true });
  }

  readonly #onParentAbort = (): void => {
    this.abort(new AbortedError(`${this.describe} was aborted`, { cause: this.#parent?.reason }));
  };

  /** Ends the call with `reason` (the first reason wins). */
  abort(reason: MvmError): void {
    if (!this.signal.aborted) this.#controller.abort(reason);
    this.dispose();
  }

  /** Releases the timer and the listener on the caller's signal. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#parent?.removeEventListener("abort", this.#onParentAbort);
  }

  /** Throws the abort reason when the call has already ended. */
  throwIfAborted(): void {
    if (this.signal.aborted) throw this.signal.reason as MvmError;
  }

  /**
   * The error to report for `err`, seen during this call: the abort reason when the call was
   * aborted or timed out, an MvmError as it is, anything else as a TransportError.
   */
  fail(err: unknown): MvmError {
    if (this.signal.aborted) return this.signal.reason as MvmError;
    if (err instanceof MvmError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new TransportError(`${this.describe} failed: ${message}`, { cause: err });
  }
}
