/**
 * Pulling a bundle, in this order, each step before the next:
 *
 * 1. bundle.json, at most {@link MAX_BUNDLE_JSON_BYTES}: its sha256 must be the digest the source
 *    is pinned to, before a byte of it is parsed; then the strict decoder.
 * 2. The index bundle.json names (sha256 and size), then its cross-checks against the bundle.
 * 3. Each pack the index names that holds a chunk the local store lacks (a chunk present locally
 *    is re-verified by BLAKE3 first; one that fails counts as missing): sha256 and size as it
 *    streams into a private temp file, then each chunk's BLAKE3 before it enters the store.
 * 4. The image: kept when the local image store has it and it verifies; otherwise rebuilt from
 *    its (verified) chunks as a tar, unpacked path-safely, and stored only if its tree hashes to
 *    the bundle's image digest.
 * 5. The snapshot: every chunk of every part read back and verified, then registered under a
 *    record signed by this host.
 *
 * Nothing but the blobs the validated metadata names is fetched. On any failure the temp files
 * go, an image this pull stored is removed, and chunks no record names are removed; a failure
 * leaves the local stores as they were.
 */
import { mkdir, open, rm } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, SnapshotMismatchError, type Sha256Digest } from "@mvm/protocol";
import type { ImageRecord, ImageStore } from "../images/store.js";
import { materialize } from "../store/blobs.js";
import type { ChunkId } from "../store/chunks.js";
import { uniqueOwnedName } from "../store/lock.js";
import type { StoredRetention } from "../store/snapshot-record.js";
import type { SnapshotStore, StoredSnapshot } from "../store/snapshot-store.js";
import { MAX_BUNDLE_JSON_BYTES, decodeBundleJson, decodeIndex, type BundleJson } from "./format.js";
import type { BundleReader } from "./transport.js";

/** What a pull takes. */
export interface PullInput {
  readonly digest: Sha256Digest;
  readonly reader: BundleReader;
  readonly snapshots: SnapshotStore;
  readonly images: ImageStore;
  /** How long a pulled snapshot is kept (required for snapshot bundles). */
  readonly retention?: StoredRetention;
  /** A directory for this pull's temp files (a private subdirectory is made and removed). */
  readonly tmpRoot: string;
  readonly signal?: AbortSignal;
}

/** What a pull did. */
export interface PullResult {
  readonly digest: Sha256Digest;
  readonly kind: BundleJson["kind"];
  readonly image: ImageRecord;
  readonly snapshot?: StoredSnapshot;
  /** Bytes fetched (bundle.json, index, packs). */
  readonly fetchedBytes: number;
  /** Packs fetched, of those the index names. */
  readonly packsFetched: number;
  readonly packs: number;
  /** Chunks already in the local store (re-verified), not fetched. */
  readonly chunksReused: number;
}

/** The name a pulled image is stored under (images always have one). */
export function bundleImageName(digest: string): string {
  return `bundle-${digest.slice("sha256:".length, "sha256:".length + 16)}`;
}

/** Pulls one bundle into the local stores; see the module comment. */
export async function pullBundle(input: PullInput): Promise<PullResult> {
  const { reader, snapshots, images, signal } = input;
  const bundleBytes = await reader.readCapped(input.digest, MAX_BUNDLE_JSON_BYTES);
  const bundle = decodeBundleJson(bundleBytes, input.digest);
  if (bundle.kind === "snapshot" && input.retention === undefined) {
    throw new InvalidArgumentError(`Bundle ${input.digest} holds a snapshot: the pull needs a retention for it`, { hint: "pass { retention: { ttlSeconds } } or { retention: { manual: true } } (mvmctl: --ttl SECONDS or --keep)" });
  }
  const indexBytes = await reader.readExact(bundle.index);
  const index = decodeIndex(indexBytes, bundle);
  let fetchedBytes = bundleBytes.byteLength + indexBytes.byteLength;
  let packsFetched = 0;
  let chunksReused = 0;
  const tmp = join(input.tmpRoot, await uniqueOwnedName());
  await mkdir(tmp, { recursive: true, mode: 0o700 });
  let importedImage: string | undefined;
  let ok = false;
  try {
    const result = await snapshots.withChunkWrites(async () => {
      const present = await presentImage(bundle, images);
      const wanted = wantedChunks(bundle, present === undefined);
      for (const [n, pack] of index.packs.entries()) {
        signal?.throwIfAborted();
        const missing = new Set<string>();
        for (const [id] of pack.chunks) {
          if (!wanted.has(id)) continue;
          if (await snapshots.chunks.has(id as ChunkId)) chunksReused++;
          else missing.add(id);
        }
        if (missing.size === 0) continue;
        const path = join(tmp, `pack-${n}`);
        await reader.readToFile(pack, path);
        fetchedBytes += pack.size;
        packsFetched++;
        const handle = await open(path, "r");
        try {
          let offset = 0;
          for (const [id, length] of pack.chunks) {
            if (missing.has(id)) {
              const bytes = Buffer.allocUnsafe(length);
              const { bytesRead } = await handle.read(bytes, 0, length, offset);
              if (bytesRead !== length) throw new SnapshotMismatchError(`Bundle pack ${pack.digest} is shorter than its index says`);
              await snapshots.chunks.put(bytes, id as ChunkId);
            }
            offset += length;
          }
        } finally {
          await handle.close();
          await rm(path, { force: true });
        }
      }
      const image = present ?? (await importImage(bundle, images, snapshots, tmp, signal, (name) => (importedImage = name)));
      let snapshot: StoredSnapshot | undefined;
      if (bundle.snapshot !== undefined) {
        snapshot = await snapshots.adopt({
          manifest: bundle.snapshot.manifest,
          source: "bundle",
          retention: input.retention!,
          labels: bundle.snapshot.labels,
          ...(signal ? { signal } : {}),
        });
      }
      return { image, snapshot };
    });
    ok = true;
    return {
      digest: input.digest,
      kind: bundle.kind,
      image: result.image,
      ...(result.snapshot === undefined ? {} : { snapshot: result.snapshot }),
      fetchedBytes,
      packsFetched,
      packs: index.packs.length,
      chunksReused,
    };
  } finally {
    await rm(tmp, { recursive: true, force: true });
    if (!ok && importedImage !== undefined) await images.remove(importedImage).catch(() => undefined);
    // The image's chunks (and, after a failure, every chunk this pull wrote) are named by no record.
    await snapshots.removeUnnamedChunks().catch(() => undefined);
  }
}

/** The bundle's image when the local store has it and it verifies (one that does not is removed). */
async function presentImage(bundle: BundleJson, images: ImageStore): Promise<ImageRecord | undefined> {
  const digest = bundle.image.digest as Sha256Digest;
  const present = await images.resolve(digest);
  if (present === undefined) return undefined;
  if (await images.verify(digest)) return present;
  await images.remove(digest);
  return undefined;
}

/** The chunks this pull needs: the snapshot's, and the image's unless the image is here. */
function wantedChunks(bundle: BundleJson, withImage: boolean): Set<string> {
  const wanted = new Set<string>();
  const blobs = [...(withImage ? [bundle.image.tar] : []), ...Object.values(bundle.snapshot?.manifest.blobs ?? {})];
  for (const blob of blobs) for (const id of blob?.chunks ?? []) if (id !== null) wanted.add(id);
  return wanted;
}

/** Makes the bundle's image from its (verified) chunks: a tar, unpacked and stored only if it hashes to the digest. */
async function importImage(bundle: BundleJson, images: ImageStore, snapshots: SnapshotStore, tmp: string, signal: AbortSignal | undefined, imported: (name: string) => void): Promise<ImageRecord> {
  const digest = bundle.image.digest as Sha256Digest;
  const tarPath = join(tmp, "image.tar");
  await materialize(snapshots.chunks, bundle.image.tar, tarPath, signal ? { signal } : {});
  const name = bundleImageName(digest);
  const record = await images.importExpected(tarPath, digest, name, signal ? { signal } : {});
  imported(name);
  await rm(tarPath, { force: true });
  return record;
}
