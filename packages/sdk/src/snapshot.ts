/**
 * `Snapshot`: a sandbox's state kept in the host's snapshot store, and the calls that list,
 * inspect and delete snapshots. Taken with `sb.snapshot(...)`; started again with
 * `Sandbox.create({ fromSnapshot })`.
 */
import {
  InvalidArgumentError,
  SnapshotRefSchema,
  type CallOptions,
  type EngineApi,
  type Sha256Digest,
  type SnapshotId,
  type SnapshotInfo,
  type SnapshotRetention,
  type Tier,
} from "@mvm/protocol";
import { callOptions } from "./_internal/call-options.js";
import { sharedEngine, type ConnectionOptions } from "./connect.js";

/** Connection settings and cancellation of the static snapshot calls (the same rules as {@link Sandbox}). */
export type SnapshotConnectOptions = ConnectionOptions & CallOptions;

/** A snapshot named by id (`snap_…`), digest (`sha256:…`), or a {@link Snapshot} object. */
export type SnapshotRef = string | Snapshot;

/** The id or digest a reference names; a string that is neither is InvalidArgumentError. */
export function snapshotRefOf(ref: SnapshotRef): string {
  const value = ref instanceof Snapshot ? ref.id : ref;
  if (!SnapshotRefSchema.safeParse(value).success) {
    throw new InvalidArgumentError(`Invalid snapshot reference "${String(value).slice(0, 80)}": expected snap_<20 base32 characters> or sha256:<64 hex>`);
  }
  return value;
}

/**
 * A snapshot in the host's store: a sandbox's files (/work and /tmp) and, on the VM tier, its
 * memory and running processes. It is kept as its retention says (a TTL, or until deleted) and
 * does not belong to the sandbox it came from: killing that sandbox leaves it in place.
 *
 * @example
 * const snap = await sb.snapshot({ retention: { ttlSeconds: 86400 } });
 * await using copy = await Sandbox.create({ fromSnapshot: snap.id });
 * await snap.delete();
 */
export class Snapshot {
  readonly #engine: EngineApi;
  readonly #info: SnapshotInfo;

  /** @internal Use `sb.snapshot()` or {@link Snapshot.get}. */
  constructor(engine: EngineApi, info: SnapshotInfo) {
    this.#engine = engine;
    this.#info = info;
  }

  /** `snap_` + 20 base32 characters, given by the engine that took it. */
  get id(): SnapshotId {
    return this.#info.id as SnapshotId;
  }
  /** `sha256:` of its signed manifest, which names every chunk of its content. */
  get digest(): Sha256Digest {
    return this.#info.digest as Sha256Digest;
  }
  /** When it was taken, ISO 8601. */
  get createdAt(): string {
    return this.#info.createdAt;
  }
  /** When retention removes it, ISO 8601; undefined for `{ manual: true }`. */
  get expiresAt(): string | undefined {
    return this.#info.expiresAt;
  }
  get retention(): SnapshotRetention {
    return this.#info.retention;
  }
  /** The isolation tier of the sandbox it was taken from (and of every sandbox started from it). */
  get tier(): Tier {
    return this.#info.tier;
  }
  /** Whether process memory is in it: a sandbox started from it continues its running processes. */
  get memory(): boolean {
    return this.#info.memory;
  }
  /** The id of the sandbox it was taken from. */
  get source(): string {
    return this.#info.source;
  }
  /** Bytes per part (`ram`, `device`, `work`, `tmp`) as restored and as stored, and chunk counts. */
  get sizes(): SnapshotInfo["sizes"] {
    return this.#info.sizes;
  }
  get labels(): Readonly<Record<string, string>> {
    return this.#info.labels;
  }
  /** Everything the engine said about it. */
  get info(): SnapshotInfo {
    return this.#info;
  }
  /** The engine it is reached through. */
  get engine(): EngineApi {
    return this.#engine;
  }

  /** `JSON.stringify(snapshot)` gives its {@link info}. */
  toJSON(): SnapshotInfo {
    return this.#info;
  }

  /**
   * Deletes this snapshot from the store (its chunks go once no other snapshot uses them).
   * Sandboxes already started from it keep running.
   * @throws NotFoundError when it is already gone
   * @example
   * await snap.delete();
   */
  async delete(options?: CallOptions): Promise<void> {
    await this.#engine.deleteSnapshot(this.id, options);
  }

  /**
   * The snapshots in the host's store.
   * @example
   * for (const s of await Snapshot.list()) console.log(s.id, s.expiresAt ?? "kept until deleted");
   */
  static async list(options: SnapshotConnectOptions = {}): Promise<SnapshotInfo[]> {
    const engine = await sharedEngine(options);
    return engine.listSnapshots(callOptions(options));
  }

  /**
   * A snapshot by id or digest.
   * @throws NotFoundError when the store has none by that name
   * @throws InvalidArgumentError when `ref` is neither an id nor a digest
   * @example
   * const snap = await Snapshot.get("sha256:3b1f…");
   */
  static async get(ref: SnapshotRef, options: SnapshotConnectOptions = {}): Promise<Snapshot> {
    const name = snapshotRefOf(ref);
    const engine = await sharedEngine(options);
    return new Snapshot(engine, await engine.getSnapshot(name, callOptions(options)));
  }

  /**
   * Deletes a snapshot by id, digest or object.
   * @throws NotFoundError when the store has none by that name
   * @example
   * await Snapshot.delete(snap.id);
   */
  static async delete(ref: SnapshotRef, options: SnapshotConnectOptions = {}): Promise<void> {
    const name = snapshotRefOf(ref);
    const engine = ref instanceof Snapshot && options.engine === undefined ? ref.engine : await sharedEngine(options);
    await engine.deleteSnapshot(name, callOptions(options));
  }
}
