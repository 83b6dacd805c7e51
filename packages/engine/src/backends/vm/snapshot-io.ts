/**
 * Saving a QEMU VM's state to a file and restoring it, over QMP, with QEMU's migration.
 *
 * Save: the VM is stopped, QEMU migrates to `unix:<socket>` in a private directory (which a
 * jailed QEMU must be able to reach: see `socketParentDir`), and the engine writes what arrives to the state file (size-capped, written to a temporary name and
 * renamed when QEMU reports completion). QEMU 7.2's `fd:` migration URI only takes a descriptor
 * registered with `getfd` (passed over the monitor socket with SCM_RIGHTS, which Node cannot
 * send), and 7.2 has no `file:` URI; `exec:` is closed by `-sandbox spawn=deny`.
 *
 * Restore: QEMU starts with `-incoming defer` and the state file open read-only on an inherited
 * descriptor; `restoreVmState` sets the same capabilities as the save, starts
 * `migrate-incoming fd:<n>` (numeric descriptors work for incoming migration), waits for the
 * MIGRATION event, and resumes the VM. `waitIncomingDone` covers QEMU started with
 * `-incoming fd:<n>` instead.
 *
 * With `ignoreShared`, guest RAM that lives in a shared memory backend
 * (`memory-backend-file,share=on`) is left out of the stream: the RAM file itself is the memory
 * image. The vm backend copies it while the VM is still stopped, and restores onto a copy of its
 * own mapped the same way (ram-file.ts, vm-snapshot.ts).
 */
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { chown, mkdtemp, open, rename, rm } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { AbortedError, InternalError, InvalidArgumentError, type MvmError, type Sha256Digest, SnapshotMismatchError, TimeoutError, TransportError } from "@mvm/protocol";
import { z } from "zod";
import type { QmpClient, QmpEvent } from "./qmp.js";

/** Extra room in the state stream above guest RAM for device state, bytes. */
const DEVICE_STATE_SLACK_BYTES = 64 * 1024 * 1024;

const statusSchema = z.object({ status: z.string().max(64), running: z.boolean() });
const memorySchema = z.object({ "base-memory": z.int().nonnegative() });
const migrateInfoSchema = z.object({
  status: z.string().max(64).optional(),
  "total-time": z.int().nonnegative().optional(),
  "error-desc": z.string().max(64 * 1024).optional(),
});
const migrationEventSchema = z.object({ status: z.string().max(64) });

/** Final states of a migration as the MIGRATION event reports them. */
const FINAL_STATES = new Set(["completed", "failed", "cancelled"]);

export interface SaveVmStateOptions {
  /** The state file (replaced if present). Written and fsync'd as `.<name>.<random>.tmp` beside it, then renamed. */
  readonly path: string;
  /** Deadline for the whole save (stop, migration, file written), ms. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /**
   * Leave RAM in shared memory backends out of the stream (QEMU capability `x-ignore-shared`).
   * Set it when guest RAM is `memory-backend-file,share=on`; the RAM file is then part of the
   * snapshot. @default false
   */
  readonly ignoreShared?: boolean;
  /** Largest state stream accepted, bytes. @default guest RAM + 64 MiB */
  readonly maxBytes?: number;
  /**
   * Directory in which the private (0700) directory for the migration socket is made.
   * @default os.tmpdir()
   */
  readonly socketParentDir?: string;
  /**
   * The same directory as QEMU sees it, when QEMU runs in its own mount namespace with
   * `socketParentDir` bound elsewhere. @default socketParentDir
   */
  readonly qemuSocketParentDir?: string;
  /** Owner given to the socket directory and socket, for a QEMU that runs as another uid. */
  readonly socketOwner?: { readonly uid: number; readonly gid: number };
  /** Bytes written before the stream (counted in `bytes` and `digest`, not in `maxBytes`). */
  readonly header?: Uint8Array;
}

export interface SavedVmState {
  /** Size of the state file, bytes. */
  readonly bytes: number;
  /** sha256 of the stream as it was written to the state file. */
  readonly digest: Sha256Digest;
  /** QEMU's own figure for the migration, ms, when it reports one. */
  readonly totalTimeMs?: number;
}

export interface RestoreVmStateOptions {
  /** The descriptor number, in QEMU, of the state file opened read-only. */
  readonly fdNumber: number;
  /** Deadline for loading the state and resuming, ms. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Must match the save's `ignoreShared`. @default false */
  readonly ignoreShared?: boolean;
  /** Send `cont` when the restored VM is paused. @default true */
  readonly resume?: boolean;
}

function deadline(timeoutMs: number, signal: AbortSignal | undefined): AbortSignal {
  const timer = AbortSignal.timeout(timeoutMs);
  return signal === undefined ? timer : AbortSignal.any([timer, signal]);
}

function abortReason(signal: AbortSignal, what: string): MvmError {
  const reason: unknown = signal.reason;
  if (reason instanceof DOMException && reason.name === "TimeoutError") return new TimeoutError(`${what} timed out`, { cause: reason });
  return new AbortedError(`${what} was aborted`, { cause: reason });
}

/** Runs a QMP command bounded by what is left of `signal` and validates its reply. */
async function call<T>(qmp: QmpClient, signal: AbortSignal, schema: z.ZodType<T>, command: string, args?: Record<string, unknown>): Promise<T> {
  const value = await qmp.execute(command, args, { timeoutMs: 2 ** 31 - 1, signal });
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new TransportError(`QMP command "${command}" returned an unexpected shape`, { cause: parsed.error });
  return parsed.data;
}

function capabilities(ignoreShared: boolean): { capability: string; state: boolean }[] {
  return [
    { capability: "events", state: true },
    { capability: "x-ignore-shared", state: ignoreShared },
  ];
}

/** Waits for the MIGRATION event that ends the migration and returns its status. */
function migrationEnd(qmp: QmpClient, signal: AbortSignal): Promise<string> {
  const isFinal = (event: QmpEvent) => {
    const parsed = migrationEventSchema.safeParse(event.data);
    return parsed.success && FINAL_STATES.has(parsed.data.status);
  };
  return qmp
    .waitForEvent("MIGRATION", { timeoutMs: 2 ** 31 - 1, signal, predicate: isFinal })
    .then((event) => migrationEventSchema.parse(event.data).status);
}

/**
 * A one-connection unix socket server in a fresh 0700 directory (owned by `owner` when given).
 * `path` is the socket's path as seen from `qemuParentDir`.
 */
async function listenOnce(parentDir: string, qemuParentDir: string, owner: SaveVmStateOptions["socketOwner"]): Promise<{ path: string; connection: Promise<Socket>; dispose: () => Promise<void> }> {
  const dir = await mkdtemp(join(parentDir, "mvm-migrate-"));
  const hostPath = join(dir, "s");
  const path = join(qemuParentDir, basename(dir), "s");
  const server = createServer();
  const dispose = async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const connection = new Promise<Socket>((resolve) => {
      server.once("connection", (socket) => {
        server.close();
        resolve(socket);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(hostPath, () => resolve());
    });
    if (owner !== undefined) {
      await chown(hostPath, owner.uid, owner.gid);
      await chown(dir, owner.uid, owner.gid);
    }
    return { path, connection, dispose };
  } catch (err) {
    await dispose();
    throw err;
  }
}

/** Counts and hashes the bytes through, and fails once more than `maxBytes` have passed. */
function byteCap(maxBytes: number, counted: { bytes: number; readonly hash: ReturnType<typeof createHash> }): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      counted.bytes += chunk.length;
      if (counted.bytes > maxBytes) {
        callback(new TransportError(`VM state stream exceeds ${maxBytes} bytes`));
      } else {
        counted.hash.update(chunk);
        callback(null, chunk);
      }
    },
  });
}

/**
 * Stops the VM (when running) and saves its state to `options.path`, returning its size and the
 * sha256 of the bytes written (hashed as they pass, not read back). The VM stays stopped
 * (QEMU's state `postmigrate`); with `ignoreShared` the RAM file is part of the snapshot, so the
 * caller copies it before it resumes the VM (`cont`) or ends it. Throws InternalError with QEMU's reason
 * when the migration fails, TransportError when the stream exceeds `maxBytes` or QMP breaks,
 * TimeoutError / AbortedError; no file is left behind on failure.
 * @example
 * const { bytes } = await saveVmState(qmp, { path: "/var/lib/mvm/snap/vm.state", timeoutMs: 60_000 });
 */
export async function saveVmState(qmp: QmpClient, options: SaveVmStateOptions): Promise<SavedVmState> {
  if (!options.path.startsWith("/")) throw new InvalidArgumentError(`Invalid state path "${options.path}": must be absolute`);
  const signal = deadline(options.timeoutMs, options.signal);
  const what = `Saving the VM state to "${options.path}"`;
  const status = await call(qmp, signal, statusSchema, "query-status");
  if (status.running) await call(qmp, signal, z.unknown(), "stop");
  const memory = await call(qmp, signal, memorySchema, "query-memory-size-summary");
  const maxBytes = options.maxBytes ?? memory["base-memory"] + DEVICE_STATE_SLACK_BYTES;
  await call(qmp, signal, z.unknown(), "migrate-set-capabilities", { capabilities: capabilities(options.ignoreShared ?? false) });

  const tmpPath = join(dirname(options.path), `.${basename(options.path)}.${randomBytes(6).toString("hex")}.tmp`);
  const file = await open(tmpPath, "wx", 0o600);
  const counted = { bytes: 0, hash: createHash("sha256") };
  if (options.header !== undefined && options.header.length > 0) {
    await file.write(options.header).catch(async (err: unknown) => {
      await file.close();
      await rm(tmpPath, { force: true });
      throw err;
    });
    counted.hash.update(options.header);
  }
  const headerBytes = options.header?.length ?? 0;
  // The stream owns the handle and closes it when it finishes or is destroyed.
  const out = file.createWriteStream();
  const closeOut = async () => {
    if (!out.closed) {
      const closed = once(out, "close");
      out.destroy();
      await closed;
    }
  };
  const parentDir = options.socketParentDir ?? tmpdir();
  const listener = await listenOnce(parentDir, options.qemuSocketParentDir ?? parentDir, options.socketOwner).catch(async (err: unknown) => {
    await closeOut();
    await rm(tmpPath, { force: true });
    throw new InternalError(`${what}: cannot listen for the migration stream`, { cause: err });
  });
  let renamed = false;
  let migrating = false;
  try {
    const ended = migrationEnd(qmp, signal);
    ended.catch(() => undefined);
    migrating = true;
    await call(qmp, signal, z.unknown(), "migrate", { uri: `unix:${listener.path}` });
    const copy = listener.connection.then((socket) =>
      pipeline(socket, byteCap(maxBytes, counted), out, { signal }),
    );
    copy.catch(() => undefined);
    // A stream over the cap fails the copy first: report that rather than the migration's failure.
    const final = await Promise.race([ended, copy.then(() => ended)]);
    if (final !== "completed") {
      const info = await call(qmp, signal, migrateInfoSchema, "query-migrate").catch(() => undefined);
      const desc = info?.["error-desc"];
      throw new InternalError(`${what} failed: migration ${final}${desc !== undefined ? `: ${JSON.stringify(desc)}` : ""}`);
    }
    await copy;
    const info = await call(qmp, signal, migrateInfoSchema, "query-migrate");
    await closeOut();
    const written = await open(tmpPath, "r");
    await written.sync().finally(() => written.close());
    await rename(tmpPath, options.path);
    renamed = true;
    const digest = `sha256:${counted.hash.digest("hex")}` as Sha256Digest;
    return { bytes: headerBytes + counted.bytes, digest, ...(info["total-time"] !== undefined ? { totalTimeMs: info["total-time"] } : {}) };
  } catch (err) {
    if (signal.aborted && !(err instanceof InternalError)) throw abortReason(signal, what);
    if (err instanceof TransportError || err instanceof InternalError || err instanceof TimeoutError || err instanceof AbortedError) throw err;
    throw new InternalError(`${what} failed`, { cause: err });
  } finally {
    if (migrating && !renamed) await qmp.execute("migrate_cancel", undefined, { timeoutMs: 5_000 }).catch(() => undefined);
    await listener.dispose();
    await closeOut();
    if (!renamed) await rm(tmpPath, { force: true });
  }
}

/** Fails with SnapshotMismatchError unless the restored VM reached a state it can run from. */
async function resumeRestored(qmp: QmpClient, signal: AbortSignal, resume: boolean, what: string): Promise<void> {
  const status = await call(qmp, signal, statusSchema, "query-status");
  if (status.status === "paused") {
    if (resume) await call(qmp, signal, z.unknown(), "cont");
    return;
  }
  if (status.status !== "running") throw new SnapshotMismatchError(`${what}: VM is in state "${status.status}" after loading`);
}

function restoreError(err: unknown, signal: AbortSignal, what: string): MvmError {
  if (signal.aborted) return abortReason(signal, what);
  // QEMU exits when an incoming migration fails, which closes QMP.
  if (err instanceof TransportError) return new SnapshotMismatchError(`${what} failed: the QMP connection broke while loading (QEMU exits when a state does not load)`, { cause: err });
  if (err instanceof SnapshotMismatchError || err instanceof InternalError) return err;
  return new InternalError(`${what} failed`, { cause: err });
}

/**
 * Loads the state on a QEMU started with `-incoming defer` whose descriptor `fdNumber` is the
 * state file opened read-only, then resumes the VM (unless `resume` is false). Throws
 * SnapshotMismatchError when QEMU cannot load the state (QEMU then exits), TimeoutError /
 * AbortedError, TransportError when QMP breaks otherwise.
 * @example
 * // spawn(qemu, [...args, "-incoming", "defer"], { stdio: [..., stateFd] })  → fd 5
 * await restoreVmState(qmp, { fdNumber: 5, timeoutMs: 30_000 });
 */
export async function restoreVmState(qmp: QmpClient, options: RestoreVmStateOptions): Promise<void> {
  if (!Number.isInteger(options.fdNumber) || options.fdNumber < 3 || options.fdNumber > 1023) {
    throw new InvalidArgumentError(`Invalid fdNumber "${options.fdNumber}": must be an integer from 3 to 1023`);
  }
  const signal = deadline(options.timeoutMs, options.signal);
  const what = `Restoring the VM state from fd ${options.fdNumber}`;
  try {
    await call(qmp, signal, z.unknown(), "migrate-set-capabilities", { capabilities: capabilities(options.ignoreShared ?? false) });
    const ended = migrationEnd(qmp, signal);
    ended.catch(() => undefined);
    await call(qmp, signal, z.unknown(), "migrate-incoming", { uri: `fd:${options.fdNumber}` });
    const final = await ended;
    if (final !== "completed") throw new SnapshotMismatchError(`${what} failed: migration ${final}`);
    await resumeRestored(qmp, signal, options.resume ?? true, what);
  } catch (err) {
    throw restoreError(err, signal, what);
  }
}

/** Poll intervals while QEMU started with `-incoming fd:<n>` loads, ms. */
const INCOMING_POLL_MS = [2, 5, 10, 20, 50] as const;

/**
 * Waits until a QEMU started with `-incoming fd:<n>` has loaded its state (its status leaves
 * "inmigrate"), then resumes it when paused (unless `resume` is false). QEMU sends no MIGRATION
 * events for a migration that began before QMP could enable them, so this polls `query-status`.
 * Throws like `restoreVmState`.
 */
export async function waitIncomingDone(qmp: QmpClient, options: { readonly timeoutMs: number; readonly signal?: AbortSignal; readonly resume?: boolean }): Promise<void> {
  const signal = deadline(options.timeoutMs, options.signal);
  const what = "Restoring the VM state";
  try {
    for (let attempt = 0; ; attempt++) {
      const status = await call(qmp, signal, statusSchema, "query-status");
      if (status.status !== "inmigrate") break;
      const delayMs = INCOMING_POLL_MS[Math.min(attempt, INCOMING_POLL_MS.length - 1)];
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        }, delayMs);
        const onAbort = () => {
          clearTimeout(timer);
          reject(abortReason(signal, what));
        };
        signal.addEventListener("abort", onAbort, { once: true });
      });
    }
    await resumeRestored(qmp, signal, options.resume ?? true, what);
  } catch (err) {
    throw restoreError(err, signal, what);
  }
}
