/**
 * refs.json: the store's map from references (canonical `debian:` refs and local names) to digests.
 * Written only under the store lock and always atomically (temp file + rename), so readers without
 * the lock see a whole index.
 *
 *   { "version": 1, "refs": { "debian:bookworm+python3": "sha256:…", "mytool": "sha256:…" } }
 */
import { z } from "zod";
import { ImageRefSchema, InternalError, Sha256DigestSchema, type Sha256Digest } from "@mvm/protocol";
import { readSmallFile, writeFileAtomic } from "../store/atomic.js";

const MAX_INDEX_BYTES = 16 * 1024 * 1024;

const RefsFile = z.strictObject({
  version: z.literal(1),
  refs: z.record(ImageRefSchema, Sha256DigestSchema),
});

export type RefsMap = Map<string, Sha256Digest>;

/** Reads the index; a missing file is an empty index. */
export async function readRefs(path: string): Promise<RefsMap> {
  let raw: Buffer;
  try {
    raw = await readSmallFile(path, MAX_INDEX_BYTES);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return new Map();
    throw err;
  }
  let parsed: z.infer<typeof RefsFile>;
  try {
    parsed = RefsFile.parse(JSON.parse(raw.toString("utf8")));
  } catch (cause) {
    throw new InternalError(`Image index ${JSON.stringify(path)} is corrupt`, {
      cause,
      hint: "restore it from a backup or remove it (images then need importing or building again)",
    });
  }
  return new Map(Object.entries(parsed.refs) as [string, Sha256Digest][]);
}

/** Replaces the index atomically. Keys are written sorted so equal maps give equal files. */
export async function writeRefs(path: string, refs: RefsMap): Promise<void> {
  const sorted = Object.fromEntries([...refs.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  await writeFileAtomic(path, `${JSON.stringify({ version: 1, refs: sorted }, null, 2)}\n`);
}
