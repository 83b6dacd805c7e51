/**
 * The image store's on-disk layout and the operations on it that need no knowledge of images:
 * paths, per-blob metadata, the store lock, work dirs, detaching blobs and crash recovery.
 *
 *   <root>/refs.json                          refs → digest (atomic replace, see refs-index.ts)
 *   <root>/blobs/sha256/<hex>/rootfs/         the normalized tree (root-owned, dirs world-readable)
 *   <root>/blobs/sha256/<hex>/manifest.json   the canonical manifest; sha256 of its bytes is <hex>
 *   <root>/blobs/sha256/<hex>/image.json      createdAt, source, sizeBytes (and `oci`: the first OCI image stored with this tree)
 *   <root>/blobs/sha256/<hex>/oci-refs/<h>.json  per ref naming this tree: the OCI image it was made from
 *   <root>/tmp/<pid>-<start>-<rand>[-removed]  work dirs of running imports and builds, detached blobs
 *   <root>/locks/store.lock, build-<hash>.lock
 */
import { createHash } from "node:crypto";
import { chmod, lstat, mkdir, readdir, rename } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { InternalError, parseJsonStrict, Sha256DigestSchema, type Sha256Digest } from "@mvm/protocol";
import { removeTree } from "./fs-util.js";
import { readSmallFile, writeFileAtomic } from "../store/atomic.js";
import { FileLock, isAlive, parseOwnerTag, uniqueOwnedName } from "../store/lock.js";
import { readRefs, writeRefs } from "./refs-index.js";

export const ImageMeta = z.strictObject({
  version: z.literal(1),
  /** ISO 8601 time the image was first stored. */
  createdAt: z.string().max(64),
  sizeBytes: z.number().int().nonnegative(),
  source: z.strictObject({ kind: z.enum(["debian", "tar", "dir", "oci-layout", "docker-archive", "registry"]), detail: z.string().max(4096) }),
  /** What an OCI image was made from, and the defaults its config supplies. */
  oci: z
    .strictObject({
      manifestDigest: Sha256DigestSchema.optional(),
      configDigest: Sha256DigestSchema,
      /** `REGISTRY/REPO:TAG` or `…@sha256:` as pulled. */
      reference: z.string().max(1024).optional(),
      defaults: z.strictObject({
        user: z.string().max(256).optional(),
        env: z.record(z.string().max(256), z.string().max(128 * 1024)).optional(),
        workingDir: z.string().max(4096).optional(),
        entrypoint: z.array(z.string().max(4096)).max(1024).optional(),
        cmd: z.array(z.string().max(4096)).max(1024).optional(),
      }),
    })
    .optional(),
});
export type ImageMeta = z.infer<typeof ImageMeta>;

const OciRefRecord = z.strictObject({ ref: z.string().max(1024), oci: ImageMeta.shape.oci.unwrap() });

const HEX_RE = /^[0-9a-f]{64}$/;
/** Temp files of atomic writes and lock attempts: `<name>.<pid>-<start>-<rand>.(tmp|new|stale)`. */
const OWNED_FILE_RE = /\.(\d+-\d+-[0-9a-f]+)\.(?:tmp|new|stale)$/;

export class StoreLayout {
  readonly root: string;
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly locksDir: string;
  readonly refsPath: string;

  /** @param root absolute path */
  constructor(root: string) {
    this.root = root;
    this.blobsDir = join(root, "blobs", "sha256");
    this.tmpDir = join(root, "tmp");
    this.locksDir = join(root, "locks");
    this.refsPath = join(root, "refs.json");
  }

  /**
   * Creates the directories. tmp is traversable (0711) so apt's unprivileged `_apt` user can
   * reach mmdebstrap's download dir below it (every parent of the store root must be traversable
   * too, or apt downloads as root and says so in a "W:" line); nobody else can list it.
   */
  async create(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o755 });
    await mkdir(this.blobsDir, { recursive: true, mode: 0o755 });
    await mkdir(this.tmpDir, { recursive: true, mode: 0o711 });
    await chmod(this.tmpDir, 0o711);
    await mkdir(this.locksDir, { recursive: true, mode: 0o700 });
  }

  blobDir(digest: Sha256Digest): string {
    return join(this.blobsDir, digest.slice("sha256:".length));
  }

  /** Digests of every blob dir present. */
  async blobDigests(): Promise<Sha256Digest[]> {
    return (await readdir(this.blobsDir)).filter((n) => HEX_RE.test(n)).map((hex) => `sha256:${hex}` as Sha256Digest);
  }

  /** The blob's metadata, or undefined when the blob is not stored. */
  async readMeta(digest: Sha256Digest): Promise<ImageMeta | undefined> {
    let raw: Buffer;
    try {
      raw = await readSmallFile(join(this.blobDir(digest), "image.json"), 64 * 1024);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    try {
      return ImageMeta.parse(JSON.parse(raw.toString("utf8")));
    } catch (cause) {
      throw new InternalError(`Image ${digest} has corrupt metadata`, { cause, hint: `remove it: mvmctl image rm ${digest}` });
    }
  }

  /** A fresh private work dir under tmp, named after this process so recovery can tell it is live. */
  async newWorkDir(): Promise<string> {
    const dir = join(this.tmpDir, await uniqueOwnedName());
    await mkdir(dir, { mode: 0o711 });
    return dir;
  }

  /**
   * The OCI record of `ref` when it names blob `digest`: two OCI images with the same tree share
   * one blob, but each ref keeps the digests and config defaults of the image it was made from.
   */
  async readOciRef(digest: Sha256Digest, ref: string): Promise<ImageMeta["oci"]> {
    let raw: Buffer;
    try {
      raw = await readSmallFile(this.#ociRefPath(digest, ref), 1024 * 1024);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    const parsed = OciRefRecord.safeParse(parseJsonStrict(raw.toString("utf8")));
    if (!parsed.success || parsed.data.ref !== ref) {
      throw new InternalError(`Image ${digest} has a corrupt OCI record for ${JSON.stringify(ref)}`, { hint: `remove it: mvmctl image rm ${digest}` });
    }
    return parsed.data.oci;
  }

  /**
   * Records the OCI origin of `ref` beside blob `digest` (replacing an earlier record of that
   * ref), under the store lock; nothing when the blob has gone meanwhile.
   */
  async writeOciRef(digest: Sha256Digest, ref: string, oci: NonNullable<ImageMeta["oci"]>): Promise<void> {
    await this.locked(async () => {
      if (!(await exists(join(this.blobDir(digest), "image.json")))) return;
      await mkdir(join(this.blobDir(digest), "oci-refs"), { recursive: true, mode: 0o755 });
      await writeFileAtomic(this.#ociRefPath(digest, ref), `${JSON.stringify({ ref, oci })}\n`);
    });
  }

  #ociRefPath(digest: Sha256Digest, ref: string): string {
    return join(this.blobDir(digest), "oci-refs", `${createHash("sha256").update(ref).digest("hex").slice(0, 32)}.json`);
  }

  buildLockPath(ref: string): string {
    return join(this.locksDir, `build-${createHash("sha256").update(ref).digest("hex").slice(0, 32)}.lock`);
  }

  /** Runs `fn` holding the store lock. Not reentrant. */
  async locked<T>(fn: () => Promise<T>): Promise<T> {
    const lock = await FileLock.acquire(join(this.locksDir, "store.lock"));
    try {
      return await fn();
    } finally {
      await lock.release();
    }
  }

  /**
   * Moves a blob dir into tmp, so it leaves `blobs/` atomically; call under the store lock.
   * @returns where it went (for removal outside the lock), or undefined when it was not there.
   */
  async detach(digest: Sha256Digest): Promise<string | undefined> {
    const aside = join(this.tmpDir, `${await uniqueOwnedName()}-removed`);
    try {
      await rename(this.blobDir(digest), aside);
      return aside;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  /**
   * Removes what crashed processes left: work dirs and temp files of dead owners, refs whose blob
   * is gone, and blobs no ref points at. Live owners' work is kept.
   */
  async recover(): Promise<void> {
    const trash: string[] = [];
    await this.locked(async () => {
      for (const name of await readdir(this.tmpDir)) {
        const owner = parseOwnerTag(name);
        if (owner === undefined || !(await isAlive(owner))) trash.push(join(this.tmpDir, name));
      }
      for (const dir of [this.root, this.locksDir]) {
        for (const name of await readdir(dir)) {
          const tag = OWNED_FILE_RE.exec(name)?.[1];
          const owner = tag === undefined ? undefined : parseOwnerTag(tag);
          if (owner !== undefined && !(await isAlive(owner))) trash.push(join(dir, name));
        }
      }
      const refs = await readRefs(this.refsPath);
      let changed = false;
      for (const [ref, digest] of [...refs]) {
        if (!(await exists(join(this.blobDir(digest), "image.json")))) {
          refs.delete(ref);
          changed = true;
        }
      }
      if (changed) await writeRefs(this.refsPath, refs);
      const live = new Set(refs.values());
      for (const digest of await this.blobDigests()) {
        if (live.has(digest)) continue;
        const aside = await this.detach(digest);
        if (aside) trash.push(aside);
      }
    });
    for (const path of trash) await removeTree(path);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/** Top-level directories every stored image has (created empty when missing): backends mount over them. */
export const IMAGE_MOUNT_POINTS = ["proc", "dev", "sys", "work", "tmp", ".mvm"] as const;
