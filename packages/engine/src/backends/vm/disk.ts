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
import { lstat, mkdir, readdir, readlink, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { InternalError, InvalidArgumentError } from "@mvm/protocol";

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
}

export interface DiskImage {
  readonly path: string;
  /** The tree key the image is named by. */
  readonly key: string;
  readonly sizeMiB: number;
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

  let summary: TreeSummary;
  try {
    if (!(await stat(sourceDir)).isDirectory()) throw new InvalidArgumentError(`Source "${sourceDir}" is not a directory`);
    summary = await summarizeTree(sourceDir);
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`Cannot read source directory "${sourceDir}"`, { cause: err });
  }
  const key = createHash("sha256").update(`mvm-ext4 v1 ${label} ${mountPoints.join(",")}\n${summary.key}`).digest("hex");
  const inodes = summary.entries + mountPoints.length + 128;
  const sizeMiB = ext4SizeMiB(summary, inodes);
  const path = join(outRoot, `${key}.ext4`);
  const result = { path, key, sizeMiB };
  try {
    if ((await stat(path)).isFile()) return result;
  } catch {
    // not built yet
  }

  await mkdir(outRoot, { recursive: true, mode: 0o755 });
  const tmp = join(outRoot, `.${key}.${process.pid}.${Date.now()}.tmp`);
  const uuid = uuidFromKey(key);
  try {
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
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    if (err instanceof InvalidArgumentError) throw err;
    throw new InternalError(`Cannot build an ext4 image of "${sourceDir}"`, { cause: err });
  }
  return result;
}
