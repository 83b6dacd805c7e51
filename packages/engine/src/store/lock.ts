/**
 * Inter-process lock files for the image store.
 *
 * A lock is a file holding its owner's pid and process start time (field 22 of /proc/PID/stat), so
 * a reused pid is not mistaken for the owner. It appears atomically with its content: the owner
 * writes a private temp file and hard-links it to the lock path, which fails if the lock exists.
 * A lock whose owner is gone is stale and is broken by renaming it aside; if what was renamed
 * aside turns out not to be the stale lock that was inspected, it is linked back.
 */
import { randomBytes } from "node:crypto";
import { link, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { isSameLiveProcess, readProcStartTime } from "../_internal/proc.js";
import { setTimeout as sleep } from "node:timers/promises";
import { AbortedError } from "@mvm/protocol";

export interface ProcessIdentity {
  readonly pid: number;
  /** Start time of the process in clock ticks since boot, as printed in /proc/PID/stat. */
  readonly startTime: string;
}

/** Reads a process's identity, or undefined when no such process exists. */
export async function processIdentity(pid: number): Promise<ProcessIdentity | undefined> {
  const startTime = await readProcStartTime(pid);
  return startTime === undefined ? undefined : { pid, startTime };
}

let self: Promise<ProcessIdentity> | undefined;
/** This process's identity. */
export function selfIdentity(): Promise<ProcessIdentity> {
  self ??= processIdentity(process.pid).then((id) => id ?? { pid: process.pid, startTime: "0" });
  return self;
}

/** True when the process that `owner` describes is still running. */
export function isAlive(owner: ProcessIdentity): Promise<boolean> {
  return isSameLiveProcess(owner.pid, owner.startTime);
}

/** Parses `<pid>-<startTime>` as found at the start of the store's temp names and in lock files. */
export function parseOwnerTag(tag: string): ProcessIdentity | undefined {
  const m = /^(\d{1,10})-(\d{1,20})(?:-|$)/.exec(tag);
  return m?.[1] && m[2] ? { pid: Number(m[1]), startTime: m[2] } : undefined;
}

/** `<pid>-<startTime>-<random hex>`: a name no other process or call will pick. */
export async function uniqueOwnedName(): Promise<string> {
  const me = await selfIdentity();
  return `${me.pid}-${me.startTime}-${randomBytes(6).toString("hex")}`;
}

export interface AcquireOptions {
  signal?: AbortSignal;
  /** Longest pause between two attempts while another process holds the lock. @default 500 */
  maxPollMs?: number;
}

export class FileLock {
  readonly path: string;
  readonly #content: string;
  #released = false;

  private constructor(path: string, content: string) {
    this.path = path;
    this.#content = content;
  }

  /**
   * Waits until the lock at `path` is free (or stale) and takes it.
   * Not reentrant: a second acquire of the same path from this process waits for the first release.
   * @throws AbortedError when `signal` fires while waiting.
   */
  static async acquire(path: string, options: AcquireOptions = {}): Promise<FileLock> {
    const me = await selfIdentity();
    const maxPollMs = options.maxPollMs ?? 500;
    let pollMs = 10;
    for (;;) {
      if (options.signal?.aborted) throw aborted(path, options.signal);
      const temp = `${path}.${await uniqueOwnedName()}.new`;
      const content = `${me.pid}-${me.startTime}-${randomBytes(6).toString("hex")}\n`;
      await writeFile(temp, content, { flag: "wx", mode: 0o600 });
      try {
        await link(temp, path);
        return new FileLock(path, content);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      } finally {
        await unlink(temp).catch(() => undefined);
      }
      const held = await readFile(path, "utf8").catch(() => undefined);
      if (held === undefined) continue; // released in between
      const owner = parseOwnerTag(held.trim());
      if (owner === undefined || !(await isAlive(owner))) {
        await breakStale(path, held);
        continue;
      }
      try {
        await sleep(pollMs, undefined, options.signal ? { signal: options.signal } : {});
      } catch (cause) {
        throw aborted(path, options.signal, cause);
      }
      pollMs = Math.min(maxPollMs, pollMs * 2);
    }
  }

  /** Releases the lock if it is still this holder's. Idempotent. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    const now = await readFile(this.path, "utf8").catch(() => undefined);
    if (now === this.#content) await unlink(this.path).catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

async function breakStale(path: string, staleContent: string): Promise<void> {
  const aside = `${path}.${await uniqueOwnedName()}.stale`;
  try {
    await rename(path, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  const moved = await readFile(aside, "utf8").catch(() => undefined);
  if (moved !== staleContent) {
    // A live holder took the lock after it was inspected: put its lock back.
    await link(aside, path).catch(() => undefined);
  }
  await unlink(aside).catch(() => undefined);
}

function aborted(path: string, signal: AbortSignal | undefined, cause?: unknown): AbortedError {
  return new AbortedError(`Stopped waiting for lock ${JSON.stringify(path)}: aborted`, { cause: cause ?? signal?.reason });
}
