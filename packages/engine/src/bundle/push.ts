/**
 * Making a bundle: the image (verified against its digest first, then written as a tar in the
 * order of its own manifest, so the same image gives the same tar) and, for a snapshot, its parts
 * as the store holds them (every chunk read back and verified), cut into 2 MiB chunks, each chunk
 * once, packed into files of about {@link TARGET_PACK_BYTES}; then the index and bundle.json.
 * Packs are built in a private temp directory and handed to the writer one by one.
 */
import { createHash } from "node:crypto";
import { mkdir, open, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { create as createTar } from "tar";
import { SnapshotMismatchError, parseJsonStrict, type Sha256Digest } from "@mvm/protocol";
import { hashTree } from "../images/digest.js";
import type { ImageRecord } from "../images/store.js";
import { chunkCount, chunkLength, type BlobRef } from "../store/blobs.js";
import { CHUNK_SIZE, blake3Hex, isZero, type ChunkId, type ChunkStore } from "../store/chunks.js";
import { uniqueOwnedName } from "../store/lock.js";
import type { StoredSnapshot } from "../store/snapshot-store.js";
import { BUNDLE_MEDIA_TYPE, BUNDLE_VERSION, TARGET_PACK_BYTES, encodeBundleJson, encodeIndex, type BundleIndex, type BundleJson } from "./format.js";
import type { BlobDescriptor, BundleWriter } from "./transport.js";

/** What a push sends. */
export interface PushInput {
  readonly image: ImageRecord;
  /** With it, a snapshot bundle; without, an image bundle. Its image must be `image`. */
  readonly snapshot?: StoredSnapshot;
  /** The chunk store the snapshot's chunks are in. */
  readonly chunks: ChunkStore;
  readonly writer: BundleWriter;
  /** A directory for this push's temp files (a private subdirectory is made and removed). */
  readonly tmpRoot: string;
  readonly signal?: AbortSignal;
}

/** What a push did. */
export interface PushResult {
  readonly digest: Sha256Digest;
  /** Where it went, pinned: what a pull takes. */
  readonly uri: string;
  readonly kind: "snapshot" | "image";
  /** Bytes of bundle.json, the index and the packs. */
  readonly bytes: number;
  readonly packs: number;
  readonly chunks: number;
}

type ChunkSource = { readonly kind: "store"; readonly id: ChunkId } | { readonly kind: "file"; readonly handle: FileHandle; readonly offset: number; readonly length: number };

/** Pushes one bundle; see the module comment. */
export async function pushBundle(input: PushInput): Promise<PushResult> {
  if (input.snapshot !== undefined && input.snapshot.manifest.shape.imageDigest !== input.image.digest) {
    throw new SnapshotMismatchError(`Snapshot ${input.snapshot.id} is of image ${input.snapshot.manifest.shape.imageDigest}, not ${input.image.digest}`);
  }
  const tmp = join(input.tmpRoot, await uniqueOwnedName());
  await mkdir(tmp, { recursive: true, mode: 0o700 });
  let tarHandle: FileHandle | undefined;
  try {
    const tarPath = join(tmp, "image.tar");
    await writeImageTar(input.image, tarPath, input.signal);
    tarHandle = await open(tarPath, "r");
    const sources = new Map<ChunkId, ChunkSource>();
    const order: ChunkId[] = [];
    const tar = await cutFile(tarHandle, sources, order, input.signal);
    if (input.snapshot !== undefined) {
      for (const blob of Object.values(input.snapshot.manifest.blobs)) {
        if (blob === undefined) continue;
        for (const id of blob.chunks) {
          if (id === null || sources.has(id as ChunkId)) continue;
          sources.set(id as ChunkId, { kind: "store", id: id as ChunkId });
          order.push(id as ChunkId);
        }
      }
    }
    const packs = await writePacks(order, sources, input.chunks, input.writer, tmp, input.signal);
    const index: BundleIndex = { version: BUNDLE_VERSION, packs: packs.map((p) => ({ digest: p.digest, size: p.size, chunks: p.chunks })) };
    const indexEnc = encodeIndex(index);
    await input.writer.putBytes(indexEnc.digest, indexEnc.bytes);
    const bundle: BundleJson = {
      mediaType: BUNDLE_MEDIA_TYPE,
      version: BUNDLE_VERSION,
      kind: input.snapshot === undefined ? "image" : "snapshot",
      createdAt: new Date().toISOString(),
      ...(input.snapshot === undefined ? {} : { snapshot: { digest: input.snapshot.digest, manifest: input.snapshot.manifest, labels: { ...input.snapshot.labels } } }),
      image: { digest: input.image.digest, tar: { sizeBytes: tar.sizeBytes, chunks: [...tar.chunks] } },
      index: { digest: indexEnc.digest, size: indexEnc.bytes.byteLength },
    };
    const bundleEnc = encodeBundleJson(bundle);
    await input.writer.putBytes(bundleEnc.digest, bundleEnc.bytes);
    const uri = await input.writer.finish(
      { digest: bundleEnc.digest, size: bundleEnc.bytes.byteLength },
      { digest: indexEnc.digest, size: indexEnc.bytes.byteLength },
      packs,
    );
    return {
      digest: bundleEnc.digest,
      uri,
      kind: bundle.kind,
      bytes: bundleEnc.bytes.byteLength + indexEnc.bytes.byteLength + packs.reduce((sum, p) => sum + p.size, 0),
      packs: packs.length,
      chunks: order.length,
    };
  } finally {
    await tarHandle?.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Writes the image's tree as a tar, entries in the order of its manifest, no owners, one mtime.
 * The tree is hashed first and must still be the image's digest.
 */
async function writeImageTar(image: ImageRecord, path: string, signal: AbortSignal | undefined): Promise<void> {
  const tree = await hashTree(image.rootfsDir, signal);
  if (tree.digest !== image.digest) throw new SnapshotMismatchError(`Image ${image.digest} does not match its files: they hash to ${tree.digest}`);
  const manifest = parseJsonStrict(tree.manifestBytes.toString("utf8")) as { entries: { path: string }[] };
  const paths = manifest.entries.map((e) => `./${e.path}`);
  await createTar(
    {
      file: path,
      cwd: image.rootfsDir,
      noDirRecurse: true,
      mtime: new Date(0),
      strict: true,
      // One entry at a time. With the default of 4 in flight, a push once stopped for good right
      // after the header of a hard-linked file (its body never written, every stream idle) while
      // other work ran; entries taken in order cannot race on the hard-link cache.
      jobs: 1,
      // Modes exactly as stored (tar's "portable" mode would clear group and other write bits, and
      // the image digest covers modes); owners and times the same on every host.
      onWriteEntry: (entry) => {
        if (entry.stat === undefined) return;
        const stat = Object.create(entry.stat) as NonNullable<typeof entry.stat>;
        Object.assign(stat, { uid: 0, gid: 0, atime: new Date(0), ctime: new Date(0) });
        entry.stat = stat;
      },
    },
    paths.length === 0 ? ["."] : paths,
  );
}

/** Cuts an open file into chunks, registering each non-zero one as read from the file. */
async function cutFile(handle: FileHandle, sources: Map<ChunkId, ChunkSource>, order: ChunkId[], signal: AbortSignal | undefined): Promise<BlobRef> {
  const size = (await handle.stat()).size;
  const chunks: (ChunkId | null)[] = [];
  const buffer = Buffer.allocUnsafe(CHUNK_SIZE);
  for (let i = 0; i < chunkCount(size); i++) {
    signal?.throwIfAborted();
    const length = chunkLength(size, i);
    const bytes = await readAt(handle, buffer, i * CHUNK_SIZE, length);
    if (isZero(bytes)) {
      chunks.push(null);
      continue;
    }
    const id = (await blake3Hex(bytes)) as ChunkId;
    chunks.push(id);
    if (!sources.has(id)) {
      sources.set(id, { kind: "file", handle, offset: i * CHUNK_SIZE, length });
      order.push(id);
    }
  }
  return { sizeBytes: size, chunks };
}

async function readAt(handle: FileHandle, buffer: Buffer, offset: number, length: number): Promise<Buffer> {
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(buffer, filled, length - filled, offset + filled);
    if (bytesRead === 0) throw new SnapshotMismatchError("A file shrank while it was packed");
    filled += bytesRead;
  }
  return buffer.subarray(0, length);
}

interface WrittenPack extends BlobDescriptor {
  readonly chunks: [ChunkId, number][];
}

/** Writes the chunks, in order, into packs of about TARGET_PACK_BYTES, each handed to the writer. */
async function writePacks(order: readonly ChunkId[], sources: ReadonlyMap<ChunkId, ChunkSource>, store: ChunkStore, writer: BundleWriter, tmp: string, signal: AbortSignal | undefined): Promise<WrittenPack[]> {
  const packs: WrittenPack[] = [];
  const buffer = Buffer.allocUnsafe(CHUNK_SIZE);
  let current: { path: string; handle: FileHandle; hash: ReturnType<typeof createHash>; size: number; chunks: [ChunkId, number][] } | undefined;
  const close = async (): Promise<void> => {
    if (current === undefined) return;
    const done = current;
    current = undefined;
    await done.handle.close();
    const pack = { digest: `sha256:${done.hash.digest("hex")}` as Sha256Digest, size: done.size, chunks: done.chunks };
    await writer.putFile(pack, done.path);
    await rm(done.path, { force: true });
    packs.push(pack);
  };
  try {
    for (const id of order) {
      signal?.throwIfAborted();
      const source = sources.get(id)!;
      const bytes = source.kind === "store" ? await store.get(source.id) : await readAt(source.handle, buffer, source.offset, source.length);
      if (current === undefined) {
        const path = join(tmp, `pack-${packs.length}`);
        current = { path, handle: await open(path, "wx", 0o600), hash: createHash("sha256"), size: 0, chunks: [] };
      }
      current.hash.update(bytes);
      await current.handle.write(bytes, 0, bytes.byteLength, current.size);
      current.size += bytes.byteLength;
      current.chunks.push([id, bytes.byteLength]);
      if (current.size >= TARGET_PACK_BYTES) await close();
    }
    await close();
  } finally {
    if (current !== undefined) await current.handle.close().catch(() => undefined);
  }
  return packs;
}
