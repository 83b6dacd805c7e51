/**
 * The content-addressed image store: resolve references, build `debian:` images, import tars and
 * directories, list, remove and verify. The layout on disk is described in layout.ts.
 *
 * An import writes a tree into a work dir, hashes it, then (under the store lock) renames the work
 * dir to its blob dir, or drops it when that digest is already stored, and updates refs.json.
 * Every blob has at least one ref; a blob is detached (renamed into tmp) under the lock when its
 * last ref goes, and deleted after.
 */
import type { RegistryCredentials } from "../oci/auth.js";
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
  SnapshotMismatchError,
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
import { imageDefaults } from "./oci/documents.js";
import { applyLayer } from "./oci/layer.js";
import { parseRegistryRef, pinnedRef, pullToLayout } from "./oci/pull.js";
import { resolveDockerArchive, resolveOciArchive, resolveOciLayout, type ResolvedImage, type ResolveOptions } from "./oci/source.js";

export type ImageSourceKind = ImageMeta["source"]["kind"];

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
  /** For an OCI image: its manifest and config digests, the reference pulled, its config's defaults. */
  oci?: NonNullable<ImageMeta["oci"]>;
}

export interface ImageStoreOptions extends TreeWriterLimits {
  /** Most bytes one OCI layer may expand to. @default 16 GiB */
  maxLayerBytes?: number;
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
    if (digest === undefined) return undefined;
    const record = await this.#record(digest, refs);
    if (record === undefined || parsed.kind === "digest") return record;
    const oci = await this.#layout.readOciRef(digest, parsed.ref);
    return oci === undefined ? record : { ...record, oci };
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

  /**
   * Imports an OCI image as image `name`: `oci-layout:DIR` (an OCI image layout, or a tar of one) or
   * `docker-archive:FILE` (`docker save` output). The linux/amd64 image is chosen from an index;
   * every document and layer is checked against its digest (layers also against the config's
   * diff_ids) before it is applied; layers are applied in order with whiteouts honoured, by the
   * same path rules as {@link importTar}. The config's user, env, working dir, entrypoint and cmd
   * are recorded as the image's defaults.
   * @throws OciImageError (an InvalidArgumentError with a `fault`) for a malformed or lying image;
   *   UnsupportedCapabilityError for zstd layers; NotFoundError when the path does not exist.
   */
  async importOci(source: string, name: string, options: ProgressOptions & { reference?: string } = {}): Promise<ImageRecord> {
    const ref = parseLocalName(name);
    const m = /^(oci-layout|docker-archive):(\/.*)$/s.exec(source);
    if (!m) throw new InvalidArgumentError(`Invalid image source ${quote(source)}: expected "oci-layout:/DIR" or "docker-archive:/FILE.tar"`);
    const kind = m[1] as "oci-layout" | "docker-archive";
    const abs = resolvePath(m[2]!);
    await this.#mustExist(abs);
    const isDir = (await lstat(abs)).isDirectory();
    return this.#importResolved(ref, kind, abs, options, (stage, o) =>
      kind === "docker-archive" ? resolveDockerArchive(abs, stage, o) : isDir ? resolveOciLayout(abs, stage, o) : resolveOciArchive(abs, stage, o),
    );
  }

  /**
   * Imports an image that `resolve` reads into the private `stage` dir (a copied layout, an
   * unpacked archive, a pull's layout), applying its layers and recording its OCI origin for `ref`.
   */
  async #importResolved(
    ref: string,
    kind: "oci-layout" | "docker-archive" | "registry",
    detail: string,
    options: ProgressOptions & { reference?: string },
    resolve: (stage: string, options: ResolveOptions) => Promise<ResolvedImage>,
  ): Promise<ImageRecord> {
    const stage = await this.#layout.newWorkDir();
    try {
      let oci: NonNullable<ImageMeta["oci"]> | undefined;
      const what = `${kind}:${quote(detail)} as ${quote(ref)}`;
      const maxBlobBytes = this.#options.maxBytes ?? 64 * 1024 ** 3;
      const record = await this.#import(
        ref,
        { kind, detail },
        async (writer, o) => {
          const resolved = await resolve(join(stage, "s"), { maxBlobBytes, ...(o.signal ? { signal: o.signal } : {}) });
          const defaults = imageDefaults(resolved.config, what);
          oci = {
            ...(resolved.manifestDigest ? { manifestDigest: resolved.manifestDigest } : {}),
            configDigest: resolved.configDigest,
            ...(options.reference !== undefined ? { reference: options.reference } : {}),
            defaults,
          };
          for (const [i, layer] of resolved.layers.entries()) {
            o.onBytes?.(i, resolved.layers.length);
            await applyLayer(layer.path, layer.expected, writer, layer.what, {
              ...(o.signal ? { signal: o.signal } : {}),
              ...(this.#options.maxLayerBytes !== undefined ? { maxLayerBytes: this.#options.maxLayerBytes } : {}),
            });
          }
        },
        options,
        what,
        () => oci,
      );
      if (oci === undefined) return record;
      await this.#layout.writeOciRef(record.digest, ref, oci);
      return { ...record, oci };
    } finally {
      await removeTree(stage).catch(() => undefined);
    }
  }

  /**
   * Pulls `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:…` (linux/amd64) and stores it under that
   * reference and under its pinned form `REGISTRY/REPO@sha256:<digest the tag resolved to>`.
   * Every blob is verified by digest and size as it arrives, every layer against its diff_id
   * before it is applied (see {@link importOci}).
   * @throws InvalidArgumentError for a malformed reference; OciImageError for a lying image;
   *   NotFoundError when the registry has no such tag or digest; TransportError for the network.
   */
  async pull(reference: string, options: ProgressOptions & { timeoutMs?: number; ca?: string; credentials?: RegistryCredentials } = {}): Promise<ImageRecord> {
    const parsed = parseRegistryRef(reference);
    const stage = await this.#layout.newWorkDir();
    try {
      const layout = join(stage, "layout");
      options.onProgress?.({ phase: "resolve", message: `fetching ${reference}`, fraction: 0 });
      const { manifestDigest, tagDigest } = await pullToLayout(parsed, layout, {
        maxBlobBytes: this.#options.maxBytes ?? 64 * 1024 ** 3,
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.ca !== undefined ? { ca: options.ca } : {}),
        ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
      });
      const name = parsed.tag !== undefined ? `${parsed.registry}/${parsed.repository}:${parsed.tag}` : pinnedRef(parsed, tagDigest);
      const record = await this.#importResolved(parseLocalName(name, { allowPinned: true }), "registry", reference, { ...options, reference: pinnedRef(parsed, tagDigest) }, (s, o) =>
        resolveOciLayout(layout, s, { ...o, copyLayers: false }),
      );
      const pins = new Set([pinnedRef(parsed, tagDigest), pinnedRef(parsed, manifestDigest)]);
      pins.delete(name);
      for (const pin of pins) {
        await this.#addRef(pin, record.digest);
        if (record.oci) await this.#layout.writeOciRef(record.digest, pin, record.oci);
      }
      const refs = await this.#readRefs();
      return { ...((await this.#record(record.digest, refs)) ?? record), ...(record.oci ? { oci: record.oci } : {}) };
    } finally {
      await removeTree(stage).catch(() => undefined);
    }
  }

  /** Points `ref` at a stored digest (replacing what it pointed at; that image goes when unreferenced). */
  async #addRef(ref: string, digest: Sha256Digest): Promise<void> {
    let trash: string | undefined;
    await this.#layout.locked(async () => {
      const refs = await readRefs(this.#layout.refsPath);
      const previous = refs.get(ref);
      refs.set(ref, digest);
      await writeRefs(this.#layout.refsPath, refs);
      if (previous !== undefined && previous !== digest && ![...refs.values()].includes(previous)) trash = await this.#layout.detach(previous);
    });
    if (trash) await removeTree(trash);
  }

  /**
   * Imports a tar that must make the image `digest` (a bundle's image): unpacked by the same
   * rules as {@link importTar}, hashed, and stored under `name` only when its digest is
   * `digest`; otherwise nothing is stored (`SnapshotMismatchError`).
   */
  async importExpected(path: string, digest: Sha256Digest, name: string, options: ProgressOptions = {}): Promise<ImageRecord> {
    const ref = parseLocalName(name);
    const abs = resolvePath(path);
    await this.#mustExist(abs);
    return this.#import(ref, { kind: "tar", detail: `bundle image ${digest}` }, (w, o) => extractTar(abs, w, o), options, `${quote(abs)} as ${quote(ref)}`, () => undefined, digest);
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
    return { digest, refs: names, rootfsDir, sizeBytes: meta.sizeBytes, createdAt: meta.createdAt, source: meta.source, ...(meta.oci ? { oci: meta.oci } : {}) };
  }

  async #import(
    ref: string,
    source: ImageMeta["source"],
    fill: (writer: TreeWriter, options: SourceOptions) => Promise<void>,
    options: ProgressOptions,
    what: string,
    ociMeta: () => ImageMeta["oci"] = () => undefined,
    expectDigest?: Sha256Digest,
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
      if (expectDigest !== undefined && tree.digest !== expectDigest) {
        throw new SnapshotMismatchError(`Image ${expectDigest} does not match its files: they hash to ${tree.digest}`);
      }
      const oci = ociMeta();
      const meta: ImageMeta = { version: 1, createdAt: new Date().toISOString(), sizeBytes: tree.sizeBytes, source, ...(oci ? { oci } : {}) };
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
