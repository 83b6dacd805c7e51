/**
 * Snapshot templates: the parts of one snapshot materialized as plain files, read-only, for a
 * backend to restore from (it copies or privately maps them; it never writes them).
 *
 * A template is built under the registry's tmp/ from chunks that are each verified as they are
 * written (blobs.ts `materialize`), its files made 0400 in a 0700 directory, then renamed whole
 * into `templates/<digest hex>/`. Beside the parts sits `.identity`: each file's device, inode,
 * size, mode, mtime and ctime as they were when the build finished, signed with the host key.
 * Before every use the files are checked against it; a write to a part (which changes its ctime
 * even if its mtime is put back), a replaced or added file, or an unsigned identity means the
 * template is no longer the verified one and it is rebuilt from the chunks.
 */
import type { BigIntStats } from "node:fs";
import { lstat, mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { sign, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import { canonicalJson, parseJsonStrict, SnapshotMismatchError } from "@mvm/protocol";
import { keyIdOf } from "../admission/plan.js";
import { fsyncDir, readSmallFile, writeFileAtomic } from "./atomic.js";
import { materialize } from "./blobs.js";
import type { ChunkStore } from "./chunks.js";
import type { SnapshotManifest } from "./manifest.js";

/** The parts a snapshot may have, and the file name of each in a template. */
export const PART_NAMES = ["ram", "device", "work", "tmp"] as const;
export type PartName = (typeof PART_NAMES)[number];

/** Name of the signed identity file in a template directory. */
export const IDENTITY_FILE = ".identity";
const IDENTITY_DOMAIN = "mvm.snapshot-template.v1\n";

const FileIdentity = z.strictObject({
  dev: z.string().regex(/^\d{1,24}$/),
  ino: z.string().regex(/^\d{1,24}$/),
  size: z.string().regex(/^\d{1,24}$/),
  mode: z.number().int().min(0),
  mtimeNs: z.string().regex(/^\d{1,30}$/),
  ctimeNs: z.string().regex(/^\d{1,30}$/),
});
type FileIdentity = z.infer<typeof FileIdentity>;

const IdentitySchema = z.strictObject({
  version: z.literal(1),
  digest: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  dir: z.strictObject({ dev: z.string(), ino: z.string() }),
  files: z.partialRecord(z.enum(PART_NAMES), FileIdentity),
});
type Identity = z.infer<typeof IdentitySchema>;
/** A template's verified identity (what `checkTemplate` caches). */
export type TemplateIdentity = Identity;

const IdentityFileSchema = z.strictObject({
  identity: z.unknown(),
  signature: z.strictObject({ alg: z.literal("ed25519"), keyId: z.string(), value: z.string().regex(/^[0-9a-f]{128}$/) }),
});

function identityOf(st: BigIntStats): FileIdentity {
  return { dev: String(st.dev), ino: String(st.ino), size: String(st.size), mode: Number(st.mode), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs) };
}

/** The parts of `manifest`, by name. */
export function partsOf(manifest: SnapshotManifest): PartName[] {
  return PART_NAMES.filter((p) => manifest.blobs[p] !== undefined);
}

/**
 * Writes every part of `manifest` into the empty directory `dir` (0400 files, every chunk verified
 * as it is written) and signs their identity into `dir/.identity`. Leaves `dir` half-filled on
 * failure: the caller removes it.
 * @throws SnapshotMismatchError when a chunk is missing or does not verify.
 */
export async function buildTemplate(
  chunks: ChunkStore,
  manifest: SnapshotManifest,
  digest: string,
  dir: string,
  privateKey: KeyObject,
  signal?: AbortSignal,
): Promise<void> {
  await mkdir(dir, { mode: 0o700 });
  const files: Partial<Record<PartName, FileIdentity>> = {};
  for (const part of partsOf(manifest)) {
    const path = join(dir, part);
    await materialize(chunks, manifest.blobs[part]!, path, { mode: 0o400, ...(signal ? { signal } : {}) });
    files[part] = identityOf(await lstat(path, { bigint: true }));
  }
  const dirStat = await lstat(dir, { bigint: true });
  const identity: Identity = { version: 1, digest, dir: { dev: String(dirStat.dev), ino: String(dirStat.ino) }, files };
  const value = sign(null, Buffer.from(IDENTITY_DOMAIN + canonicalJson(identity)), privateKey).toString("hex");
  const wire = canonicalJson({ identity, signature: { alg: "ed25519", keyId: keyIdOf(privateKey), value } });
  await writeFileAtomic(join(dir, IDENTITY_FILE), wire, 0o400);
  await fsyncDir(dir);
}

/** Reads and verifies a template's signed identity. @throws SnapshotMismatchError when it does not verify. */
async function readIdentity(dir: string, publicKey: KeyObject): Promise<Identity> {
  let value: unknown;
  try {
    value = parseJsonStrict((await readSmallFile(join(dir, IDENTITY_FILE), 64 * 1024)).toString("utf8"), { maxDepth: 6 });
  } catch (err) {
    throw new SnapshotMismatchError(`Template ${JSON.stringify(dir)} has no readable identity`, { cause: err });
  }
  const outer = IdentityFileSchema.safeParse(value);
  const inner = IdentitySchema.safeParse(outer.data?.identity);
  if (!outer.success || !inner.success) throw new SnapshotMismatchError(`Template ${JSON.stringify(dir)} has a malformed identity`);
  const { signature } = outer.data;
  if (signature.keyId !== keyIdOf(publicKey) || !verify(null, Buffer.from(IDENTITY_DOMAIN + canonicalJson(inner.data)), publicKey, Buffer.from(signature.value, "hex"))) {
    throw new SnapshotMismatchError(`Template ${JSON.stringify(dir)} has a bad identity signature`);
  }
  return inner.data;
}

/**
 * Checks that the template at `dir` is the one built for `digest` with exactly the parts of
 * `manifest`, unchanged since: signed identity, directory entries, and each file's identity.
 * `cache` holds identities already verified by signature in this process.
 * @returns `undefined` when it is intact, otherwise why not.
 */
export async function checkTemplate(
  dir: string,
  manifest: SnapshotManifest,
  digest: string,
  publicKey: KeyObject,
  cache: Map<string, Identity>,
): Promise<string | undefined> {
  let identity = cache.get(dir);
  try {
    const dirStat = await lstat(dir, { bigint: true });
    if (!dirStat.isDirectory() || (dirStat.mode & 0o777n) !== 0o700n) return "its directory is not a 0700 directory";
    if (identity === undefined || identity.dir.ino !== String(dirStat.ino) || identity.dir.dev !== String(dirStat.dev)) {
      cache.delete(dir);
      identity = await readIdentity(dir, publicKey);
      if (identity.dir.ino !== String(dirStat.ino) || identity.dir.dev !== String(dirStat.dev)) return "its directory was replaced";
      cache.set(dir, identity);
    }
    if (identity.digest !== digest) return `it was built for ${identity.digest}`;
    const parts = partsOf(manifest);
    const names = (await readdir(dir)).sort();
    const expected = [IDENTITY_FILE, ...parts].sort();
    if (canonicalJson(names) !== canonicalJson(expected)) return `it holds ${JSON.stringify(names)}, not ${JSON.stringify(expected)}`;
    for (const part of parts) {
      const want = identity.files[part];
      const st = await lstat(join(dir, part), { bigint: true });
      if (want === undefined || !st.isFile()) return `its ${part} is not the file it was built with`;
      if (BigInt(manifest.blobs[part]!.sizeBytes) !== st.size) return `its ${part} has the wrong size`;
      if (canonicalJson(identityOf(st)) !== canonicalJson(want)) return `its ${part} changed since it was built`;
      if ((st.mode & 0o777n) !== 0o400n) return `its ${part} is not mode 0400`;
    }
    return undefined;
  } catch (err) {
    cache.delete(dir);
    if (err instanceof SnapshotMismatchError) return err.message;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR" || code === "ELOOP") return "it is missing";
    throw err;
  }
}
