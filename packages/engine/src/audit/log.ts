/**
 * The append-only audit log of a state directory.
 *
 * Format of `<dir>/audit.log` (UTF-8, one entry per line, each line ending in "\n"):
 *
 *   {"event":{...},"hash":"<64 hex>","prev":"<64 hex>","seq":1,"sig":"<88 base64>","ts":"…Z","v":1}\n
 *   {"event":{...},"hash":"…","prev":"sha256(line 1 without \n)","seq":2,"sig":"…","ts":"…","v":1}\n
 *
 * - every line is `canonicalJson(entry)` (keys sorted, no whitespace) and at most 8192 bytes;
 * - `seq` starts at 1 and grows by one per line;
 * - `prev` is the sha256 hex of the previous line's bytes (without its newline), 64 zeros on line 1;
 * - `hash` = sha256 hex of canonicalJson({ v, seq, ts, prev, event });
 * - `sig` = base64 of Ed25519(private host key, the 32 bytes of `hash`).
 * Nothing is ever rewritten: entries are only appended. Entry schema: entry.ts.
 *
 * Durability: `append` resolves after the line is written and fdatasync'ed. Appends that arrive
 * while a sync is in flight form the next batch (group commit): one write and one sync per batch.
 * An append with `{ wait: "written" }` (what an exec's `exec.finished` uses) resolves once its
 * line is in the file, so it survives a crash of the engine; its fdatasync is pipelined: the next
 * batch's sync covers it, and a timer syncs it at most PIPELINED_SYNC_MS later when no other
 * append comes. Entries keep their order either way: an entry is durable only once every entry
 * before it is.
 * One writer at a time, several writers per log: each batch is written under the writer lock
 * `<dir>/audit.log.lock` (writer-lock.ts), so engines sharing a state directory take turns. A
 * writer that finds the file changed since its own last write re-reads the tail and continues
 * the chain from there; seq, prev, hash and signature are fixed only then. The last line is
 * checked (newline, JSON, schema, hash, signature with this key) on open and whenever another
 * writer moved the tail; a bad or torn tail is reported as AuditLogCorruptError with its byte
 * offset and never extended or cut silently.
 * `AuditLog.repairTornTail` is the operator's explicit way out: it moves the bad bytes to a side
 * file and cuts the log back to its last good line.
 */
import { createHash } from "node:crypto";
import { fstatSync, writeSync } from "node:fs";
import { mkdir, open, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ErrorCode, InternalError, InvalidArgumentError, MvmError, canonicalJson, type MvmErrorOptions } from "@mvm/protocol";
import { AuditEventSchema, GENESIS_PREV, MAX_ENTRY_BYTES, entryLine, signEntry, signatureValid, type AuditEvent } from "./entry.js";
import { loadOrCreateHostKey, type HostKey } from "./keys.js";
import { checkLine, sigCanonical } from "./line.js";
import { AuditWriterLock } from "./writer-lock.js";

export const AUDIT_FILE = "audit.log";

/** The audit directory of a state directory: `<stateDir>/audit`. */
export function auditDir(stateDir: string): string {
  return join(stateDir, "audit");
}

/** The audit file of a state directory: `<stateDir>/audit/audit.log`. */
export function auditFilePath(stateDir: string): string {
  return join(auditDir(stateDir), AUDIT_FILE);
}

/**
 * Opens the audit log of a state directory with the host key (created on first use): what an
 * engine calls at start.
 */
export async function openStateAuditLog(stateDir: string, options: Omit<AuditLogOptions, "key"> = {}): Promise<AuditLog> {
  const key = await loadOrCreateHostKey(stateDir);
  return AuditLog.open(auditDir(stateDir), { ...options, key });
}

/** What an acknowledged append returns: the receipt's audit part. */
export interface AuditReceipt {
  /** `aud_<seq>_<first 16 hex of hash>`. */
  readonly id: string;
  readonly seq: number;
  readonly hash: string;
}

export interface AuditLogOptions {
  key: Pick<HostKey, "privateKey" | "publicKey">;
  /** Clock for entry timestamps. @default () => new Date() */
  now?: () => Date;
}

/**
 * Longest time, ms, between the write of an entry appended with `{ wait: "written" }` and its
 * fdatasync, when no other append comes first.
 */
export const PIPELINED_SYNC_MS = 5;

/** How long an append waits. */
export interface AppendOptions {
  /**
   * `"durable"`: until the entry is written and fdatasync'ed. `"written"`: until it is written
   * (seq, hash and signature fixed, the line in the file, where a crash of this process cannot
   * lose it); its fdatasync follows with the next batch, at most PIPELINED_SYNC_MS later.
   * @default "durable"
   */
  wait?: "durable" | "written";
}

/** Group-commit figures since open. */
export interface AuditLogStats {
  readonly entries: number;
  readonly batches: number;
  readonly maxBatch: number;
  /** fdatasync calls made. */
  readonly syncs: number;
  /** The last seq this writer knows is durable (0 before the first sync). */
  readonly durableSeq: number;
}

/** The log's tail is torn or fails its checks; `offset` is where the bad bytes start. Code INTERNAL. */
export class AuditLogCorruptError extends MvmError {
  override readonly name = "AuditLogCorruptError";
  readonly code = ErrorCode.Internal;
  readonly path: string;
  readonly offset: number;
  constructor(message: string, path: string, offset: number, options: MvmErrorOptions = {}) {
    super(message, options);
    this.path = path;
    this.offset = offset;
  }
}

interface Pending {
  event: AuditEvent;
  /** Resolve only after the batch's fdatasync. */
  durable: boolean;
  resolve(receipt: AuditReceipt): void;
  reject(err: unknown): void;
}

interface TailState {
  nextSeq: number;
  prev: string;
  size: number;
}

/** Bytes an entry adds around its event's JSON (keys, hash, prev, seq, sig, ts, v), rounded up. */
const ENTRY_OVERHEAD_BYTES = 340;

export class AuditLog {
  readonly path: string;
  readonly #dir: string;
  readonly #fh: FileHandle;
  readonly #lock: AuditWriterLock;
  readonly #key: AuditLogOptions["key"];
  readonly #now: () => Date;
  /** Where the chain continues, as of this writer's last read or write of the file. */
  #tail: TailState;
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #failed: unknown;
  #closed = false;
  #stats = { entries: 0, batches: 0, maxBatch: 0, syncs: 0, durableSeq: 0 };
  /** Entries this writer wrote whose fdatasync has not happened yet: the last one's seq, or 0. */
  #unsyncedSeq = 0;
  /** Set when the pipelined-sync timer fired: the flush loop syncs even with no entry queued. */
  #syncWanted = false;
  #syncTimer: NodeJS.Timeout | undefined;

  private constructor(path: string, fh: FileHandle, lock: AuditWriterLock, options: AuditLogOptions, tail: TailState) {
    this.path = path;
    this.#dir = dirname(path);
    this.#fh = fh;
    this.#lock = lock;
    this.#key = options.key;
    this.#now = options.now ?? (() => new Date());
    this.#tail = tail;
  }

  /**
   * Opens (creating when absent) the log in `dir` for writing. Other writers (engines on the same
   * state directory) may have it open too: each batch of appends takes the writer lock.
   * @throws AuditLogCorruptError when the last line is torn or fails its checks.
   */
  static async open(dir: string, options: AuditLogOptions): Promise<AuditLog> {
    await mkdirPrivate(dir);
    const path = join(dir, AUDIT_FILE);
    const lock = await AuditWriterLock.create(`${path}.lock`);
    let fh: FileHandle | undefined;
    try {
      fh = await open(path, "a+", 0o600);
      await lock.acquire();
      let tail: TailState;
      try {
        tail = await readTail(fh, path, options.key);
        if (tail.size === 0) await syncDir(dir);
      } finally {
        lock.release();
      }
      return new AuditLog(path, fh, lock, options, tail);
    } catch (err) {
      await fh?.close().catch(() => undefined);
      await lock.dispose();
      throw err;
    }
  }

  /**
   * Moves a torn or bad last line of the log in `dir` to `audit.log.torn-<offset>-<ms>` and cuts
   * the log back to its last good line. Takes the writer lock for the duration.
   * @returns the side file and the number of bytes moved, or undefined when the tail was sound.
   */
  static async repairTornTail(dir: string, options: Pick<AuditLogOptions, "key">): Promise<{ sidePath: string; movedBytes: number } | undefined> {
    const path = join(dir, AUDIT_FILE);
    const lock = await AuditWriterLock.create(`${path}.lock`);
    try {
      await lock.acquire();
      const fh = await open(path, "r+");
      try {
        let offset: number;
        try {
          await readTail(fh, path, options.key);
          return undefined;
        } catch (err) {
          if (!(err instanceof AuditLogCorruptError)) throw err;
          offset = err.offset;
        }
        const { size } = await fh.stat();
        const torn = Buffer.alloc(size - offset);
        await fh.read(torn, 0, torn.length, offset);
        const sidePath = `${path}.torn-${offset}-${Date.now()}`;
        const side = await open(sidePath, "wx", 0o600);
        try {
          await side.writeFile(torn);
          await side.sync();
        } finally {
          await side.close();
        }
        await fh.truncate(offset);
        await fh.sync();
        await syncDir(dir);
        return { sidePath, movedBytes: torn.length };
      } finally {
        await fh.close();
      }
    } finally {
      await lock.dispose();
    }
  }

  /** The seq the next append would get, as far as this writer knows (another writer may append first). */
  get nextSeq(): number {
    return this.#tail.nextSeq;
  }

  stats(): AuditLogStats {
    return { ...this.#stats };
  }

  /**
   * Appends one event. Resolves once the entry is on disk (written and fdatasync'ed); its seq,
   * hash and signature are fixed when its batch is written, under the writer lock.
   * @throws InvalidArgumentError when the event does not match its schema or is too large.
   * @throws AuditLogCorruptError when the log's tail (written by another writer) is torn or bad.
   * @throws InternalError when the log is closed or an earlier write failed (the log then takes
   *   no more entries: its on-disk state is unknown until it is opened again).
   */
  append(event: AuditEvent, options: AppendOptions = {}): Promise<AuditReceipt> {
    if (this.#closed) return Promise.reject(new InternalError(`Audit log "${this.path}" is closed`));
    if (this.#failed !== undefined) {
      return Promise.reject(new InternalError(`Audit log "${this.path}" failed an earlier write and takes no more entries`, { cause: this.#failed }));
    }
    const parsed = AuditEventSchema.safeParse(event);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return Promise.reject(
        new InvalidArgumentError(`Invalid audit event "${String((event as { type?: unknown }).type)}": ${issue?.path.join(".") ?? ""} ${issue?.message ?? ""}`.trim(), {
          cause: parsed.error,
        }),
      );
    }
    const eventBytes = canonicalJson(parsed.data).length;
    if (eventBytes + ENTRY_OVERHEAD_BYTES > MAX_ENTRY_BYTES) {
      return Promise.reject(new InvalidArgumentError(`Audit event "${parsed.data.type}" is ${eventBytes} bytes: an entry holds at most ${MAX_ENTRY_BYTES - ENTRY_OVERHEAD_BYTES}`));
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ event: parsed.data, durable: options.wait !== "written", resolve, reject });
      this.#flushing ??= this.#flushLoop();
    });
  }

  /** Resolves once every entry appended before the call is durable (fdatasync'ed). */
  async sync(): Promise<void> {
    for (;;) {
      if (this.#flushing !== undefined) {
        await this.#flushing;
        continue;
      }
      if (this.#failed !== undefined) throw new InternalError(`Audit log "${this.path}" failed an earlier write or sync`, { cause: this.#failed });
      if (this.#queue.length === 0 && this.#unsyncedSeq === 0) return;
      this.#syncWanted = true;
      this.#flushing = this.#flushLoop();
    }
  }

  async #flushLoop(): Promise<void> {
    // Let appends made in the same tick join the first batch.
    await Promise.resolve();
    while (this.#queue.length > 0 || this.#syncWanted) {
      const batch = this.#queue;
      this.#queue = [];
      const mustSync = this.#syncWanted || batch.some((p) => p.durable);
      this.#syncWanted = false;
      if (batch.length === 0) {
        await this.#syncWritten().catch(() => undefined);
        continue;
      }
      let receipts: AuditReceipt[];
      try {
        receipts = await this.#writeBatch(batch, mustSync);
      } catch (err) {
        for (const p of batch) p.reject(err);
        continue;
      }
      this.#stats.entries += batch.length;
      this.#stats.batches++;
      this.#stats.maxBatch = Math.max(this.#stats.maxBatch, batch.length);
      batch.forEach((p, i) => p.resolve(receipts[i]!));
      if (this.#unsyncedSeq > 0) this.#armSyncTimer();
    }
    this.#flushing = undefined;
  }

  /** Syncs what this writer wrote without a sync, PIPELINED_SYNC_MS from now unless a batch's sync comes first. */
  #armSyncTimer(): void {
    this.#syncTimer ??= setTimeout(() => {
      this.#syncTimer = undefined;
      if (this.#unsyncedSeq === 0) return;
      this.#syncWanted = true;
      this.#flushing ??= this.#flushLoop();
    }, PIPELINED_SYNC_MS);
  }

  /** fdatasync of entries written earlier; a failure fails the log (it takes no more entries). */
  async #syncWritten(): Promise<void> {
    const seq = this.#unsyncedSeq;
    if (seq === 0 || this.#failed !== undefined) return;
    try {
      await this.#fh.datasync();
    } catch (cause) {
      this.#failed ??= cause;
      throw new InternalError(`Cannot sync audit log "${this.path}"`, { cause });
    }
    this.#synced(seq);
  }

  /** Entries up to `seq` are durable. */
  #synced(seq: number): void {
    this.#stats.syncs++;
    this.#stats.durableSeq = Math.max(this.#stats.durableSeq, seq);
    if (this.#unsyncedSeq <= seq) {
      this.#unsyncedSeq = 0;
      clearTimeout(this.#syncTimer);
      this.#syncTimer = undefined;
    }
  }

  /**
   * Under the writer lock: catch up with other writers, sign the batch onto the chain, write, and
   * (when `sync`) fdatasync, which also covers every entry written before without one.
   */
  async #writeBatch(batch: readonly Pending[], sync: boolean): Promise<AuditReceipt[]> {
    if (this.#failed !== undefined) throw new InternalError(`Audit log "${this.path}" failed an earlier write and takes no more entries`, { cause: this.#failed });
    await this.#lock.acquire();
    try {
      const size = fstatSync(this.#fh.fd).size;
      // Another writer appended (or the operator repaired the tail): continue from the file's end.
      if (size !== this.#tail.size) this.#tail = await readTail(this.#fh, this.path, this.#key);
      let { nextSeq, prev } = this.#tail;
      const ts = this.#now().toISOString();
      const lines: Buffer[] = [];
      const receipts: AuditReceipt[] = [];
      for (const p of batch) {
        const entry = signEntry({ v: 1, seq: nextSeq, ts, prev, event: p.event }, this.#key.privateKey);
        const text = entryLine(entry);
        lines.push(Buffer.from(`${text}\n`, "utf8"));
        receipts.push({ id: `aud_${entry.seq}_${entry.hash.slice(0, 16)}`, seq: entry.seq, hash: entry.hash });
        prev = createHash("sha256").update(text).digest("hex");
        nextSeq++;
      }
      const data = lines.length === 1 ? lines[0]! : Buffer.concat(lines);
      try {
        let written = 0;
        // The page-cache write is synchronous (cheaper than a thread-pool hop); the flush is not.
        while (written < data.length) written += writeSync(this.#fh.fd, data, written, data.length - written);
        this.#tail = { nextSeq, prev, size: size + data.length };
        if (sync) await this.#fh.datasync();
      } catch (cause) {
        this.#failed ??= cause;
        throw new InternalError(`Cannot append to audit log "${this.path}": write or sync failed`, { cause });
      }
      if (sync) this.#synced(nextSeq - 1);
      else this.#unsyncedSeq = nextSeq - 1;
      return receipts;
    } finally {
      this.#lock.release();
    }
  }

  /** Waits for appends in flight, syncs what is not yet durable, closes the file and removes this writer's lock file. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.sync().catch(() => undefined);
    clearTimeout(this.#syncTimer);
    this.#syncTimer = undefined;
    try {
      await this.#fh.close();
    } finally {
      await this.#lock.dispose();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Reads and checks the last line; returns where the chain continues. */
async function readTail(fh: FileHandle, path: string, key: AuditLogOptions["key"]): Promise<TailState> {
  const { size } = await fh.stat();
  if (size === 0) return { nextSeq: 1, prev: GENESIS_PREV, size };
  const window = Math.min(size, MAX_ENTRY_BYTES + 2);
  const buf = Buffer.alloc(window);
  await fh.read(buf, 0, window, size - window);
  const corrupt = (offset: number, why: string, cause?: unknown): AuditLogCorruptError =>
    new AuditLogCorruptError(`Audit log "${path}" has a bad last entry at byte ${offset}: ${why}`, path, offset, {
      ...(cause === undefined ? {} : { cause }),
      hint: "Run `mvmctl audit verify` to check the whole chain; AuditLog.repairTornTail moves the bad bytes to a side file",
    });
  if (buf[window - 1] !== 0x0a) {
    const nl = buf.lastIndexOf(0x0a);
    const offset = nl >= 0 ? size - window + nl + 1 : await lineStartBefore(fh, size - window);
    return Promise.reject(corrupt(offset, `${size - offset} bytes without a final newline (torn write)`));
  }
  const nl = buf.lastIndexOf(0x0a, window - 2);
  if (nl < 0 && window < size) return Promise.reject(corrupt(await lineStartBefore(fh, size - window), "last line is too long"));
  const start = nl + 1;
  const offset = size - window + start;
  const checked = checkLine(buf.subarray(start, window - 1));
  if (!checked.ok) throw corrupt(offset, checked.detail);
  if (!sigCanonical(checked.entry.sig) || !signatureValid(checked.entry, key.publicKey)) {
    throw corrupt(offset, `entry ${checked.entry.seq} is not signed by this host's key`);
  }
  const prev = createHash("sha256").update(buf.subarray(start, window - 1)).digest("hex");
  return { nextSeq: checked.entry.seq + 1, prev, size };
}

/** Offset just after the last newline before `end`, or 0: scans backwards in 64 KiB steps. */
async function lineStartBefore(fh: FileHandle, end: number): Promise<number> {
  const step = 64 * 1024;
  const buf = Buffer.alloc(step);
  while (end > 0) {
    const from = Math.max(0, end - step);
    const { bytesRead } = await fh.read(buf, 0, end - from, from);
    const nl = buf.subarray(0, bytesRead).lastIndexOf(0x0a);
    if (nl >= 0) return from + nl + 1;
    end = from;
  }
  return 0;
}

/** Creates `dir` with mode 0700; parents it creates get the default mode. */
async function mkdirPrivate(dir: string): Promise<void> {
  await mkdir(dirname(dir), { recursive: true });
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
