/**
 * Where bundle bytes come from and go to. Every blob (bundle.json, the index, each pack) is named
 * by its sha256; a reader checks what it returns against that digest and against the size the
 * caller expects (or a cap, for bundle.json, whose size nothing names), and a file it writes is
 * removed when it does not verify. Static layouts (file://, https://) keep every blob at
 * `<base>/blobs/sha256/<hex>`; an OCI registry keeps them as blobs of the repository, bundle.json
 * as the config of an artifact manifest whose layers are the index and the packs.
 */
import type { RegistryCredentials } from "../oci/auth.js";
import { createHash } from "node:crypto";
import { constants as fsc } from "node:fs";
import { copyFile, mkdir, open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, NotFoundError, SnapshotMismatchError, TransportError, canonicalJson } from "@mvm/protocol";
import { readBody, send, statusError, type HttpOptions } from "../oci/http.js";
import { MEDIA_TYPE_OCI_MANIFEST } from "../oci/manifest.js";
import { OciRegistry, sha256Digest, streamVerified } from "../oci/registry.js";
import { uniqueOwnedName } from "../store/lock.js";
import type { BundleLocation } from "./uri.js";

export const BUNDLE_ARTIFACT_TYPE = "application/vnd.mvm.bundle.v1";
export const BUNDLE_CONFIG_MEDIA_TYPE = "application/vnd.mvm.bundle.config.v1+json";
export const BUNDLE_INDEX_MEDIA_TYPE = "application/vnd.mvm.bundle.index.v1+json";
export const BUNDLE_PACK_MEDIA_TYPE = "application/vnd.mvm.bundle.pack.v1";

/** A blob as the bundle names it. */
export interface BlobDescriptor {
  /** `sha256:<64 hex>`. */
  readonly digest: string;
  readonly size: number;
}

/** Reads blobs of one bundle location. */
export interface BundleReader {
  /** A blob of unknown size, at most `maxBytes`; verified against `digest`. */
  readCapped(digest: string, maxBytes: number): Promise<Buffer>;
  /** A blob of exactly `size` bytes, verified. */
  readExact(blob: BlobDescriptor): Promise<Buffer>;
  /** A blob of exactly `size` bytes into a new file `path`, verified (the file is removed otherwise). */
  readToFile(blob: BlobDescriptor, path: string): Promise<void>;
}

/** Writes blobs of one bundle to a location. */
export interface BundleWriter {
  /** Stores a blob held in memory. */
  putBytes(digest: string, bytes: Uint8Array): Promise<void>;
  /** Stores a blob from a file (the caller removes the file). */
  putFile(blob: BlobDescriptor, path: string): Promise<void>;
  /** Ends the push once every blob is stored (an OCI registry gets its manifest). Returns where it went. */
  finish(bundle: BlobDescriptor, index: BlobDescriptor, packs: readonly BlobDescriptor[]): Promise<string>;
}

/** Options of readers and writers. */
export interface TransportOptions extends HttpOptions {
  /** Credentials for an OCI registry (oci/auth.ts); never used by the file and https transports. */
  readonly credentials?: RegistryCredentials;
}

function hexOf(digest: string): string {
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw new InvalidArgumentError(`Invalid digest: ${JSON.stringify(digest.slice(0, 80))}`);
  return digest.slice("sha256:".length);
}

function verifyBytes(bytes: Buffer, digest: string, what: string): Buffer {
  const actual = sha256Digest(bytes);
  if (actual !== digest) throw new SnapshotMismatchError(`${what} ${digest} does not match its bytes (sha256 ${actual})`);
  return bytes;
}

/** A reader of `location`. */
export function bundleReader(location: BundleLocation, options: TransportOptions = {}): BundleReader {
  switch (location.kind) {
    case "file":
      return new FileReader(location.dir);
    case "https":
      return new HttpsReader(location.base, options);
    case "oci":
      return new OciReader(new OciRegistry({ origin: location.origin, repository: location.repository, ...options }));
  }
}

/** A writer to `location` (file and OCI only; https is read-only). `tmpDir` holds nothing after `finish`. */
export function bundleWriter(location: BundleLocation, options: TransportOptions = {}): BundleWriter {
  switch (location.kind) {
    case "file":
      return new FileWriter(location.dir);
    case "https":
      throw new InvalidArgumentError("https:// bundle locations are read-only");
    case "oci":
      return new OciWriter(new OciRegistry({ origin: location.origin, repository: location.repository, ...options }), location.tag);
  }
}

// ---- file:// ---------------------------------------------------------------------------------

class FileReader implements BundleReader {
  constructor(readonly dir: string) {}

  async #open(digest: string) {
    const path = join(this.dir, "blobs", "sha256", hexOf(digest));
    try {
      const handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
      const st = await handle.stat();
      if (!st.isFile()) {
        await handle.close();
        throw new SnapshotMismatchError(`Bundle blob ${digest} at ${JSON.stringify(path)} is not a regular file`);
      }
      return { handle, size: st.size };
    } catch (err) {
      if (err instanceof SnapshotMismatchError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") throw new NotFoundError(`Bundle blob ${digest} is not in ${JSON.stringify(this.dir)}`, { cause: err });
      if (code === "ELOOP") throw new SnapshotMismatchError(`Bundle blob ${digest} at ${JSON.stringify(path)} is a symlink`, { cause: err });
      throw new TransportError(`Cannot open bundle blob ${JSON.stringify(path)}: ${code ?? (err as Error).message}`, { cause: err });
    }
  }

  async #read(digest: string, size: number | undefined, maxBytes: number): Promise<Buffer> {
    const { handle, size: actual } = await this.#open(digest);
    try {
      if (size !== undefined && actual !== size) throw new SnapshotMismatchError(`Bundle blob ${digest} has ${actual} bytes, ${size} expected`);
      if (actual > maxBytes) throw new SnapshotMismatchError(`Bundle blob ${digest} of ${actual} bytes is over the ${maxBytes}-byte limit`);
      const bytes = Buffer.alloc(actual);
      const { bytesRead } = await handle.read(bytes, 0, actual, 0);
      if (bytesRead !== actual) throw new SnapshotMismatchError(`Bundle blob ${digest} changed size while it was read`);
      return verifyBytes(bytes, digest, "Bundle blob");
    } finally {
      await handle.close();
    }
  }

  readCapped(digest: string, maxBytes: number): Promise<Buffer> {
    return this.#read(digest, undefined, maxBytes);
  }

  readExact(blob: BlobDescriptor): Promise<Buffer> {
    return this.#read(blob.digest, blob.size, blob.size);
  }

  async readToFile(blob: BlobDescriptor, path: string): Promise<void> {
    const { handle, size } = await this.#open(blob.digest);
    let ok = false;
    const out = await open(path, "wx", 0o600);
    try {
      if (size !== blob.size) throw new SnapshotMismatchError(`Bundle blob ${blob.digest} has ${size} bytes, ${blob.size} expected`);
      const hash = createHash("sha256");
      const buffer = Buffer.allocUnsafe(4 * 1024 * 1024);
      let offset = 0;
      while (offset < size) {
        const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, size - offset), offset);
        if (bytesRead === 0) throw new SnapshotMismatchError(`Bundle blob ${blob.digest} shrank while it was read`);
        hash.update(buffer.subarray(0, bytesRead));
        await out.write(buffer, 0, bytesRead, offset);
        offset += bytesRead;
      }
      const actual = `sha256:${hash.digest("hex")}`;
      if (actual !== blob.digest) throw new SnapshotMismatchError(`Bundle blob ${blob.digest} does not match its bytes (sha256 ${actual})`);
      ok = true;
    } finally {
      await handle.close();
      await out.close();
      if (!ok) await rm(path, { force: true });
    }
  }
}

class FileWriter implements BundleWriter {
  readonly #blobs: string;
  constructor(readonly dir: string) {
    this.#blobs = join(dir, "blobs", "sha256");
  }

  async #place(digest: string, write: (tmp: string) => Promise<void>): Promise<void> {
    await mkdir(this.#blobs, { recursive: true, mode: 0o755 });
    const final = join(this.#blobs, hexOf(digest));
    const tmp = join(this.#blobs, `.tmp-${await uniqueOwnedName()}`);
    try {
      await write(tmp);
      await rename(tmp, final);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async putBytes(digest: string, bytes: Uint8Array): Promise<void> {
    await this.#place(digest, async (tmp) => {
      const handle = await open(tmp, "wx", 0o644);
      try {
        await handle.writeFile(bytes);
        await handle.sync();
      } finally {
        await handle.close();
      }
    });
  }

  async putFile(blob: BlobDescriptor, path: string): Promise<void> {
    await this.#place(blob.digest, async (tmp) => {
      await copyFile(path, tmp, fsc.COPYFILE_EXCL);
      const handle = await open(tmp, "r");
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    });
  }

  async finish(bundle: BlobDescriptor): Promise<string> {
    return `file://${this.dir}@${bundle.digest}`;
  }
}

// ---- https:// (static layout, read-only) -----------------------------------------------------

class HttpsReader implements BundleReader {
  constructor(
    readonly base: string,
    readonly options: HttpOptions,
  ) {}

  #url(digest: string): string {
    return `${this.base}/blobs/sha256/${hexOf(digest)}`;
  }

  async #get(digest: string) {
    const url = this.#url(digest);
    const res = await send({ ...this.options, method: "GET", url });
    if (res.status === 404) {
      res.discard();
      throw new NotFoundError(`Bundle blob ${digest} is not at ${url}`);
    }
    if (res.status !== 200) throw await statusError(res, `GET ${url}`);
    return { res, url };
  }

  async readCapped(digest: string, maxBytes: number): Promise<Buffer> {
    const { res, url } = await this.#get(digest);
    return verifyBytes(await readBody(res, maxBytes, `GET ${url}`), digest, "Bundle blob");
  }

  async readExact(blob: BlobDescriptor): Promise<Buffer> {
    const bytes = await this.readCapped(blob.digest, blob.size);
    if (bytes.byteLength !== blob.size) throw new SnapshotMismatchError(`Bundle blob ${blob.digest} has ${bytes.byteLength} bytes, ${blob.size} expected`);
    return bytes;
  }

  async readToFile(blob: BlobDescriptor, path: string): Promise<void> {
    const { res, url } = await this.#get(blob.digest);
    await streamVerified(res, path, blob.digest, blob.size, `GET ${url}`).catch((err: unknown) => {
      throw asMismatch(err);
    });
  }
}

// ---- oci:// ----------------------------------------------------------------------------------

/** A registry's digest and size failures are tampering as far as a bundle goes. */
function asMismatch(err: unknown): unknown {
  if (err instanceof TransportError && /does not match|bytes arrived|expected/.test(err.message)) return new SnapshotMismatchError(err.message, { cause: err });
  return err;
}

class OciReader implements BundleReader {
  constructor(readonly registry: OciRegistry) {}

  async readCapped(digest: string, maxBytes: number): Promise<Buffer> {
    const size = await this.registry.headBlob(digest);
    if (size === undefined) throw new NotFoundError(`Bundle ${digest} is not in ${this.registry.origin}/${this.registry.repository}`);
    if (size > maxBytes) throw new SnapshotMismatchError(`Bundle blob ${digest} of ${size} bytes is over the ${maxBytes}-byte limit`);
    return this.readExact({ digest, size });
  }

  async readExact(blob: BlobDescriptor): Promise<Buffer> {
    try {
      return await this.registry.getBlob(blob.digest, { sizeBytes: blob.size });
    } catch (err) {
      throw asMismatch(err);
    }
  }

  async readToFile(blob: BlobDescriptor, path: string): Promise<void> {
    try {
      await this.registry.getBlobToFile(blob.digest, path, { sizeBytes: blob.size });
    } catch (err) {
      throw asMismatch(err);
    }
  }
}

class OciWriter implements BundleWriter {
  constructor(
    readonly registry: OciRegistry,
    readonly tag: string | undefined,
  ) {}

  async putBytes(digest: string, bytes: Uint8Array): Promise<void> {
    await this.registry.putBlob(bytes, digest);
  }

  async putFile(blob: BlobDescriptor, path: string): Promise<void> {
    await this.registry.putBlob({ path }, blob.digest);
  }

  async finish(bundle: BlobDescriptor, index: BlobDescriptor, packs: readonly BlobDescriptor[]): Promise<string> {
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      artifactType: BUNDLE_ARTIFACT_TYPE,
      config: { mediaType: BUNDLE_CONFIG_MEDIA_TYPE, digest: bundle.digest, size: bundle.size },
      layers: [
        { mediaType: BUNDLE_INDEX_MEDIA_TYPE, digest: index.digest, size: index.size },
        ...packs.map((p) => ({ mediaType: BUNDLE_PACK_MEDIA_TYPE, digest: p.digest, size: p.size })),
      ],
    };
    const bytes = Buffer.from(canonicalJson(manifest), "utf8");
    // Tagged so the registry keeps the blobs; a pull reads them by the bundle digest alone.
    const tag = this.tag ?? `sha256-${hexOf(bundle.digest)}`;
    await this.registry.putManifest(tag, bytes, MEDIA_TYPE_OCI_MANIFEST);
    const url = new URL(this.registry.origin);
    return `${url.protocol === "http:" ? "oci+http" : "oci"}://${url.host}/${this.registry.repository}@${bundle.digest}`;
  }
}
