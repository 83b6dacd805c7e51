/**
 * The content-addressed image store: resolve references, build `debian:` images, import tars and
 * directories, list, remove and verify. The layout on disk is described in layout.ts.
 *
 * An import writes a tree into a work dir, hashes it, then (under the store lock) renames the work
 * dir to its blob dir, or drops it when that digest is already stored, and updates refs.json.
 * Every blob has at least one ref; a blob is detached (renamed into tmp) under the lock when its
 * last ref goes, and deleted after.
 */
import { chmod, chown, copyFile, lstat, mkdir, readdir, rename } from "node:fs/promises";
import type { KeyObject } from "node:crypto";
import { userInfo } from "node:os";
import { dirname, join, resolve as resolvePath } from "node:path";
import {
  AbortedError,
  AdmissionError,
  InternalError,
  InvalidArgumentError,
  MvmError,
  NotFoundError,
  type ProgressEvent,
  type Sha256Digest,
} from "@mvm/protocol";
import { loadOrCreateHostKey } from "../audit/keys.js";
import type { TestAllowance } from "../egress/address-floor.js";
import { BuildBoundary } from "./builder.js";
import { DEFAULT_BUILD_USER, findBuildUser } from "./build-user.js";
import { DEBIAN_SOURCE_DATE_EPOCH, mirrorLinesFor, mmdebstrapVersion, readHostAptSources, runMmdebstrap, type MmdebstrapPlan, type RunOptions } from "./debian.js";
import { PROVENANCE_VERSION, readInstalledPackages, writeProvenance, type BuildProvenance } from "./provenance.js";
import { assertKnownSuite } from "./suites.js";
import { hashTree, InvalidTreeError } from "./digest.js";
import { copyDir, extractTar, type SourceOptions } from "./extract.js";
import { removeTree } from "./fs-util.js";
import { fsyncDir, writeFileAtomic } from "../store/atomic.js";
import { exists, IMAGE_MOUNT_POINTS, StoreLayout, type ImageMeta } from "./layout.js";
import { FileLock } from "../store/lock.js";
import { isSha256Digest, parseImageRef, parseLocalName, quote } from "./ref.js";
import { readRefs, writeRefs, type RefsMap } from "./refs-index.js";
import { TreeWriter, type TreeWriterLimits } from "./tree-writer.js";

export type ImageSourceKind = "debian" | "tar" | "dir";

export interface ImageRecord {
  /** `sha256:<hex>` of the image's canonical manifest. */
  digest: Sha256Digest;
  /** References (canonical `debian:` refs and local names) that point at this image, sorted. */
  refs: string[];
  /** Absolute path of the image's root directory on the host. Read-only by convention. */
  rootfsDir: string;
  /** Sum of the sizes of the image's regular files, in bytes. */
  sizeBytes: number;
  /** ISO 8601 time the image was first stored. */
  createdAt: string;
  source: { kind: ImageSourceKind; detail: string };
}

export interface ImageStoreOptions extends TreeWriterLimits {
  /** Directory holding the host's apt sources. @default "/etc/apt" */
  aptDir?: string;
  /** Time between SIGTERM and SIGKILL when an mmdebstrap build is aborted. @default 10000 */
  buildKillGraceMs?: number;
  /**
   * The engine's state directory: hidden from builds, and where the host key that signs build
   * provenance lives (`<stateDir>/keys`). @default the store root's parent directory
   */
  stateDir?: string;
  /** Signs build provenance. @default the host key of `stateDir` (created when absent) */
  provenanceKey?: KeyObject;
  /** Account builds run as when the engine runs as root. @default "mvm-build" */
  buildUser?: string;
  /** Directory holding passwd, subuid and subgid. @default "/etc" */
  etcDir?: string;
  /** apt lines (`deb [opts] URI SUITE COMPONENT…`) builds use instead of the host's sources. */
  debianMirrors?: readonly string[];
  /** Where each build copies the .deb files it downloaded (e.g. /var/cache/mvm/debs). */
  keepDebsDir?: string;
  /**
   * Addresses of the Debian mirror the operator vouches for: builds' egress may reach them although
   * the address floor refuses private and special addresses (a LAN apt cache, a mirror behind a
   * documentation address). Never the host's own addresses.
   */
  buildMirrorAddresses?: readonly string[];
  /** Test-only: lets builds' egress reach test hosts in 198.18.0.0/15 (see egress/address-floor.ts). */
  buildTestAllowance?: TestAllowance;
}

export interface ProgressOptions {
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export interface BuildOptions extends ProgressOptions {
  /** Build again even when the reference is already stored. @default false */
  force?: boolean;
}

export class ImageStore {
  /** Absolute path of the store's root directory. */
  readonly root: string;
  readonly #layout: StoreLayout;
  readonly #options: ImageStoreOptions;

  private constructor(root: string, options: ImageStoreOptions) {
    this.root = root;
    this.#layout = new StoreLayout(root);
    this.#options = options;
  }

  /**
   * Opens (creating if needed) the store at `root`, and removes what crashed processes left:
   * work dirs, temp files, blobs no ref points at, refs whose blob is gone.
   * @example const images = await ImageStore.open(join(stateDir, "images"));
   */
  static async open(root: string, options: ImageStoreOptions = {}): Promise<ImageStore> {
    const store = new ImageStore(resolvePath(root), options);
    await store.#layout.create();
    await store.#layout.recover();
    return store;
  }

  /**
   * Resolves a reference to a stored image: a digest, a canonical `debian:` reference or a local name.
   * @returns undefined when nothing is stored under it.
   * @throws InvalidArgumentError when `ref` is malformed.
   */
  async resolve(ref: string): Promise<ImageRecord | undefined> {
    const parsed = parseImageRef(ref);
    const refs = await this.#readRefs();
    const digest = parsed.kind === "digest" ? parsed.digest : refs.get(parsed.ref);
    return digest === undefined ? undefined : this.#record(digest, refs);
  }

  /**
   * Resolves `ref`, building it first when it is a `debian:` reference not yet stored.
   * @throws NotFoundError for a digest or local name that is not stored.
   */
  async ensure(ref: string, options: ProgressOptions = {}): Promise<ImageRecord> {
    const found = await this.resolve(ref);
    if (found) return found;
    const parsed = parseImageRef(ref);
    if (parsed.kind === "debian") return this.buildDebian(parsed.ref, options);
    throw new NotFoundError(`Image ${quote(ref)} not found`, {
      hint:
        parsed.kind === "digest"
          ? "build or import the image with this digest (mvmctl image build REF, mvmctl image import PATH NAME)"
          : `import it first: mvmctl image import PATH ${ref}`,
    });
  }

  /**
   * Builds `debian:<suite>[+pkg…]` with mmdebstrap (variant minbase, the host's apt mirror,
   * SOURCE_DATE_EPOCH fixed) and stores it. A reference already stored is returned as is unless
   * `force`. Concurrent builds of one reference, in any process, run once.
   * @throws InvalidArgumentError for a reference that is not `debian:`; AdmissionError when the
   *   build fails; AbortedError when `signal` fires (mmdebstrap is killed, temp files removed).
   */
  async buildDebian(ref: string, options: BuildOptions = {}): Promise<ImageRecord> {
    const parsed = parseImageRef(ref);
    if (parsed.kind !== "debian") {
      throw new InvalidArgumentError(`Cannot build image ${quote(ref)}: only "debian:<suite>[+pkg…]" references can be built`);
    }
    assertKnownSuite(parsed.suite);
    const { signal, onProgress } = options;
    if (!options.force) {
      const found = await this.resolve(parsed.ref);
      if (found) return found;
    }
    onProgress?.({ phase: "resolve", message: `taking the build lock of ${parsed.ref}`, fraction: 0 });
    const lock = await FileLock.acquire(this.#layout.buildLockPath(parsed.ref), signal ? { signal } : {});
    try {
      if (!options.force) {
        const found = await this.resolve(parsed.ref);
        if (found) return found;
      }
      const mirrors = this.#options.debianMirrors !== undefined ? [...this.#options.debianMirrors] : mirrorLinesFor(parsed.suite, await readHostAptSources(this.#options.aptDir));
      const plan: MmdebstrapPlan = { suite: parsed.suite, packages: parsed.packages, outputTar: "", mirrors };
      const run: RunOptions = {
        ref: parsed.ref,
        workDir: "",
        ...(signal ? { signal } : {}),
        ...(onProgress ? { onProgress: scaled(onProgress, 0, 0.8) } : {}),
        ...(this.#options.buildKillGraceMs !== undefined ? { killGraceMs: this.#options.buildKillGraceMs } : {}),
      };
      let builder: BuildProvenance["builder"];
      let boundary: BuildBoundary | undefined;
      const work = await this.#layout.newWorkDir();
      let failed = true;
      try {
        if (process.getuid?.() === 0) {
          const user = await findBuildUser(this.#options.buildUser ?? DEFAULT_BUILD_USER, this.#options.etcDir);
          boundary = await BuildBoundary.open({
            user,
            mirrorLines: mirrors,
            stateDir: this.#stateDir,
            ...(this.#options.buildTestAllowance ? { testAllowance: this.#options.buildTestAllowance } : {}),
            ...(this.#options.buildMirrorAddresses ? { mirrorAddresses: this.#options.buildMirrorAddresses } : {}),
            ...(onProgress ? { onDenied: (target: string, reason: string) => onProgress({ phase: "build", message: `egress denied: ${target}: ${reason}` }) } : {}),
          });
          builder = { boundary: "netns-unshare", user: user.name, uid: user.uid };
          plan.outputTar = join(boundary.buildDir, "rootfs.tar");
          plan.proxyUrl = boundary.proxyUrl;
          run.workDir = "/tmp";
          run.cwd = boundary.buildDir;
          run.home = boundary.buildDir;
          const wrapper = boundary;
          run.wrap = (argv) => wrapper.wrap(argv);
          if (this.#options.keepDebsDir !== undefined) {
            plan.keepDebsDir = join(boundary.buildDir, "debs");
            await mkdir(plan.keepDebsDir, { mode: 0o755 });
            await chown(plan.keepDebsDir, user.uid, user.gid);
          }
        } else {
          const me = userInfo();
          builder = { boundary: "none", user: me.username, uid: me.uid };
          run.workDir = join(work, "mmdebstrap");
          await mkdir(run.workDir, { mode: 0o711 });
          plan.outputTar = join(work, "rootfs.tar");
          if (this.#options.keepDebsDir !== undefined) {
            plan.keepDebsDir = join(work, "debs");
            await mkdir(plan.keepDebsDir, { mode: 0o755 });
          }
        }
        try {
          await runMmdebstrap(plan, run);
        } catch (err) {
          const denied = boundary?.denied ?? [];
          if (!(err instanceof AdmissionError) || denied.length === 0) throw err;
          throw new AdmissionError(`${err.message}; the build's egress was denied: ${denied.slice(-3).join("; ")}`, {
            cause: err,
            hint: "builds reach only the configured mirror's hosts; if the mirror is on a private or special address, vouch for it with MVM_BUILD_MIRROR_ADDRESSES=<ip>[,<ip>…]",
          });
        }
        if (plan.keepDebsDir !== undefined && this.#options.keepDebsDir !== undefined) await keepDebs(plan.keepDebsDir, this.#options.keepDebsDir);
        const detail = `mmdebstrap --variant=minbase --mode=unshare ${parsed.suite}${parsed.packages.length ? ` +${parsed.packages.join(",")}` : ""}; SOURCE_DATE_EPOCH=${DEBIAN_SOURCE_DATE_EPOCH}; ${mirrors.join("; ")}`;
        const outputTar = plan.outputTar;
        const record = await this.#import(parsed.ref, { kind: "debian", detail }, (w, o) => extractTar(outputTar, w, o), {
          ...options,
          ...(onProgress ? { onProgress: scaled(onProgress, 0.8, 1) } : {}),
        }, `image ${quote(parsed.ref)}`);
        const provenance: BuildProvenance = {
          version: PROVENANCE_VERSION,
          imageDigest: record.digest,
          ref: parsed.ref,
          suite: parsed.suite,
          packages: [...parsed.packages],
          installed: await readInstalledPackages(record.rootfsDir),
          mirrors,
          sourceDateEpoch: DEBIAN_SOURCE_DATE_EPOCH,
          mmdebstrap: { version: await mmdebstrapVersion(), variant: "minbase", mode: "unshare" },
          builder,
        };
        await writeProvenance(this.#layout.blobDir(record.digest), provenance, await this.#provenanceKey());
        failed = false;
        return record;
      } finally {
        await cleanup(work, failed);
        if (boundary) await boundary.close();
      }
    } finally {
      await lock.release();
    }
  }

  /**
   * Imports a tar archive (plain or gzip) as image `name`, extracting it safely (see
   * tree-writer.ts). `name` then points at the new digest; an image it pointed at before is removed
   * when no other ref points at it.
   * @throws InvalidArgumentError for a reserved or malformed name or a hostile/malformed archive;
   *   NotFoundError when `path` does not exist.
   */
  async importTar(path: string, name: string, options: ProgressOptions = {}): Promise<ImageRecord> {
    const ref = parseLocalName(name);
    const abs = resolvePath(path);
    await this.#mustExist(abs);
    return this.#import(ref, { kind: "tar", detail: abs }, (w, o) => extractTar(abs, w, o), options, `${quote(abs)} as ${quote(ref)}`);
  }

  /** Imports a host directory as image `name`, by the same rules as {@link importTar}. */
  async importDir(path: string, name: string, options: ProgressOptions = {}): Promise<ImageRecord> {
    const ref = parseLocalName(name);
    const abs = resolvePath(path);
    await this.#mustExist(abs);
    return this.#import(ref, { kind: "dir", detail: abs }, (w, o) => copyDir(abs, w, o), options, `${quote(abs)} as ${quote(ref)}`);
  }

  /** Every stored image, oldest first. */
  async list(): Promise<ImageRecord[]> {
    const refs = await this.#readRefs();
    const out: ImageRecord[] = [];
    for (const digest of await this.#layout.blobDigests()) {
      const record = await this.#record(digest, refs);
      if (record) out.push(record);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.digest.localeCompare(b.digest));
  }

  /**
   * Removes a reference, and the image when no reference points at it any more. Given a digest,
   * removes the image and every reference to it.
   * @throws NotFoundError when nothing is stored under `refOrDigest`.
   */
  async remove(refOrDigest: string): Promise<void> {
    const parsed = parseImageRef(refOrDigest);
    let trash: string | undefined;
    await this.#layout.locked(async () => {
      const refs = await readRefs(this.#layout.refsPath);
      let digest: Sha256Digest;
      if (parsed.kind === "digest") {
        digest = parsed.digest;
        const named = [...refs].filter(([, d]) => d === digest);
        if (named.length === 0 && !(await exists(this.#layout.blobDir(digest)))) throw notFound(refOrDigest);
        for (const [r] of named) refs.delete(r);
      } else {
        const found = refs.get(parsed.ref);
        if (found === undefined) throw notFound(refOrDigest);
        digest = found;
        refs.delete(parsed.ref);
      }
      await writeRefs(this.#layout.refsPath, refs);
      if (![...refs.values()].includes(digest)) trash = await this.#layout.detach(digest);
    });
    if (trash) await removeTree(trash);
  }

  /**
   * Recomputes the digest of a stored image from its tree.
   * @returns false when the tree no longer matches `digest` (tampered or damaged).
   * @throws InvalidArgumentError for a malformed digest; NotFoundError when it is not stored.
   */
  async verify(digest: string): Promise<boolean> {
    if (!isSha256Digest(digest)) throw new InvalidArgumentError(`Invalid image digest ${quote(digest)}: expected "sha256:" and 64 lowercase hex digits`);
    if (!(await exists(this.#layout.blobDir(digest)))) throw notFound(digest);
    try {
      const tree = await hashTree(join(this.#layout.blobDir(digest), "rootfs"));
      return tree.digest === digest;
    } catch (err) {
      if (err instanceof InvalidTreeError) return false;
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR" || code === "ELOOP") return false;
      throw err;
    }
  }

  get #stateDir(): string {
    return this.#options.stateDir ?? dirname(this.root);
  }

  async #provenanceKey(): Promise<KeyObject> {
    return this.#options.provenanceKey ?? (await loadOrCreateHostKey(this.#stateDir)).privateKey;
  }

  async #readRefs(): Promise<RefsMap> {
    return readRefs(this.#layout.refsPath);
  }

  async #record(digest: Sha256Digest, refs: RefsMap): Promise<ImageRecord | undefined> {
    const meta = await this.#layout.readMeta(digest);
    if (meta === undefined) return undefined;
    const names = [...refs].filter(([, d]) => d === digest).map(([r]) => r).sort();
    const rootfsDir = join(this.#layout.blobDir(digest), "rootfs");
    return { digest, refs: names, rootfsDir, sizeBytes: meta.sizeBytes, createdAt: meta.createdAt, source: meta.source };
  }

  async #import(
    ref: string,
    source: ImageMeta["source"],
    fill: (writer: TreeWriter, options: SourceOptions) => Promise<void>,
    options: ProgressOptions,
    what: string,
  ): Promise<ImageRecord> {
    const { signal, onProgress } = options;
    const work = await this.#layout.newWorkDir();
    let failed = true;
    try {
      const rootfs = join(work, "rootfs");
      await mkdir(rootfs, { mode: 0o755 });
      const limits: TreeWriterLimits = {};
      if (this.#options.maxEntries !== undefined) limits.maxEntries = this.#options.maxEntries;
      if (this.#options.maxBytes !== undefined) limits.maxBytes = this.#options.maxBytes;
      const writer = new TreeWriter(rootfs, limits, signal);
      onProgress?.({ phase: "unpack", message: `unpacking ${source.kind === "dir" ? "directory" : "archive"}`, fraction: 0 });
      let lastPercent = 0;
      await fill(writer, {
        ...(signal ? { signal } : {}),
        onBytes: (read, total) => {
          const percent = total > 0 ? Math.floor((read / total) * 100) : 0;
          if (percent > lastPercent) {
            lastPercent = percent;
            onProgress?.({ phase: "unpack", message: `unpacked ${percent}%`, fraction: (0.85 * percent) / 100 });
          }
        },
      });
      for (const name of IMAGE_MOUNT_POINTS) await writer.mountPoint(name);
      await writer.finish();
      if (writer.dropped > 0) onProgress?.({ phase: "unpack", message: `dropped ${writer.dropped} device node(s), FIFO(s) or socket(s)` });
      onProgress?.({ phase: "hash", message: "computing the image digest", fraction: 0.85 });
      const tree = await hashTree(rootfs, signal);
      const meta: ImageMeta = { version: 1, createdAt: new Date().toISOString(), sizeBytes: tree.sizeBytes, source };
      await writeFileAtomic(join(work, "manifest.json"), tree.manifestBytes);
      await writeFileAtomic(join(work, "image.json"), `${JSON.stringify(meta, null, 2)}\n`);
      await chmod(work, 0o755);
      if (signal?.aborted) throw new AbortedError(`Import of ${what} aborted`, { cause: signal.reason });
      onProgress?.({ phase: "store", message: `storing ${tree.digest}`, fraction: 0.97 });
      await this.#commit(work, tree.digest, ref);
      const refs = await this.#readRefs();
      const record = await this.#record(tree.digest, refs);
      if (!record) throw new InternalError(`Image ${tree.digest} vanished right after it was stored`);
      onProgress?.({ phase: "done", message: `stored ${tree.digest}`, fraction: 1 });
      failed = false;
      return record;
    } catch (err) {
      throw importError(err, what, signal);
    } finally {
      await cleanup(work, failed);
    }
  }

  /** Moves a finished work dir into place (or drops it as a duplicate) and points `ref` at it. */
  async #commit(work: string, digest: Sha256Digest, ref: string): Promise<void> {
    let trash: string | undefined;
    await this.#layout.locked(async () => {
      const blob = this.#layout.blobDir(digest);
      if (!(await exists(blob))) {
        await rename(work, blob);
        await fsyncDir(this.#layout.blobsDir);
      }
      const refs = await readRefs(this.#layout.refsPath);
      const previous = refs.get(ref);
      refs.set(ref, digest);
      await writeRefs(this.#layout.refsPath, refs);
      if (previous !== undefined && previous !== digest && ![...refs.values()].includes(previous)) {
        trash = await this.#layout.detach(previous);
      }
    });
    if (trash) await removeTree(trash);
  }

  async #mustExist(abs: string): Promise<void> {
    if (!(await exists(abs))) throw new NotFoundError(`Cannot import ${quote(abs)}: no such file or directory`);
  }
}

/** A .deb file name as apt writes it into its archives directory. */
const DEB_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9+.~_%-]{0,250}\.deb$/;

/** Copies the regular .deb files a build left in `from` (the build user's dir) into `to`. */
async function keepDebs(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true, mode: 0o755 });
  for (const name of await readdir(from)) {
    if (!DEB_NAME_RE.test(name)) continue;
    const st = await lstat(join(from, name));
    if (!st.isFile()) continue;
    await copyFile(join(from, name), join(to, name));
  }
}

/** Maps a sub-operation's progress (fraction 0..1) onto [from, to] of the whole operation. */
function scaled(onProgress: (event: ProgressEvent) => void, from: number, to: number): (event: ProgressEvent) => void {
  return (event) => {
    const { fraction, ...rest } = event;
    onProgress(fraction === undefined ? rest : { ...rest, fraction: from + (to - from) * fraction });
  };
}

/**
 * Removes a work dir. After a failure, a removal error is dropped so the first error is the one
 * reported; the dir is then left for an `open` after this process has exited.
 */
async function cleanup(work: string, failed: boolean): Promise<void> {
  try {
    await removeTree(work);
  } catch (err) {
    if (!failed) throw err;
  }
}

function notFound(ref: string): NotFoundError {
  return new NotFoundError(`Image ${quote(ref)} not found`, { hint: "list stored images with: mvmctl image ls" });
}

const INPUT_ERRNOS = new Set(["ENOENT", "ENOTDIR", "EISDIR", "ENAMETOOLONG", "ELOOP", "EEXIST", "EINVAL", "EMLINK"]);

/** Gives an import failure a typed error: bad input is InvalidArgumentError, the rest InternalError. */
function importError(err: unknown, what: string, signal: AbortSignal | undefined): MvmError {
  if (err instanceof MvmError) return err;
  if (signal?.aborted) return new AbortedError(`Import of ${what} aborted`, { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof InvalidTreeError || INPUT_ERRNOS.has((err as NodeJS.ErrnoException).code ?? "")) {
    return new InvalidArgumentError(`Cannot import ${what}: ${message}`, { cause: err });
  }
  return new InternalError(`Cannot import ${what}: ${message}`, { cause: err });
}
