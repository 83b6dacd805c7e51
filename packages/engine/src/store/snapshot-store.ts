/**
 * The snapshot registry: snapshots (user snapshots and the engine's boot snapshots) kept as signed
 * records over signed manifests whose blobs live in the chunk store, and materialized on demand
 * into verified read-only templates a backend restores from.
 *
 * ```
 * <root>/                       0700
 * ├── chunks/                   the ChunkStore (chunks.ts): blake3/<2 hex>/<64 hex>, tmp/
 * ├── records/<snap_id>   0600  one signed record per snapshot (snapshot-record.ts), written last
 * ├── templates/<hex>/    0700  materialized parts of the snapshot whose digest is sha256:<hex>
 * │   ├── ram|device|work|tmp 0400  (templates.ts), and .identity: their signed file identities
 * ├── busy/<owner>.<what>       a create or template build in progress (chunk removal waits)
 * ├── holds/<owner>.<hex>       a process using template <hex> (sweep leaves it alone)
 * ├── locks/                    the store lock and one lock per template
 * └── tmp/<owner>…              records being written, templates being built or removed
 * ```
 *
 * `<owner>` is `<pid>-<start time>-<random>` (lock.ts): entries whose process is gone are stale
 * and a sweep removes them, so a process killed at any point leaves nothing behind for good.
 *
 * Concurrency: record changes (touch, delete, expiry) and chunk removal run under the store lock.
 * A create registers a busy marker under that lock before it stores its first chunk and removes it
 * after its record is in place; chunk removal does not run while any live process has a busy
 * marker, so a chunk a create has written (or found already present) is never removed before the
 * record naming it exists. Template builds and removals of one digest serialize on its lock.
 */
import { randomBytes, type KeyObject } from "node:crypto";
import { constants as fsc } from "node:fs";
import { chmod, mkdir, open, readdir, rm, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, NotFoundError, SnapshotMismatchError, type SnapshotInfo, type Sha256Digest } from "@mvm/protocol";
import { fsyncDir, writeFileAtomic } from "./atomic.js";
import { blobCounts, chunkLength, storeFile, verifyBlob, type BlobRef } from "./blobs.js";
import { ChunkStore } from "./chunks.js";
import { FileLock, isAlive, parseOwnerTag, uniqueOwnedName } from "./lock.js";
import { decodeSignedManifest, encodeSignedManifest, manifestDigest, MANIFEST_VERSION, type SnapshotManifest, type SnapshotShape } from "./manifest.js";
import { decodeRecord, encodeRecord, MAX_RECORD_BYTES, SnapshotRecordSchema, type SnapshotRecord, type StoredRetention } from "./snapshot-record.js";
import { TemplateCache } from "./template-cache.js";
import { PART_NAMES, partsOf, type PartName } from "./templates.js";

export type { StoredRetention } from "./snapshot-record.js";

/** Part files by name: the same shape as backends/types.ts `SnapshotParts`. */
export interface PartPaths {
  readonly ram?: string;
  readonly device?: string;
  readonly work?: string;
  readonly tmp?: string;
}

/** One snapshot as the registry holds it, every field from verified (signed) bytes. */
export interface StoredSnapshot {
  /** `snap_` + 20 base32 characters. */
  readonly id: string;
  /** `sha256:` of the manifest's canonical JSON. */
  readonly digest: Sha256Digest;
  readonly manifest: SnapshotManifest;
  /** `user`: taken through the API; `boot`: made by the engine (a saved VM, found by `key`). */
  readonly kind: "user" | "boot";
  /** The sandbox it was taken from, or what made it. */
  readonly source: string;
  readonly retention: StoredRetention;
  /** ISO 8601 UTC, the manifest's. */
  readonly createdAt: string;
  /** When retention removes it: `createdAt + ttlSeconds`, or `lastUsedAt + unusedSeconds`; absent for manual. */
  readonly expiresAt?: string;
  /** Its creation or its last `touch`. */
  readonly lastUsedAt: string;
  /** Whether process memory is in it. */
  readonly memory: boolean;
  /** Boot snapshots: the shape key. */
  readonly key?: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface CreateSnapshotInput {
  /** The part files to store (read, not moved or changed; the caller removes them). */
  readonly parts: PartPaths;
  readonly shape: SnapshotShape;
  readonly kind: "user" | "boot";
  readonly source: string;
  /** `user`: the API's retention; `boot`: `{ unusedSeconds }`. */
  readonly retention: StoredRetention;
  readonly memory: boolean;
  readonly labels?: Readonly<Record<string, string>>;
  /** Boot snapshots only (required for them): the shape key `findByKey` looks up. */
  readonly key?: string;
  readonly signal?: AbortSignal;
}

export interface Materialized {
  /** Read-only template files of the snapshot's parts. Never write them; copy or privately map them. */
  readonly parts: PartPaths;
  /** Ends this call's use of the template (idempotent). Until then sweep leaves it in place. */
  release(): Promise<void>;
}

export interface SweepResult {
  /** Snapshots whose retention ran out, now removed (the caller audits each). */
  readonly expired: StoredSnapshot[];
  readonly chunksRemoved: number;
  /**
   * True when no chunk was removed because a create or template build was in progress, or a record
   * failed verification (see `invalid`; chunk removal resumes once it is deleted).
   */
  readonly chunksDeferred: boolean;
  readonly templatesRemoved: number;
  /** Records that failed verification: kept on disk (delete them by id), reported here. */
  readonly invalid: { readonly name: string; readonly error: SnapshotMismatchError }[];
}

export interface StoreUsage {
  readonly snapshots: number;
  /** Sum of the parts' sizes as restored. */
  readonly logicalBytes: number;
  /** Sum over snapshots of their stored bytes (each snapshot counted alone, zero chunks elided). */
  readonly snapshotStoredBytes: number;
  /** Bytes of the distinct chunks all snapshots name: what the store holds for them. */
  readonly uniqueStoredBytes: number;
  /** `snapshotStoredBytes / uniqueStoredBytes` (1 when nothing is shared or nothing is stored). */
  readonly dedupRatio: number;
}

/** How long a template nobody holds is kept after its last use, seconds. */
export const TEMPLATE_IDLE_SECONDS = 3600;

const ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";
const ID = /^snap_[a-z2-7]{20}$/;
const DIGEST = /^sha256:([0-9a-f]{64})$/;

function newSnapshotId(): string {
  return `snap_${[...randomBytes(20)].map((b) => ID_ALPHABET[b & 31]).join("")}`;
}

function expiresAtOf(record: SnapshotRecord, createdAt: string): string | undefined {
  const r = record.retention;
  if ("ttlSeconds" in r) return new Date(Date.parse(createdAt) + r.ttlSeconds * 1000).toISOString();
  if ("unusedSeconds" in r) return new Date(Date.parse(record.lastUsedAt) + r.unusedSeconds * 1000).toISOString();
  return undefined;
}

function toStored(record: SnapshotRecord, manifest: SnapshotManifest): StoredSnapshot {
  const expiresAt = expiresAtOf(record, manifest.createdAt);
  return {
    id: record.id,
    digest: record.digest as Sha256Digest,
    manifest,
    kind: record.kind,
    source: record.source,
    retention: record.retention,
    createdAt: manifest.createdAt,
    ...(expiresAt !== undefined ? { expiresAt } : {}),
    lastUsedAt: record.lastUsedAt,
    memory: record.memory,
    ...(record.key !== undefined ? { key: record.key } : {}),
    labels: record.labels,
  };
}

function recordOf(snap: StoredSnapshot, lastUsedAt: string): SnapshotRecord {
  return {
    version: 1,
    id: snap.id,
    digest: snap.digest,
    kind: snap.kind,
    source: snap.source,
    retention: snap.retention,
    memory: snap.memory,
    ...(snap.key !== undefined ? { key: snap.key } : {}),
    labels: { ...snap.labels },
    lastUsedAt,
  } as SnapshotRecord;
}

export class SnapshotStore {
  readonly root: string;
  readonly chunks: ChunkStore;
  readonly #privateKey: KeyObject;
  readonly #publicKey: KeyObject;
  /** Verified records by id, keyed by the file's identity when read. */
  readonly #records = new Map<string, { stamp: string; snap: StoredSnapshot; manifestWire: Buffer }>();
  readonly #templates: TemplateCache;

  private constructor(root: string, chunks: ChunkStore, keys: { privateKey: KeyObject; publicKey: KeyObject }) {
    this.root = root;
    this.chunks = chunks;
    this.#privateKey = keys.privateKey;
    this.#publicKey = keys.publicKey;
    this.#templates = new TemplateCache({ root, chunks, ...keys, markBusy: () => this.#markBusy("build") });
  }

  /**
   * Opens (creating when absent) the registry at `root` (0700), signing and verifying with the
   * host key pair (Ed25519, the one that signs plans).
   * @example const store = await SnapshotStore.open("/var/lib/mvm/snapshots", hostKeys);
   */
  static async open(root: string, keys: { privateKey: KeyObject; publicKey: KeyObject }): Promise<SnapshotStore> {
    if (keys.privateKey.asymmetricKeyType !== "ed25519" || keys.publicKey.asymmetricKeyType !== "ed25519") {
      throw new InvalidArgumentError("Cannot open snapshot store: the host keys must be an Ed25519 pair");
    }
    await mkdir(root, { recursive: true, mode: 0o700 });
    await chmod(root, 0o700);
    for (const sub of ["records", "templates", "busy", "holds", "locks", "tmp"]) await mkdir(join(root, sub), { recursive: true, mode: 0o700 });
    const chunks = await ChunkStore.open(join(root, "chunks"));
    return new SnapshotStore(root, chunks, keys);
  }

  /**
   * Stores the part files in the chunk store and registers a snapshot of them. The record is
   * written last, atomically: until then (and forever, if this process dies first) there is no
   * snapshot, and the next sweep removes the chunks nobody names.
   * @throws InvalidArgumentError for a bad shape, retention, labels or part file.
   * @throws the signal's reason when `signal` fires (nothing is registered; the chunks stored so
   *   far go at the next sweep).
   */
  async create(input: CreateSnapshotInput): Promise<StoredSnapshot> {
    const names = PART_NAMES.filter((p) => input.parts[p] !== undefined);
    if (names.length === 0) throw new InvalidArgumentError("Cannot create snapshot: it has no parts");
    const id = newSnapshotId();
    const draft = {
      version: 1,
      id,
      digest: `sha256:${"0".repeat(64)}`,
      kind: input.kind,
      source: input.source,
      retention: input.retention,
      memory: input.memory,
      ...(input.key !== undefined ? { key: input.key } : {}),
      labels: { ...(input.labels ?? {}) },
      lastUsedAt: new Date().toISOString(),
    };
    const checked = SnapshotRecordSchema.safeParse(draft);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      throw new InvalidArgumentError(`Cannot create snapshot: ${issue?.path.join(".") ?? ""} ${issue?.message ?? "invalid"}`.trim(), { cause: checked.error });
    }
    input.signal?.throwIfAborted();
    const busy = await this.#markBusy("create");
    try {
      const blobs: { -readonly [P in PartName]?: BlobRef } = {};
      for (const part of names) blobs[part] = await storeFile(this.chunks, input.parts[part]!, input.signal ? { signal: input.signal } : {});
      const createdAt = new Date().toISOString();
      const manifestWire = encodeSignedManifest({ version: MANIFEST_VERSION, createdAt, shape: input.shape, blobs: blobs as SnapshotManifest["blobs"] }, this.#privateKey);
      const { manifest } = decodeSignedManifest(manifestWire, this.#publicKey);
      const record = { ...checked.data, digest: manifestDigest(manifest), lastUsedAt: createdAt } as SnapshotRecord;
      const bytes = encodeRecord(record, manifestWire, this.#privateKey);
      input.signal?.throwIfAborted();
      await writeFileAtomic(join(this.root, "records", id), bytes, 0o600, { tempDir: join(this.root, "tmp") });
      return toStored(record, manifest);
    } finally {
      await unlink(busy).catch(() => undefined);
    }
  }

  /**
   * Runs `fn` as an operation that writes chunks no record names yet (a bundle pull): chunk
   * removal waits while it runs, as it does for a create.
   */
  async withChunkWrites<T>(fn: () => Promise<T>): Promise<T> {
    const busy = await this.#markBusy("create");
    try {
      return await fn();
    } finally {
      await unlink(busy).catch(() => undefined);
    }
  }

  /**
   * Registers a snapshot whose manifest came from another host (a bundle), once its chunks are
   * in the chunk store: every chunk of every part is read back and verified (BLAKE3 and length),
   * then the manifest is signed with this host's key under a new record. Call it inside
   * {@link withChunkWrites}, around the writes of those chunks.
   * @throws SnapshotMismatchError when a chunk is missing or fails verification.
   * @throws InvalidArgumentError for a bad retention or labels.
   */
  async adopt(input: { manifest: SnapshotManifest; source: string; retention: StoredRetention; labels: Readonly<Record<string, string>>; signal?: AbortSignal }): Promise<StoredSnapshot> {
    const memory = input.manifest.blobs.ram !== undefined;
    const id = newSnapshotId();
    const draft = {
      version: 1,
      id,
      digest: manifestDigest(input.manifest),
      kind: "user",
      source: input.source,
      retention: input.retention,
      memory,
      labels: { ...input.labels },
      lastUsedAt: new Date().toISOString(),
    };
    const checked = SnapshotRecordSchema.safeParse(draft);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      throw new InvalidArgumentError(`Cannot register snapshot: ${issue?.path.join(".") ?? ""} ${issue?.message ?? "invalid"}`.trim(), { cause: checked.error });
    }
    for (const part of partsOf(input.manifest)) {
      input.signal?.throwIfAborted();
      await verifyBlob(this.chunks, input.manifest.blobs[part]!);
    }
    const manifestWire = encodeSignedManifest(input.manifest, this.#privateKey);
    const { manifest } = decodeSignedManifest(manifestWire, this.#publicKey);
    if (manifestDigest(manifest) !== checked.data.digest) throw new SnapshotMismatchError("Snapshot manifest changed when it was signed");
    const record = checked.data as SnapshotRecord;
    await writeFileAtomic(join(this.root, "records", id), encodeRecord(record, manifestWire, this.#privateKey), 0o600, { tempDir: join(this.root, "tmp") });
    return toStored(record, manifest);
  }

  /** Removes every chunk no record names, unless a create, build or pull is in progress. Returns how many went. */
  async removeUnnamedChunks(): Promise<number> {
    return (await this.#collectChunks()).removed;
  }

  /**
   * The snapshot named by id (`snap_…`) or digest (`sha256:…`), verified.
   * @throws NotFoundError when there is none.
   * @throws SnapshotMismatchError when its record or manifest fails verification.
   */
  async get(ref: string): Promise<StoredSnapshot> {
    if (ID.test(ref)) return (await this.#read(ref)).snap;
    if (!DIGEST.test(ref)) throw new InvalidArgumentError(`Invalid snapshot reference: ${JSON.stringify(ref.slice(0, 80))}`);
    let damaged: SnapshotMismatchError | undefined;
    let found: StoredSnapshot | undefined;
    for (const name of await this.#recordNames()) {
      try {
        const { snap } = await this.#read(name);
        if (snap.digest === ref && (found === undefined || snap.createdAt > found.createdAt)) found = snap;
      } catch (err) {
        if (!(err instanceof SnapshotMismatchError || err instanceof NotFoundError)) throw err;
        // A damaged record that mentions the digest is the one asked for: fail closed, not "not found".
        if (err instanceof SnapshotMismatchError && (await this.#rawRecord(name)).includes(ref)) damaged = err;
      }
    }
    if (found !== undefined) return found;
    if (damaged !== undefined) throw damaged;
    throw new NotFoundError(`Snapshot ${JSON.stringify(ref)} not found`);
  }

  /** The newest boot snapshot registered under `key`, or undefined. Damaged records are skipped. */
  async findByKey(key: string): Promise<StoredSnapshot | undefined> {
    let found: StoredSnapshot | undefined;
    for (const snap of await this.list()) if (snap.kind === "boot" && snap.key === key && (found === undefined || snap.createdAt > found.createdAt)) found = snap;
    return found;
  }

  /**
   * Every snapshot that verifies, oldest first. A record that fails verification is left out and
   * passed to `onInvalid` (the engine logs and audits it); it stays on disk until deleted.
   */
  async list(options: { onInvalid?: (name: string, error: SnapshotMismatchError) => void } = {}): Promise<StoredSnapshot[]> {
    const out: StoredSnapshot[] = [];
    for (const name of await this.#recordNames()) {
      try {
        out.push((await this.#read(name)).snap);
      } catch (err) {
        if (err instanceof NotFoundError) continue; // deleted meanwhile
        if (!(err instanceof SnapshotMismatchError)) throw err;
        options.onInvalid?.(name, err);
      }
    }
    return out.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
  }

  /**
   * Removes a snapshot: its record first (one unlink: it is there or it is not), then the chunks
   * no remaining record names (unless a create is in progress: then the next sweep does) and its
   * template unless someone holds it. By id this also removes a record that fails verification.
   * @throws NotFoundError when there is no such snapshot.
   */
  async delete(ref: string): Promise<void> {
    let digestHex: string | undefined;
    {
      await using _lock = await this.#lock();
      let id: string;
      if (ID.test(ref)) {
        id = ref;
        try {
          digestHex = (await this.#read(id)).snap.digest.slice("sha256:".length);
        } catch (err) {
          if (!(err instanceof SnapshotMismatchError)) throw err;
        }
      } else {
        const snap = await this.get(ref);
        id = snap.id;
        digestHex = snap.digest.slice("sha256:".length);
      }
      try {
        await unlink(join(this.root, "records", id));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new NotFoundError(`Snapshot ${JSON.stringify(ref)} not found`);
        throw err;
      }
      this.#records.delete(id);
      await fsyncDir(join(this.root, "records"));
    }
    await this.#collectChunks();
    if (digestHex !== undefined) {
      const live = new Set((await this.list()).map((s) => s.digest.slice("sha256:".length)));
      if (!live.has(digestHex)) await this.#templates.removeIfUnheld(digestHex);
    }
  }

  /**
   * Makes (once per digest, shared by concurrent callers and later calls) the snapshot's verified
   * read-only template and returns its part files. A template that exists is checked first: if a
   * file changed, was replaced or added, it is removed and rebuilt from the chunks, each verified
   * as it is written. Pair every call with `release()`. `signal` stops a build this call started;
   * calls that joined that build then fail with it too.
   * @throws SnapshotMismatchError when a chunk is missing or fails verification; nothing is left half-made.
   */
  async materialize(snap: StoredSnapshot, signal?: AbortSignal): Promise<Materialized> {
    const m = DIGEST.exec(snap.digest);
    if (!m?.[1] || manifestDigest(snap.manifest) !== snap.digest) throw new SnapshotMismatchError(`Snapshot ${snap.id} does not match its digest`);
    return this.#templates.acquire(m[1], snap.manifest, snap.digest, signal);
  }

  /**
   * Reads and verifies every stored chunk of the snapshot without writing anything (an audit of
   * the store; a restore verifies through `materialize`).
   * @throws SnapshotMismatchError when a chunk is missing or fails verification.
   */
  async verify(snap: StoredSnapshot): Promise<void> {
    if (manifestDigest(snap.manifest) !== snap.digest) throw new SnapshotMismatchError(`Snapshot ${snap.id} does not match its digest`);
    for (const part of partsOf(snap.manifest)) await verifyBlob(this.chunks, snap.manifest.blobs[part]!);
  }

  /** Records a use of the snapshot now (for `{ unusedSeconds }` retention). @throws NotFoundError when it is gone. */
  async touch(snap: StoredSnapshot, now = new Date()): Promise<StoredSnapshot> {
    await using _lock = await this.#lock();
    const current = await this.#read(snap.id);
    const record = recordOf(current.snap, now.toISOString());
    await writeFileAtomic(join(this.root, "records", snap.id), encodeRecord(record, current.manifestWire, this.#privateKey), 0o600, { tempDir: join(this.root, "tmp") });
    return toStored(record, current.snap.manifest);
  }

  /**
   * Applies retention at `now`: removes snapshots whose TTL ran out and boot snapshots unused for
   * their `unusedSeconds`; leftovers of dead processes (temp files, builds, busy markers, holds);
   * every chunk no record names (none that one does); templates that no live process holds of
   * snapshots that are gone, or not materialized for `templateIdleSeconds`
   * (@default TEMPLATE_IDLE_SECONDS, an hour).
   */
  async sweep(now = new Date(), options: { templateIdleSeconds?: number } = {}): Promise<SweepResult> {
    const idleMs = (options.templateIdleSeconds ?? TEMPLATE_IDLE_SECONDS) * 1000;
    const expired: StoredSnapshot[] = [];
    const invalid: { name: string; error: SnapshotMismatchError }[] = [];
    {
      await using _lock = await this.#lock();
      for (const snap of await this.list({ onInvalid: (name, error) => invalid.push({ name, error }) })) {
        if (snap.expiresAt === undefined || Date.parse(snap.expiresAt) > now.getTime()) continue;
        await unlink(join(this.root, "records", snap.id)).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== "ENOENT") throw err;
        });
        this.#records.delete(snap.id);
        expired.push(snap);
      }
      if (expired.length > 0) await fsyncDir(join(this.root, "records"));
    }
    await this.#removeDeadEntries("tmp", true);
    await this.#removeDeadEntries("holds", false);
    await this.#removeDeadEntries("locks", false, (name) => /\.lock\.\d+-\d+-[0-9a-f]+\.(?:new|stale)$/.test(name), (name) => name.replace(/^.*\.lock\./, ""));
    const { removed: chunksRemoved, deferred: chunksDeferred } = await this.#collectChunks();
    const live = new Set((await this.list()).map((s) => s.digest.slice("sha256:".length)));
    const templatesRemoved = await this.#templates.sweep(live, now, idleMs);
    return { expired, chunksRemoved, chunksDeferred, templatesRemoved, invalid };
  }

  /** The API's view of a user snapshot (sizes from its blobs: stored bytes exclude zero chunks). */
  info(snap: StoredSnapshot): SnapshotInfo {
    if (snap.kind !== "user" || "unusedSeconds" in snap.retention) throw new InvalidArgumentError(`Snapshot ${snap.id} is the engine's own (boot), not on the API`);
    const sizes: Partial<Record<PartName, { bytes: number; storedBytes: number; chunks: number; zeroChunks: number }>> = {};
    for (const part of partsOf(snap.manifest)) {
      const blob = snap.manifest.blobs[part]!;
      sizes[part] = { bytes: blob.sizeBytes, ...blobCounts(blob) };
    }
    return {
      id: snap.id,
      digest: snap.digest,
      createdAt: snap.createdAt,
      ...(snap.expiresAt !== undefined ? { expiresAt: snap.expiresAt } : {}),
      retention: snap.retention,
      tier: snap.manifest.shape.tier,
      memory: snap.memory,
      source: snap.source,
      image: { digest: snap.manifest.shape.imageDigest },
      sizes,
      labels: { ...snap.labels },
    };
  }

  /** How much the store's snapshots share: each one's stored bytes summed, against the distinct chunks they name. */
  async usage(): Promise<StoreUsage> {
    const snaps = await this.list();
    const unique = new Map<string, number>();
    let logicalBytes = 0;
    let snapshotStoredBytes = 0;
    for (const snap of snaps) {
      for (const part of partsOf(snap.manifest)) {
        const blob = snap.manifest.blobs[part]!;
        logicalBytes += blob.sizeBytes;
        snapshotStoredBytes += blobCounts(blob).storedBytes;
        blob.chunks.forEach((id, i) => {
          if (id !== null) unique.set(id, chunkLength(blob.sizeBytes, i));
        });
      }
    }
    const uniqueStoredBytes = [...unique.values()].reduce((a, b) => a + b, 0);
    return { snapshots: snaps.length, logicalBytes, snapshotStoredBytes, uniqueStoredBytes, dedupRatio: uniqueStoredBytes === 0 ? 1 : snapshotStoredBytes / uniqueStoredBytes };
  }

  // ---- internals -------------------------------------------------------------------------

  #lock(name = "store.lock"): Promise<FileLock> {
    return FileLock.acquire(join(this.root, "locks", name));
  }

  /** Registers an operation that writes or reads chunks not yet named by a record; returns the marker to unlink. */
  async #markBusy(what: "create" | "build"): Promise<string> {
    await using _lock = await this.#lock();
    const path = join(this.root, "busy", `${await uniqueOwnedName()}.${what}`);
    await writeFile(path, "", { flag: "wx", mode: 0o600 });
    return path;
  }

  async #recordNames(): Promise<string[]> {
    return (await readdir(join(this.root, "records"))).sort();
  }

  /** Reads and verifies records/<name> (cached while the file is unchanged). */
  async #read(name: string): Promise<{ snap: StoredSnapshot; manifestWire: Buffer }> {
    const path = join(this.root, "records", name);
    let handle;
    try {
      handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") throw new NotFoundError(`Snapshot ${JSON.stringify(name)} not found`);
      throw new SnapshotMismatchError(`Snapshot record ${JSON.stringify(name)} cannot be opened (${code ?? "error"})`, { cause: err });
    }
    try {
      const st = await handle.stat({ bigint: true });
      if (!st.isFile()) throw new SnapshotMismatchError(`Snapshot record ${JSON.stringify(name)} is not a regular file`);
      if (st.size > BigInt(MAX_RECORD_BYTES)) throw new SnapshotMismatchError(`Snapshot record ${JSON.stringify(name)} is over ${MAX_RECORD_BYTES} bytes`);
      const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
      const cached = this.#records.get(name);
      if (cached?.stamp === stamp) return cached;
      const bytes = await handle.readFile();
      const { record, manifest, manifestWire } = decodeRecord(bytes, this.#publicKey);
      if (record.id !== name) throw new SnapshotMismatchError(`Snapshot record ${JSON.stringify(name)} is the record of ${record.id}`);
      const entry = { stamp, snap: toStored(record, manifest.manifest), manifestWire };
      this.#records.set(name, entry);
      return entry;
    } catch (err) {
      this.#records.delete(name);
      throw err;
    } finally {
      await handle.close();
    }
  }

  /** The first bytes of a record file as text (for finding what a damaged record names). */
  async #rawRecord(name: string): Promise<string> {
    try {
      const handle = await open(join(this.root, "records", name), fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
      try {
        const buffer = Buffer.alloc(MAX_RECORD_BYTES);
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
        return buffer.subarray(0, bytesRead).toString("latin1");
      } finally {
        await handle.close();
      }
    } catch {
      return "";
    }
  }

  /**
   * Removes every chunk no record names, under the store lock, unless a live process has a create
   * or build in progress, or a record fails verification (its chunks cannot be known): then it
   * removes none and a later sweep tries again.
   */
  async #collectChunks(): Promise<{ removed: number; deferred: boolean }> {
    await using _lock = await this.#lock();
    let deferred = false;
    for (const name of await readdir(join(this.root, "busy"))) {
      const owner = parseOwnerTag(name);
      if (owner !== undefined && (await isAlive(owner))) deferred = true;
      else await rm(join(this.root, "busy", name), { force: true });
    }
    if (deferred) {
      await this.chunks.sweepTemp();
      return { removed: 0, deferred };
    }
    const keep = new Set<string>();
    for (const name of await this.#recordNames()) {
      let snap: StoredSnapshot | undefined;
      try {
        snap = (await this.#read(name)).snap;
      } catch (err) {
        if (err instanceof NotFoundError) continue;
        if (!(err instanceof SnapshotMismatchError)) throw err;
        // Which chunks it needs is unknown (a damaged record, or a newer engine's): remove none.
        await this.chunks.sweepTemp();
        return { removed: 0, deferred: true };
      }
      for (const part of partsOf(snap.manifest)) for (const id of snap.manifest.blobs[part]!.chunks) if (id !== null) keep.add(id);
    }
    return { removed: await this.chunks.sweep(keep), deferred };
  }

  /** Removes entries of `sub` whose owner process is gone (and, with `unowned`, ones that name no owner). */
  async #removeDeadEntries(sub: string, unowned: boolean, only: (name: string) => boolean = () => true, tag: (name: string) => string = (n) => n): Promise<void> {
    for (const name of await readdir(join(this.root, sub))) {
      if (!only(name)) continue;
      const owner = parseOwnerTag(tag(name));
      if (owner === undefined ? unowned : !(await isAlive(owner))) await rm(join(this.root, sub, name), { recursive: true, force: true });
    }
  }
}
