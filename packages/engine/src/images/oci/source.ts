/**
 * Where an OCI image comes from, reduced to one shape: a verified manifest and config and, for
 * each layer, a private file with what it must hash to.
 *
 * - `oci-layout:DIR`: an OCI image layout (umoci, skopeo, buildah write them). Documents are read
 *   with caps and checked against the digests that name them; layer blobs are copied into a
 *   private staging dir while hashed, so nothing the caller can still change is applied.
 * - `docker-archive:FILE`: `docker save` / skopeo's tarball. It is first unpacked path-safely into
 *   a private dir by the same {@link TreeWriter} rules as any image, then read from there.
 * - a registry pull stages its blobs into a private layout and reads it as `oci-layout:`.
 */
import { createHash } from "node:crypto";
import { constants as fsc } from "node:fs";
import { lstat, mkdir, open } from "node:fs/promises";
import { join, posix } from "node:path";
import type { Sha256Digest } from "@mvm/protocol";
import { extractTar } from "../extract.js";
import { quote } from "../ref.js";
import { splitEntryPath, TreeWriter } from "../tree-writer.js";
import {
  checkManifestAgainstConfig,
  checkConfigPlatform,
  DockerArchiveManifest,
  ImageConfig,
  layerCompression,
  MAX_OCI_CONFIG_BYTES,
  MAX_OCI_DOCUMENT_BYTES,
  OciImageError,
  OciLayoutMarker,
  parseManifestOrIndex,
  parseOciDocument,
  selectPlatform,
  ImageIndex,
  type Descriptor,
  type ImageManifest,
} from "./documents.js";
import type { LayerExpectation } from "./layer.js";

/** An image ready to apply: everything named here has been read privately and checked. */
export interface ResolvedImage {
  /** Digest of the image manifest; absent for a docker-archive, which has none. */
  manifestDigest?: Sha256Digest;
  configDigest: Sha256Digest;
  config: ImageConfig;
  layers: { path: string; expected: LayerExpectation; what: string }[];
}

export interface ResolveOptions {
  signal?: AbortSignal;
  /** Most bytes all layer blobs together may take. */
  maxBlobBytes: number;
  /**
   * Copy layer blobs into the staging dir while hashing them. Only a layout that is already
   * private (a pull's) may skip it. @default true
   */
  copyLayers?: boolean;
}

/** Deepest chain of indexes followed to reach a manifest. */
const MAX_INDEX_DEPTH = 2;
/** Most entries a docker-archive may hold (its files, not the layers' contents). */
const MAX_ARCHIVE_ENTRIES = 4096;

/**
 * Resolves the linux/amd64 image of an OCI layout at `dir`, copying its layer blobs into `stageDir`.
 * @throws OciImageError when the layout is malformed, a blob is missing or does not match its digest.
 */
export async function resolveOciLayout(dir: string, stageDir: string, options: ResolveOptions): Promise<ResolvedImage> {
  const what = `OCI layout ${quote(dir)}`;
  parseOciDocument(OciLayoutMarker, await readCapped(join(dir, "oci-layout"), 4096, `${what}: oci-layout`), `${what}: oci-layout`);
  const index = parseOciDocument(ImageIndex, await readCapped(join(dir, "index.json"), MAX_OCI_DOCUMENT_BYTES, `${what}: index.json`), `${what}: index.json`);
  let descriptor = selectPlatform(index, `${what}: index.json`);
  let manifest: ImageManifest | undefined;
  for (let depth = 0; manifest === undefined; depth++) {
    const bytes = await readBlob(dir, descriptor, MAX_OCI_DOCUMENT_BYTES, `${what}: manifest ${descriptor.digest}`);
    const doc = parseManifestOrIndex(bytes, descriptor.mediaType, `${what}: manifest ${descriptor.digest}`);
    if (doc.kind === "manifest") manifest = doc.manifest;
    else if (depth >= MAX_INDEX_DEPTH) throw new OciImageError("schema", `Cannot read ${what}: indexes nest deeper than ${MAX_INDEX_DEPTH}`);
    else descriptor = selectPlatform(doc.index, `${what}: index ${descriptor.digest}`);
  }
  const configBytes = await readBlob(dir, manifest.config, MAX_OCI_CONFIG_BYTES, `${what}: config ${manifest.config.digest}`);
  const config = parseOciDocument(ImageConfig, configBytes, `${what}: config ${manifest.config.digest}`, MAX_OCI_CONFIG_BYTES);
  checkManifestAgainstConfig(manifest, config, what);
  await mkdir(stageDir, { recursive: true, mode: 0o700 });
  let total = 0;
  const layers: ResolvedImage["layers"] = [];
  for (const [i, layer] of manifest.layers.entries()) {
    const layerWhat = `${what}: layer ${i + 1} ${layer.digest}`;
    const compression = layerCompression(layer.mediaType, layerWhat);
    total += layer.size;
    if (total > options.maxBlobBytes) throw new OciImageError("too-large", `Cannot read ${what}: its layers take more than ${options.maxBlobBytes} bytes`);
    let staged = blobPath(dir, layer.digest);
    if (options.copyLayers !== false) {
      staged = join(stageDir, `${i}-${layer.digest.slice("sha256:".length)}`);
      await stageBlob(dir, layer, staged, layerWhat, options.signal);
    }
    layers.push({ path: staged, expected: { digest: layer.digest as Sha256Digest, size: layer.size, diffId: config.rootfs.diff_ids[i]!, compression }, what: layerWhat });
  }
  return { manifestDigest: descriptor.digest as Sha256Digest, configDigest: manifest.config.digest as Sha256Digest, config, layers };
}

/**
 * Unpacks a tar of an OCI layout into `workDir` (path-safely, bounded) and resolves it. The
 * layout's `blobs/sha256` must be real directories of the archive, never links out of it.
 */
export async function resolveOciArchive(tarPath: string, workDir: string, options: ResolveOptions): Promise<ResolvedImage> {
  const unpacked = join(workDir, "layout");
  await mkdir(unpacked, { recursive: true, mode: 0o700 });
  const writer = new TreeWriter(unpacked, { maxEntries: MAX_ARCHIVE_ENTRIES, maxBytes: options.maxBlobBytes }, options.signal);
  await extractTar(tarPath, writer, options.signal ? { signal: options.signal } : {});
  for (const dir of ["blobs", "blobs/sha256"]) {
    const st = await lstat(join(unpacked, dir)).catch(() => undefined);
    if (st?.isDirectory() !== true) throw new OciImageError("unsafe-entry", `Cannot read OCI layout archive ${quote(tarPath)}: ${quote(dir)} is not a directory of the archive`);
  }
  return resolveOciLayout(unpacked, join(workDir, "s"), { ...options, copyLayers: false });
}

/**
 * Unpacks a docker-archive into `workDir` (path-safely, bounded) and resolves its one image.
 * Layers are named by their diff_ids in the config, whose own digest must match its file name
 * when that name is a digest.
 */
export async function resolveDockerArchive(tarPath: string, workDir: string, options: ResolveOptions): Promise<ResolvedImage> {
  const what = `docker-archive ${quote(tarPath)}`;
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const writer = new TreeWriter(workDir, { maxEntries: MAX_ARCHIVE_ENTRIES, maxBytes: options.maxBlobBytes }, options.signal);
  await extractTar(tarPath, writer, options.signal ? { signal: options.signal } : {});
  const manifest = parseOciDocument(DockerArchiveManifest, await readInside(workDir, "manifest.json", MAX_OCI_DOCUMENT_BYTES, what), `${what}: manifest.json`);
  const entry = manifest[0]!;
  const configBytes = await readInside(workDir, entry.Config, MAX_OCI_CONFIG_BYTES, what);
  const configDigest = sha256(configBytes);
  const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(entry.Config)?.[1];
  if (named !== undefined && `sha256:${named}` !== configDigest) {
    throw new OciImageError("digest-mismatch", `Cannot read ${what}: config ${quote(entry.Config)} hashes to ${configDigest}`);
  }
  const config = parseOciDocument(ImageConfig, configBytes, `${what}: config`, MAX_OCI_CONFIG_BYTES);
  checkConfigPlatform(config, what);
  if (entry.Layers.length !== config.rootfs.diff_ids.length) {
    throw new OciImageError("schema", `Cannot read ${what}: manifest.json lists ${entry.Layers.length} layer(s), the config ${config.rootfs.diff_ids.length} diff_id(s)`);
  }
  const layers: ResolvedImage["layers"] = [];
  for (const [i, rel] of entry.Layers.entries()) {
    const layerWhat = `${what}: layer ${i + 1} ${quote(rel)}`;
    const path = await fileInside(workDir, rel, what);
    const diffId = config.rootfs.diff_ids[i]!;
    const source = entry.LayerSources?.[diffId];
    layers.push({ path, expected: { diffId, ...(source ? { digest: source.digest as Sha256Digest, size: source.size } : {}) }, what: layerWhat });
  }
  return { configDigest, config, layers };
}

function sha256(bytes: Uint8Array): Sha256Digest {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}` as Sha256Digest;
}

function blobPath(dir: string, digest: string): string {
  return join(dir, "blobs", "sha256", digest.slice("sha256:".length));
}

/** Reads a whole regular file (never through a final symlink) of at most `maxBytes`. */
async function readCapped(path: string, maxBytes: number, what: string): Promise<Buffer> {
  let handle;
  try {
    handle = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (cause) {
    throw new OciImageError("missing-blob", `Cannot read ${what}: ${(cause as Error).message}`, { cause });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new OciImageError("schema", `Cannot read ${what}: not a regular file`);
    if (st.size > maxBytes) throw new OciImageError("too-large", `Cannot read ${what}: ${st.size} bytes, over the limit of ${maxBytes}`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const { bytesRead } = await handle.read(buf, off, st.size - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await handle.close();
  }
}

/** Reads a small blob of a layout and checks its size and digest. */
async function readBlob(dir: string, d: Descriptor, maxBytes: number, what: string): Promise<Buffer> {
  if (d.size > maxBytes) throw new OciImageError("too-large", `Cannot read ${what}: its descriptor says ${d.size} bytes, over the limit of ${maxBytes}`);
  const bytes = await readCapped(blobPath(dir, d.digest), maxBytes, what);
  if (bytes.length !== d.size) throw new OciImageError("size-mismatch", `Cannot read ${what}: it is ${bytes.length} bytes, its descriptor says ${d.size}`);
  const actual = sha256(bytes);
  if (actual !== d.digest) throw new OciImageError("digest-mismatch", `Cannot read ${what}: its bytes hash to ${actual}, not ${d.digest}`);
  return bytes;
}

/** Copies a layer blob into a private file, checking its size and digest as it goes. */
async function stageBlob(dir: string, d: Descriptor, dest: string, what: string, signal: AbortSignal | undefined): Promise<void> {
  let src;
  try {
    src = await open(blobPath(dir, d.digest), fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (cause) {
    throw new OciImageError("missing-blob", `Cannot read ${what}: ${(cause as Error).message}`, { cause });
  }
  const out = await open(dest, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  try {
    if (!(await src.stat()).isFile()) throw new OciImageError("schema", `Cannot read ${what}: not a regular file`);
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(1024 * 1024);
    let total = 0;
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await src.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > d.size) throw new OciImageError("size-mismatch", `Cannot read ${what}: it is longer than the ${d.size} bytes its descriptor says`);
      const chunk = buf.subarray(0, bytesRead);
      hash.update(chunk);
      let off = 0;
      while (off < chunk.length) off += (await out.write(chunk, off, chunk.length - off)).bytesWritten;
    }
    if (total !== d.size) throw new OciImageError("size-mismatch", `Cannot read ${what}: it is ${total} bytes, its descriptor says ${d.size}`);
    const actual = `sha256:${hash.digest("hex")}`;
    if (actual !== d.digest) throw new OciImageError("digest-mismatch", `Cannot read ${what}: its bytes hash to ${actual}, not ${d.digest}`);
  } finally {
    await out.close();
    await src.close();
  }
}

/**
 * The path of a regular file at `rel` inside a private unpacked tree, reached through real
 * directories only (the tree may hold symlinks pointing anywhere; none is followed).
 */
async function fileInside(root: string, rel: string, what: string): Promise<string> {
  let parts: string[];
  try {
    parts = splitEntryPath(rel, rel, "path");
  } catch (cause) {
    throw new OciImageError("unsafe-entry", `Cannot read ${what}: ${(cause as Error).message}`, { cause });
  }
  if (parts.length === 0) throw new OciImageError("schema", `Cannot read ${what}: empty path`);
  for (let i = 1; i <= parts.length; i++) {
    const abs = posix.join(root, ...parts.slice(0, i));
    const st = await lstat(abs).catch(() => undefined);
    if (st === undefined) throw new OciImageError("missing-blob", `Cannot read ${what}: ${quote(rel)} is not in the archive`);
    const leaf = i === parts.length;
    if (leaf ? !st.isFile() : !st.isDirectory()) {
      throw new OciImageError("unsafe-entry", `Cannot read ${what}: ${quote(parts.slice(0, i).join("/"))} is ${st.isSymbolicLink() ? "a symbolic link" : leaf ? "not a regular file" : "not a directory"}`);
    }
  }
  return posix.join(root, ...parts);
}

async function readInside(root: string, rel: string, maxBytes: number, what: string): Promise<Buffer> {
  return readCapped(await fileInside(root, rel, what), maxBytes, `${what}: ${quote(rel)}`);
}
