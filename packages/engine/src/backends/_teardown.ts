/**
 * Pieces every process-based backend shares: the agent channel over a child's stdio, a
 * single-flight teardown that can be retried, and a collector for independent cleanup steps.
 */
import type { ChildProcess } from "node:child_process";
import { Duplex } from "node:stream";
import { CleanupError } from "@mvm/protocol";

/** The agent's byte channel: the child's stdout (agent → host) and stdin (host → agent). */
export function childChannel(child: ChildProcess, what: string): Duplex {
  const { stdin, stdout } = child;
  if (stdin === null || stdout === null) throw new TypeError(`${what} needs piped stdin and stdout`);
  // Errors (EPIPE when the sandbox is gone) reach the channel's user as error/close events.
  stdin.on("error", () => undefined);
  stdout.on("error", () => undefined);
  const channel = Duplex.from({ readable: stdout, writable: stdin });
  channel.on("error", () => undefined);
  return channel;
}

/** Wraps `run` so concurrent callers share one run; after a failed run the next call tries again. */
export function singleFlight(run: () => Promise<void>): () => Promise<void> {
  let current: Promise<void> | undefined;
  return () => {
    if (current === undefined) {
      const attempt = run();
      current = attempt;
      attempt.catch(() => {
        if (current === attempt) current = undefined;
      });
    }
    return current;
  };
}

/** Runs cleanup steps that must all be tried, then reports every failure at once. */
export class CleanupFailures {
  readonly #failures: unknown[] = [];

  add(err: unknown): void {
    this.#failures.push(err);
  }

  async attempt(step: () => Promise<unknown>): Promise<void> {
    try {
      await step();
    } catch (err) {
      this.#failures.push(err);
    }
  }

  /** Throws one CleanupError (`what`: the messages) when any step failed. */
  throwIfAny(what: string): void {
    if (this.#failures.length === 0) return;
    const messages = this.#failures.map((f) => (f instanceof Error ? f.message : String(f))).join("; ");
    throw new CleanupError(`${what}: ${messages}`, { cause: this.#failures[0] });
  }
}

/** True when `promise` settles within `ms` milliseconds. */
export async function settlesWithin<T>(promise: Promise<T>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
