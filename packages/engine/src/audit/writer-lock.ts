/**
 * The single-writer lock of an audit log: `<log>.lock`, a file holding `<pid>-<startTime>-<random>`
 * of its owner. It appears atomically with its content (private temp file hard-linked to the lock
 * name, which fails when the name exists). Taking it never waits: while the owner lives, a second
 * writer is refused. A lock whose owner has exited (pid gone, or reused by a process with another
 * start time) is stale: it is renamed aside, re-read, and linked back if what was moved turns out
 * to be a fresh lock taken meanwhile.
 *
 * A lock file rather than flock(2): Node has no flock binding, and the owner identity in the file
 * lets the refusal name the process that holds the log.
 */
import { link, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { AlreadyExistsError } from "@mvm/protocol";
import { isAlive, parseOwnerTag, uniqueOwnedName, type ProcessIdentity } from "../images/lock.js";

export class AuditWriterLock {
  readonly path: string;
  readonly #content: string;
  #released = false;

  private constructor(path: string, content: string) {
    this.path = path;
    this.#content = content;
  }

  /**
   * Takes the lock at `path` now.
   * @throws AlreadyExistsError naming the owner when a live process holds it.
   */
  static async take(path: string): Promise<AuditWriterLock> {
    const content = `${await uniqueOwnedName()}\n`;
    for (let attempt = 0; attempt < 8; attempt++) {
      const temp = `${path}.${await uniqueOwnedName()}.new`;
      await writeFile(temp, content, { flag: "wx", mode: 0o600 });
      try {
        await link(temp, path);
        return new AuditWriterLock(path, content);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      } finally {
        await unlink(temp).catch(() => undefined);
      }
      const held = await readFile(path, "utf8").catch(() => undefined);
      if (held === undefined) continue;
      const owner = parseOwnerTag(held.trim());
      if (owner !== undefined && (await isAlive(owner))) throw heldBy(path, owner);
      await breakStale(path, held);
    }
    throw new AlreadyExistsError(`Audit log lock "${path}" keeps changing hands`, {
      hint: "Another engine is opening the same state directory; use one engine per state directory",
    });
  }

  /** Releases the lock if this holder still owns it. Idempotent. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    const now = await readFile(this.path, "utf8").catch(() => undefined);
    if (now === this.#content) await unlink(this.path).catch(() => undefined);
  }
}

function heldBy(path: string, owner: ProcessIdentity): AlreadyExistsError {
  return new AlreadyExistsError(`Audit log is held by another writer: pid ${owner.pid} owns lock "${path}"`, {
    hint: "Only one engine may write a state directory's audit log; stop the other engine or use another state directory",
  });
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
