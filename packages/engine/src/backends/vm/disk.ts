/**
 * Read-only ext4 disk images built from host directories (the image root filesystem, the agent
 * runtime), with `mkfs.ext4 -d`. An image is stored as `outRoot/<key>.ext4` where the key is the
 * sha256 of a listing of the source tree (path, type, mode, owner, size, mtime, link target) and
 * the build options, so an unchanged directory maps to the same file and is not rebuilt.
 *
 * Builds are reproducible for a given tree: the UUID and directory hash seed are derived from
 * the key, and mke2fs's clock is pinned with E2FSPROGS_FAKE_TIME.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { lstat, mkdir, readFile, readdir, readlink, rm, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { AdmissionError, InternalError, InvalidArgumentError, MvmError } from "@mvm/protocol";
import { formatVerity, verifyVerity, type VerityInfo } from "./verity/index.js";
import { publishFile, removeDeadTemps, writeFileAtomic } from "../../store/atomic.js";

const run = promisify(execFile);
const BLOCK = 4096;
const MiB = 1024 * 1024;

export interface TreeSummary {
  /** sha256 hex of the listing. */
  readonly key: string;
  /** Files, directories, symlinks and other entries, the root included. */
  readonly entries: number;
  /** Bytes of file data rounded up to whole blocks, plus one block per directory. */
  readonly dataBytes: number;
}

/** Walks `dir` without following symlinks and summarizes it. */
export async function summarizeTree(dir: string): Promise<TreeSummary> {
  const hash = createHash("sha256");
  let entries = 0;
  let dataBytes = 0;
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === "" ? dir : join(dir, rel);
    const st = await lstat(abs);
    entries++;
    const kind = st.isDirectory() ? "d" : st.isFile() ? "f" : st.isSymbolicLink() ? "l" : "o";
    const target = kind === "l" ? await readlink(abs) : "";
    hash.update(`${kind} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeMs} ${JSON.stringify(rel)} ${JSON.stringify(target)}\n`);
    if (kind === "f") dataBytes += Math.ceil(st.size / BLOCK) * BLOCK;
    if (kind === "l" && target.length >= 60) dataBytes += BLOCK;
    if (kind === "d") {
      dataBytes += BLOCK;
      const names = (await readdir(abs)).sort();
      for (const name of names) await walk(rel === "" ? name : `${rel}/${name}`);
    }
  };
  await walk("");
  return { key: hash.digest("hex"), entries, dataBytes };
}

/** The image size for a tree: data plus inode tables plus a fixed margin for metadata, MiB. */
export function ext4SizeMiB(summary: Pick<TreeSummary, "entries" | "dataBytes">, inodes: number): number {
  const bytes = summary.dataBytes * 1.1 + inodes * 256 + 16 * MiB;
  return Math.ceil(bytes / MiB);
}

/** A UUID string made from the first 16 bytes of a hex key (stable per key). */
export function uuidFromKey(hex: string): string {
  const h = hex.slice(0, 32).padEnd(32, "0");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

export interface BuildDiskOptions {
  /** Directory whose contents become the filesystem root. */
  readonly sourceDir: string;
  /** Directory holding built images. Created 0755 if missing. */
  readonly outRoot: string;
  /**
   * Top-level directories the image must have (mount points), created empty (root, 0755) in the
   * image when the source lacks them. @default []
   */
  readonly mountPoints?: readonly string[];
  /** Volume label (at most 16 bytes). @default "mvm" */
  readonly label?: string;
  /**
   * Append a dm-verity hash tree to the image and record its parameters beside it in
   * `<key>.verity.json`. @default false
   */
  readonly verity?: boolean;
  /**
   * The identity of an immutable source tree (e.g. an image digest) when the caller knows one:
   * the disk is then named by it and the tree is only walked to build it.
   */
  readonly contentKey?: string;
}

export interface DiskImage {
  readonly path: string;
  /** The tree key the image is named by. */
  readonly key: string;
  /** Size of the filesystem (without a hash tree), MiB. */
  readonly sizeMiB: number;
  /** The hash tree's parameters and root hash, when built with `verity`. */
  readonly verity?: VerityInfo;
}

/** Reads a stored verity record; undefined when missing or not for `path`. */
async function readVerityRecord(recordPath: string, path: string): Promise<VerityInfo | undefined> {
  try {
    const info = JSON.parse(await readFile(recordPath, "utf8")) as VerityInfo;
    if (info.dataPath !== path || info.hashPath !== path || !/^[0-9a-f]{64}$/.test(info.rootHashHex)) return undefined;
    return info;
  } catch {
    return undefined;
  }
}

/**
 * Builds (or reuses) an ext4 image of `sourceDir`. Needs mkfs.ext4 (and debugfs for mount points).
 * @example const disk = await buildExt4Image({ sourceDir: runtime.dir, outRoot: "/var/lib/mvm/disks" });
 */
export async function buildExt4Image(options: BuildDiskOptions): Promise<DiskImage> {
  const { sourceDir, outRoot } = options;
  const label = options.label ?? "mvm";
  const mountPoints = options.mountPoints ?? [];
  for (const [name, path] of [["sourceDir", sourceDir], ["outRoot", outRoot]] as const) {
    if (!path.startsWith("/")) throw new InvalidArgumentError(`Invalid ${name} "${path}": must be an absolute path`);
  }
  for (const mp of mountPoints) {
    if (!/^\.?[a-z0-9_-]+$/i.test(mp) || mp === "..") throw new InvalidArgumentError(`Invalid mount point "${mp}"`);
  }
  if (!/^[A-Za-z0-9_.-]{1,16}$/.test(label)) throw new InvalidArgumentError(`Invalid volume label "${label}"`);

  const summarize = async (): Promise<TreeSummary> => {
    try {
      if (!(await stat(sourceDir)).isDirectory()) throw new InvalidArgumentError(`Source "${sourceDir}" is not a directory`);
      return await summarizeTree(sourceDir);
    } catch (err) {
      if (err instanceof InvalidArgumentError) throw err;
      throw new InvalidArgumentError(`Cannot read source directory "${sourceDir}"`, { cause: err });
    }
  };
  if (options.contentKey !== undefined && !/^[A-Za-z0-9:_.-]{1,200}$/.test(options.contentKey)) {
    throw new InvalidArgumentError(`Invalid content key "${options.contentKey}"`);
  }
  let summary = options.contentKey === undefined ? await summarize() : undefined;
  const verity = options.verity ?? false;
  const treeKey = options.contentKey !== undefined ? `content ${options.contentKey}` : summary!.key;
  const key = createHash("sha256").update(`mvm-ext4 v1 ${label} ${mountPoints.join(",")}${verity ? " verity" : ""}\n${treeKey}`).digest("hex");
  const path = join(outRoot, `${key}.ext4`);
  const recordPath = join(outRoot, `${key}.verity.json`);
  try {
    if ((await stat(path)).isFile()) {
      const sizeMiB = Math.ceil((await stat(path)).size / MiB);
      if (!verity) return { path, key, sizeMiB };
      const info = await readVerityRecord(recordPath, path);
      if (info !== undefined) return { path, key, sizeMiB: Math.ceil((info.dataBlocks * BLOCK) / MiB), verity: info };
    }
  } catch {
    // not built yet
  }
  summary ??= await summarize();
  const inodes = summary.entries + mountPoints.length + 128;
  const sizeMiB = ext4SizeMiB(summary, inodes);
  const result = { path, key, sizeMiB };

  await mkdir(outRoot, { recursive: true, mode: 0o755 });
  await removeDeadTemps(outRoot);
  const uuid = uuidFromKey(key);
  try {
    // The disk goes into place before its record: a record never names bytes that are not there.
    const built = await publishFile(path, async (tmp) => {
      await run(
        "mkfs.ext4",
        [
          "-q", "-F", "-t", "ext4", "-b", String(BLOCK), "-I", "256", "-N", String(inodes), "-m", "0",
          "-O", "^has_journal,^resize_inode",
          "-U", uuid, "-L", label,
          "-E", `root_owner=0:0,hash_seed=${uuid},lazy_itable_init=0,nodiscard`,
          "-d", sourceDir, tmp, `${sizeMiB}M`,
        ],
        { env: { ...process.env, E2FSPROGS_FAKE_TIME: "1", MKE2FS_CONFIG: "/etc/mke2fs.conf" }, maxBuffer: 1 << 20 },
      );
      const missing: string[] = [];
      for (const mp of mountPoints) {
        const st = await lstat(join(sourceDir, mp)).catch(() => undefined);
        if (st === undefined) missing.push(mp);
        else if (!st.isDirectory()) throw new InvalidArgumentError(`Mount point "${mp}" in "${sourceDir}" is not a directory`);
      }
      for (const mp of missing) {
        await run("debugfs", ["-w", "-R", `mkdir /${mp}`, tmp], { env: { ...process.env, E2FSPROGS_FAKE_TIME: "1" } });
      }
      return verity ? await formatVerity({ dataPath: tmp, label }) : undefined;
    });
    if (built === undefined) return result;
    const info: VerityInfo = { ...built, dataPath: path, hashPath: path };
    await writeFileAtomic(recordPath, JSON.stringify(info), 0o644);
    return { ...result, verity: info };
  } catch (err) {
    if (err instanceof MvmError) throw err;
    throw new InternalError(`Cannot build an ext4 image of "${sourceDir}"`, { cause: err });
  }
}

/**
 * Checks every block of a verity disk against its recorded root hash, once per file identity
 * (device, inode, size, mtime, ctime, root hash): the identity of a checked disk is kept in
 * `<disk>.verified` beside it, and any write to the disk changes its mtime and ctime and forces a
 * new check. Throws AdmissionError when the disk was modified after it was built. The guest checks
 * every block it reads as well.
 */
export async function verifyDiskOnce(info: VerityInfo): Promise<void> {
  const st = await stat(info.dataPath, { bigint: true });
  const identity = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${info.rootHashHex}`;
  const stampPath = `${info.dataPath}.verified`;
  if ((await readFile(stampPath, "utf8").catch(() => "")) === identity) return;
  await verifyVerity(info);
  await writeFileAtomic(stampPath, identity, 0o600);
}

/**
 * Makes the writable per-sandbox disk: a sparse file of `sizeMiB` holding an empty ext4 (no
 * journal, no lost+found) labelled `label` whose root directory belongs to `ownerUid`.
 * The size is the cap on what the sandbox can write there.
 */
export async function createWorkDisk(path: string, sizeMiB: number, ownerUid: number, label: string): Promise<void> {
  if (!path.startsWith("/")) throw new InvalidArgumentError(`Invalid work disk path "${path}": must be an absolute path`);
  if (!Number.isInteger(sizeMiB) || sizeMiB < 8 || sizeMiB > 1024 * 1024) throw new InvalidArgumentError(`Invalid work disk size "${sizeMiB}": must be 8 to 1048576 MiB`);
  try {
    await writeFile(path, "", { mode: 0o600, flag: "wx" });
    await truncate(path, sizeMiB * MiB);
    await run(
      "mkfs.ext4",
      ["-q", "-F", "-t", "ext4", "-b", String(BLOCK), "-m", "0", "-O", "^has_journal,^resize_inode", "-L", label,
        "-E", `root_owner=${ownerUid}:${ownerUid},lazy_itable_init=0,nodiscard`, path],
      { env: { ...process.env, MKE2FS_CONFIG: "/etc/mke2fs.conf" }, maxBuffer: 1 << 20 },
    );
    await run("debugfs", ["-w", "-R", "rmdir /lost+found", path], { maxBuffer: 1 << 20 });
  } catch (err) {
    await rm(path, { force: true });
    throw new AdmissionError(`Cannot make the work disk "${path}"`, { cause: err });
  }
}
