/**
 * Durable replay store: each plan nonce is consumed at most once, across concurrent callers,
 * across processes and across restarts.
 *
 * Layout: `<dir>/<nonce>`, one file per consumed nonce, mode 0600, holding the time in ms after
 * which the entry may be dropped (`<retainUntilMs>\n`). A nonce is consumed by creating its file
 * with O_CREAT|O_EXCL: the kernel makes that creation atomic, so of any number of callers in any
 * number of processes exactly one succeeds, with no lock file to go stale after a crash. The
 * directory is fsynced before `consume` reports success, so the entry's name (which is what makes
 * the nonce consumed) survives a crash or power loss. The entry's content is not fsynced (one fsync
 * per admission, not two): if a crash loses it, the empty or torn file still marks the nonce
 * consumed (fail closed) and `compact` drops it once its mtime is older than `maxRetentionMs`.
 *
 * Entries are bounded by time: `compact(nowMs)` removes those whose retention has passed; a plan
 * that old is refused by its validity window before its nonce is looked at.
 */
import { closeSync, constants, openSync, writeSync, type Dirent } from "node:fs";
import { mkdir, open, readdir, readFile, stat, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";

const NONCE_RE = /^[0-9a-f]{32}$/;
/** Longest content of an entry file: a decimal ms timestamp and a newline. */
const MAX_ENTRY_BYTES = 32;

export interface ReplayStoreOptions {
  /** Directory holding one file per consumed nonce; created 0700 if missing. */
  dir: string;
  /**
   * An entry whose content cannot be read is dropped by `compact` this long after its mtime. Must
   * exceed the longest validity window admitted plus the clock skew tolerance. @default 7 days
   */
  maxRetentionMs?: number;
}

export interface CompactResult {
  /** Entries removed. */
  removed: number;
  /** Entries kept. */
  kept: number;
}

/**
 * Holds the store directory open (for fsync) from the first `consume` or `compact` until `close`.
 *
 * @example
 * await using store = new ReplayStore({ dir: join(stateDir, "nonces") });
 * if (!(await store.consume(plan.nonce, plan.notAfterMs))) throw new AdmissionError("Replayed");
 */
export class ReplayStore {
  readonly dir: string;
  readonly #maxRetentionMs: number;
  #dirHandle: Promise<FileHandle> | undefined;
  #syncRequested = 0;
  #syncedUpTo = 0;
  #syncing: Promise<void> | undefined;
  #closed = false;

  constructor(options: ReplayStoreOptions) {
    this.dir = options.dir;
    this.#maxRetentionMs = options.maxRetentionMs ?? 7 * 24 * 3600 * 1000;
  }

  /** Creates the directory if missing and opens it once; a failure is not cached. */
  #openDir(): Promise<FileHandle> {
    if (this.#closed) return Promise.reject(new InvalidArgumentError(`Replay store "${this.dir}" is closed`));
    this.#dirHandle ??= (async () => {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      return open(this.dir, constants.O_RDONLY | constants.O_DIRECTORY);
    })().catch((err: unknown) => {
      this.#dirHandle = undefined;
      throw err;
    });
    return this.#dirHandle;
  }

  /** Closes the directory handle. Idempotent; the store refuses further calls. */
  async close(): Promise<void> {
    this.#closed = true;
    const pending = this.#dirHandle;
    this.#dirHandle = undefined;
    if (pending === undefined) return;
    const handle = await pending.catch(() => undefined);
    await handle?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Records `nonce` as used, keeping it at least until `retainUntilMs` (ms since the Unix epoch).
   * Resolves `true` when this call consumed it, `false` when it had been consumed before.
   * Any other failure (disk full, permissions) rejects: the caller must refuse the plan.
   */
  async consume(nonce: string, retainUntilMs: number): Promise<boolean> {
    if (!(await this.reserve(nonce, retainUntilMs))) return false;
    await this.commit();
    return true;
  }

  /**
   * The first half of `consume`: creates the nonce's entry (exclusive against every other caller,
   * in this process or another) without waiting for the disk. `true`: this call has it; `false`:
   * it was used before. The entry survives a crash only once `commit` has resolved.
   */
  async reserve(nonce: string, retainUntilMs: number): Promise<boolean> {
    if (!NONCE_RE.test(nonce)) throw new InvalidArgumentError(`Invalid nonce "${nonce.slice(0, 64)}": must be 32 lowercase hex digits`);
    if (!Number.isSafeInteger(retainUntilMs) || retainUntilMs < 0) {
      throw new InvalidArgumentError(`Invalid retainUntilMs "${retainUntilMs}": must be a non-negative integer`);
    }
    await this.#openDir();
    // Small metadata calls, done synchronously: a thread-pool hop costs more than the call.
    let fd: number;
    try {
      fd = openSync(join(this.dir, nonce), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw err;
    }
    try {
      writeSync(fd, `${retainUntilMs}\n`);
    } finally {
      closeSync(fd);
    }
    return true;
  }

  /**
   * Makes every entry reserved so far durable (one fsync of the directory; calls that arrive while
   * one runs share the next). An entry's content is not synced: an entry whose content a crash
   * lost is still a used nonce, and `compact` drops it by its age.
   */
  commit(): Promise<void> {
    const requested = ++this.#syncRequested;
    this.#syncing ??= this.#syncLoop();
    return this.#syncing.then(() => {
      if (this.#syncedUpTo < requested) return this.commit();
    });
  }

  async #syncLoop(): Promise<void> {
    try {
      while (this.#syncedUpTo < this.#syncRequested) {
        const upTo = this.#syncRequested;
        await (await this.#openDir()).sync();
        this.#syncedUpTo = upTo;
      }
    } finally {
      this.#syncing = undefined;
    }
  }

  /** Whether `nonce` has been consumed (and not yet compacted away). */
  async has(nonce: string): Promise<boolean> {
    if (!NONCE_RE.test(nonce)) return false;
    try {
      await stat(join(this.dir, nonce));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw err;
    }
  }

  /** Removes entries whose retention ended before `nowMs`. Files that are not nonce entries are left alone. */
  async compact(nowMs: number): Promise<CompactResult> {
    const dirHandle = await this.#openDir();
    let entries: Dirent[];
    try {
      entries = await readdir(this.dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { removed: 0, kept: 0 };
      throw err;
    }
    let removed = 0;
    let kept = 0;
    for (const entry of entries) {
      if (!entry.isFile() || !NONCE_RE.test(entry.name)) continue;
      const path = join(this.dir, entry.name);
      if (await this.#expired(path, nowMs)) {
        await unlink(path).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== "ENOENT") throw err;
        });
        removed++;
      } else {
        kept++;
      }
    }
    if (removed > 0) await dirHandle.sync();
    return { removed, kept };
  }

  async #expired(path: string, nowMs: number): Promise<boolean> {
    const text = await readFile(path, { encoding: "utf8", flag: constants.O_RDONLY | constants.O_NOFOLLOW }).catch(() => "");
    const match = text.length <= MAX_ENTRY_BYTES ? /^(\d{1,16})\n$/.exec(text) : null;
    if (match !== null) return Number(match[1]) < nowMs;
    const info = await stat(path).catch(() => undefined);
    return info !== undefined && info.mtimeMs + this.#maxRetentionMs < nowMs;
  }
}
