/**
 * Image layers: verifying a layer blob against its digests, then applying it to a tree.
 *
 * A layer is checked before anything of it is written: its bytes must hash to the manifest's
 * digest (when the source has one) and have the declared size, and its uncompressed bytes must
 * hash to the config's diff_id, within the decompressed-size cap. Only then is it read again and
 * applied through {@link TreeWriter} with whiteouts honoured. Compression is told by the bytes
 * themselves (gzip, zstd or none); a declared media type that disagrees is refused. zstd is
 * decoded by fzstd behind a frame scanner that bounds its memory (zstd.ts).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { pipeline, Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import type { Sha256Digest } from "@mvm/protocol";
import { extractTarStream } from "../extract.js";
import type { TreeWriter } from "../tree-writer.js";
import { OciImageError, type LayerCompression } from "./documents.js";
import { zstdDecompress } from "./zstd.js";

/** Most uncompressed bytes one layer may expand to. @default 16 GiB */
export const DEFAULT_MAX_LAYER_BYTES = 16 * 1024 ** 3;

export interface LayerExpectation {
  /** Digest of the blob as stored (compressed); absent for docker-archive layers named by diff_id only. */
  digest?: Sha256Digest;
  /** Size of the blob in bytes, when a descriptor gives it. */
  size?: number;
  /** sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry). */
  diffId: Sha256Digest;
  /** Compression the media type declares; absent when the source declares none. */
  compression?: LayerCompression;
}

export interface LayerOptions {
  signal?: AbortSignal;
  /** Most uncompressed bytes the layer may expand to. @default DEFAULT_MAX_LAYER_BYTES */
  maxLayerBytes?: number;
}

const GZIP_MAGIC = [0x1f, 0x8b] as const;
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd] as const;

/** Tells a blob's compression from its first bytes. */
export async function sniffCompression(path: string): Promise<LayerCompression> {
  const handle = await open(path, "r");
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    if (bytesRead >= 2 && head[0] === GZIP_MAGIC[0] && head[1] === GZIP_MAGIC[1]) return "gzip";
    if (bytesRead >= 4 && ZSTD_MAGIC.every((b, i) => head[i] === b)) return "zstd";
    return "none";
  } finally {
    await handle.close();
  }
}

async function compressionOf(path: string, expected: LayerExpectation, what: string): Promise<LayerCompression> {
  const actual = await sniffCompression(path);
  if (expected.compression !== undefined && expected.compression !== actual) {
    throw new OciImageError("schema", `Cannot apply ${what}: its media type says ${expected.compression}, its bytes are ${actual === "none" ? "uncompressed" : actual}`);
  }
  return actual;
}

/** The layer's uncompressed bytes, counted against the cap as they are produced. */
async function* uncompressed(path: string, compression: LayerCompression, maxBytes: number, what: string, onRaw?: (chunk: Buffer) => void): AsyncGenerator<Buffer> {
  const raw = createReadStream(path, { highWaterMark: 256 * 1024 });
  const gunzip = compression === "gzip" ? createGunzip() : undefined;
  try {
    const counted = (async function* (): AsyncGenerator<Buffer> {
      for await (const chunk of raw as AsyncIterable<Buffer>) {
        onRaw?.(chunk);
        yield chunk;
      }
    })();
    let source: AsyncIterable<Buffer> = counted;
    if (compression === "zstd") {
      source = zstdDecompress(counted, maxBytes, what);
    } else if (gunzip) {
      pipeline(Readable.from(counted), gunzip, () => undefined);
      source = gunzip;
    }
    let total = 0;
    try {
      for await (const chunk of source) {
        total += chunk.length;
        if (total > maxBytes) throw new OciImageError("too-large", `Cannot apply ${what}: it expands to more than ${maxBytes} bytes`);
        yield chunk;
      }
    } catch (err) {
      if (err instanceof OciImageError) throw err;
      if ((err as NodeJS.ErrnoException).code?.startsWith("Z_") === true) {
        throw new OciImageError("schema", `Cannot apply ${what}: not readable gzip: ${(err as Error).message}`, { cause: err });
      }
      throw err;
    }
  } finally {
    gunzip?.destroy();
    raw.destroy();
  }
}

/**
 * Checks a layer blob against its digest, size and diff_id without writing anything.
 * @throws OciImageError (`digest-mismatch`, `size-mismatch`, `diff-id-mismatch`, `too-large`,
 *   `schema`); UnsupportedCapabilityError for a zstd frame over the decoder's window limit.
 */
export async function verifyLayer(path: string, expected: LayerExpectation, what: string, options: LayerOptions = {}): Promise<void> {
  const compression = await compressionOf(path, expected, what);
  const blobHash = createHash("sha256");
  const diffHash = createHash("sha256");
  let blobBytes = 0;
  const onRaw = (chunk: Buffer): void => {
    blobBytes += chunk.length;
    blobHash.update(chunk);
  };
  for await (const chunk of uncompressed(path, compression, options.maxLayerBytes ?? DEFAULT_MAX_LAYER_BYTES, what, onRaw)) {
    options.signal?.throwIfAborted();
    diffHash.update(chunk);
  }
  if (expected.size !== undefined && blobBytes !== expected.size) {
    throw new OciImageError("size-mismatch", `Cannot apply ${what}: it is ${blobBytes} bytes, its descriptor says ${expected.size}`);
  }
  const blobDigest = `sha256:${blobHash.digest("hex")}`;
  if (expected.digest !== undefined && blobDigest !== expected.digest) {
    throw new OciImageError("digest-mismatch", `Cannot apply ${what}: its bytes hash to ${blobDigest}, not ${expected.digest}`);
  }
  const diffId = `sha256:${diffHash.digest("hex")}`;
  if (diffId !== expected.diffId) {
    throw new OciImageError("diff-id-mismatch", `Cannot apply ${what}: its uncompressed bytes hash to ${diffId}, the config's diff_id is ${expected.diffId}`);
  }
}

/**
 * Verifies a layer (see {@link verifyLayer}) and then applies it on top of what `writer` holds.
 * @throws as verifyLayer; InvalidArgumentError for an entry the writer refuses.
 */
export async function applyLayer(path: string, expected: LayerExpectation, writer: TreeWriter, what: string, options: LayerOptions = {}): Promise<void> {
  await verifyLayer(path, expected, what, options);
  const compression = await compressionOf(path, expected, what);
  writer.startLayer();
  await extractTarStream(uncompressed(path, compression, options.maxLayerBytes ?? DEFAULT_MAX_LAYER_BYTES, what), 0, what, writer, {
    layer: true,
    ...(options.signal ? { signal: options.signal } : {}),
  });
}
