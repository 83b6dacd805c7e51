/**
 * The writer lock of an audit log: `<log>.lock`. Whoever holds it is the one process appending;
 * every writer (an engine, in this process or another, on the same state directory) takes it for
 * one batch of appends and gives it back, so several engines share one log and never interleave.
 *
 * Each writer owns a private file `<log>.lock.<pid>-<startTime>-<random>.own` whose content is that
 * name's owner tag. Taking the lock is one `link(own, lock)`, which fails when the lock exists;
 * giving it back is one `unlink(lock)`. Both are synchronous: they are single metadata syscalls,
 * cheaper than a thread-pool round trip. A held lock whose owner process is gone (pid dead, or
 * reused by a process with another start time) is stale: it is renamed aside, re-read, and linked
 * back if what was moved turns out to be a live lock taken meanwhile. Own files of dead writers
 * are swept when a writer starts.
 *
 * A lock file rather than flock(2): Node has no flock binding, and the owner identity in the file
 * lets an error name the process that holds the log.
 */
import { linkSync, readdirSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { link, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { InternalError } from "@mvm/protocol";
import { isAlive, parseOwnerTag, uniqueOwnedName } from "../store/lock.js";

/** How long `acquire` waits for a live holder before giving up, ms. */
export const LOCK_WAIT_MS = 10_000;

export class AuditWriterLock {
  readonly path: string;
  readonly #own: string;
  readonly #content: string;
  readonly #ownIno: number;
  #held = false;
  #disposed = false;

  private constructor(path: string, own: string, content: string, ownIno: number) {
    this.path = path;
    this.#own = own;
    this.#content = content;
    this.#ownIno = ownIno;
  }

  /** Prepares this writer's own file next to `path` (the lock is not taken). */
  static async create(path: string): Promise<AuditWriterLock> {
    await sweepDeadOwners(path);
    const tag = await uniqueOwnedName();
    const own = `${path}.${tag}.own`;
    const content = `${tag}\n`;
    await writeFile(own, content, { flag: "wx", mode: 0o600 });
    return new AuditWriterLock(path, own, content, statSync(own).ino);
  }

  get held(): boolean {
    return this.#held;
  }

  /**
   * Takes the lock, waiting (with a short, growing pause) while a live writer holds it.
   * @throws InternalError naming the holder when it keeps the lock for `waitMs`
   */
  async acquire(waitMs = LOCK_WAIT_MS): Promise<void> {
    if (this.#disposed) throw new InternalError(`Audit log lock "${this.path}" is disposed`);
    if (this.#held) return;
    const deadline = Date.now() + waitMs;
    let pauseMs = 0.25;
    for (;;) {
      try {
        linkSync(this.#own, this.path);
        this.#held = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const held = await readFile(this.path, "utf8").catch(() => undefined);
      if (held === undefined) continue; // released meanwhile
      const owner = parseOwnerTag(held.trim());
      if (owner === undefined || !(await isAlive(owner))) {
        await breakStale(this.path, held);
        continue;
      }
      if (Date.now() >= deadline) {
        throw new InternalError(`Audit log is held by another writer: pid ${owner.pid} kept lock "${this.path}" for ${waitMs} ms`, {
          hint: "Another engine on this state directory is stuck while appending; check that process",
        });
      }
      await new Promise((r) => setTimeout(r, pauseMs * (0.5 + Math.random())));
      pauseMs = Math.min(20, pauseMs * 2);
    }
  }

  /** Gives the lock back if this writer holds it (and it is still its own link). */
  release(): void {
    if (!this.#held) return;
    this.#held = false;
    try {
      if (statSync(this.path).ino === this.#ownIno) unlinkSync(this.path);
    } catch {
      // gone already: nothing to give back
    }
  }

  /** Releases the lock and removes the own file. Idempotent. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.release();
    this.#disposed = true;
    await unlink(this.#own).catch(() => undefined);
  }

  /** The owner tag this writer puts in the lock. */
  get owner(): string {
    return this.#content.trim();
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
  if (moved !== staleContent) await link(aside, path).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}

/** Removes the own files of writers that are no longer running. */
async function sweepDeadOwners(path: string): Promise<void> {
  const prefix = `${basename(path)}.`;
  let names: string[];
  try {
    names = readdirSync(dirname(path));
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith(".own")) continue;
    const owner = parseOwnerTag(name.slice(prefix.length, -".own".length));
    if (owner !== undefined && !(await isAlive(owner))) {
      const own = join(dirname(path), name);
      // A dead writer's own file may still be linked as the lock: that lock is stale too.
      try {
        if (statSync(path).ino === statSync(own).ino && readFileSync(path, "utf8").trim() === name.slice(prefix.length, -".own".length)) {
          unlinkSync(path);
        }
      } catch {
        // no lock, or not this one
      }
      await unlink(own).catch(() => undefined);
    }
  }
}
