/**
 * dm-verity for the VM tier's read-only disks (root filesystem, agent runtime).
 *
 * Layout: by default the hash tree is appended to the disk image right after the filesystem, so a
 * disk is one file and one virtio-blk device:
 *
 *   offset 0                        hashOffsetBytes = dataBlocks × dataBlockSizeBytes
 *   | ext4 data blocks ...          | hash tree (hashBlocks × hashBlockSizeBytes) |
 *
 * No verity superblock is written (`--no-superblock`): every parameter lives in the host's
 * VerityInfo record and is passed explicitly to `veritysetup verify`/`open` and the kernel table,
 * so nothing the guest could rewrite on the disk decides how the disk is checked.
 *
 * The salt defaults to a value derived from the SHA-256 of the data, so the same filesystem image
 * always gets the same root hash. Measured on the 2-core dev host for a 200 MiB ext4 image:
 * formatVerity ≈ 2.0 s (1.1 s of it hashing the data for the salt; pass contentDigestHex to skip
 * that), verifyVerity ≈ 0.6 s.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, rm, stat, truncate } from "node:fs/promises";
import { resolve } from "node:path";
import { AdmissionError, InvalidArgumentError, NotFoundError, type CallOptions } from "@mvm/protocol";
import { abortError, callSignal } from "../../../_internal/signals.js";
import { runTool, stderrTail } from "./_run.js";
import { MAX_SALT_BYTES, parseVerityFormatReport } from "./format-output.js";

/** Block size of data and hash tree, in bytes (the page size the guest kernel needs). */
export const VERITY_BLOCK_SIZE_BYTES = 4096;

/** Everything needed to check or open a verity-protected disk. Trusted: it is the host's record. */
export interface VerityInfo {
  /** Image holding the filesystem. */
  dataPath: string;
  /** File holding the hash tree; equal to dataPath when the tree is appended. */
  hashPath: string;
  /** Where the hash tree starts in hashPath, in bytes. */
  hashOffsetBytes: number;
  dataBlocks: number;
  dataBlockSizeBytes: number;
  hashBlocks: number;
  hashBlockSizeBytes: number;
  hashAlgorithm: "sha256";
  hashType: 1;
  /** Lower-case hex. */
  saltHex: string;
  /** Lower-case hex; goes on the kernel command line or to `veritysetup open`. */
  rootHashHex: string;
  /** Name used in error messages, e.g. "rootfs". */
  label?: string;
}

export interface FormatVerityOptions extends CallOptions {
  /** Filesystem image; its size must be a multiple of 4096 bytes. */
  dataPath: string;
  /**
   * Separate file for the hash tree (created or truncated). Omitted: the tree is appended to
   * dataPath after the data, which then must hold only the filesystem.
   */
  hashPath?: string;
  /** Salt as lower-case hex, 1 to 256 bytes. @default deriveSalt(contentDigestHex) */
  salt?: string;
  /**
   * SHA-256 of the image's data as 64 hex digits, when the caller already has it (e.g. from the
   * image store); the default salt is derived from it. @default computed by reading the image
   */
  contentDigestHex?: string;
  /** Name used in error messages, e.g. "rootfs". */
  label?: string;
}

/** SHA-256 of the first `lengthBytes` bytes of a file, as hex. */
async function digestPrefix(path: string, lengthBytes: number, signal: AbortSignal | undefined): Promise<string> {
  const hash = createHash("sha256");
  if (lengthBytes === 0) return hash.digest("hex");
  const stream = createReadStream(path, { start: 0, end: lengthBytes - 1, highWaterMark: 1024 * 1024, ...(signal ? { signal } : {}) });
  try {
    for await (const chunk of stream) hash.update(chunk as Buffer);
  } catch (cause) {
    if (signal?.aborted) throw abortError(signal, `Hashing ${JSON.stringify(path)}`);
    throw cause;
  }
  return hash.digest("hex");
}

/** The default salt for data with the given SHA-256: 32 bytes, deterministic. */
export function deriveSalt(dataDigestHex: string): string {
  return createHash("sha256").update(`mvm dm-verity salt v1\n${dataDigestHex}`).digest("hex");
}

async function sizeOf(path: string, what: string): Promise<number> {
  try {
    const info = await stat(path);
    if (!info.isFile() && !info.isBlockDevice()) throw new InvalidArgumentError(`${what} ${JSON.stringify(path)} is not a file`);
    return info.size;
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") throw new NotFoundError(`${what} ${JSON.stringify(path)} does not exist`, { cause });
    throw cause;
  }
}

/** The parameter flags shared by `verify` and `open`: every value from the record, none from the disk. */
export function verityParameterArgs(info: VerityInfo): string[] {
  return [
    "--no-superblock",
    `--format=${info.hashType}`,
    `--hash=${info.hashAlgorithm}`,
    `--data-block-size=${info.dataBlockSizeBytes}`,
    `--hash-block-size=${info.hashBlockSizeBytes}`,
    `--data-blocks=${info.dataBlocks}`,
    `--hash-offset=${info.hashOffsetBytes}`,
    `--salt=${info.saltHex}`,
  ];
}

function diskName(info: { dataPath: string; label?: string | undefined }): string {
  return info.label === undefined ? `Disk ${JSON.stringify(info.dataPath)}` : `Disk ${JSON.stringify(info.label)} (${JSON.stringify(info.dataPath)})`;
}

/**
 * Builds the dm-verity hash tree of a filesystem image with `veritysetup format`.
 *
 * @example
 *   const info = await formatVerity({ dataPath: "/var/lib/mvm/vm/rootfs.ext4", label: "rootfs" });
 *   kernelCmdlineFor(info, { dataDevice: "/dev/vda", name: "root" });
 */
export async function formatVerity(options: FormatVerityOptions): Promise<VerityInfo> {
  const signal = callSignal(options);
  if (signal?.aborted) throw abortError(signal, "Formatting dm-verity");
  // Absolute paths: a relative one starting with "-" would read as a veritysetup option.
  const dataPath = resolve(options.dataPath);
  const hashPathOption = options.hashPath === undefined ? undefined : resolve(options.hashPath);
  if (options.salt !== undefined && (!/^(?:[0-9a-f]{2})+$/.test(options.salt) || options.salt.length > MAX_SALT_BYTES * 2)) {
    throw new InvalidArgumentError(`Salt ${JSON.stringify(options.salt)} is not lower-case hex of 1 to ${MAX_SALT_BYTES} bytes`);
  }
  if (options.contentDigestHex !== undefined && !/^[0-9a-f]{64}$/.test(options.contentDigestHex)) {
    throw new InvalidArgumentError(`Content digest ${JSON.stringify(options.contentDigestHex)} is not 64 lower-case hex digits`);
  }
  if (hashPathOption === dataPath) throw new InvalidArgumentError(`Hash path ${JSON.stringify(options.hashPath)} is the data path; omit it to append the tree`);
  const dataSizeBytes = await sizeOf(dataPath, "Disk image");
  if (dataSizeBytes === 0 || dataSizeBytes % VERITY_BLOCK_SIZE_BYTES !== 0) {
    throw new InvalidArgumentError(`Disk image ${JSON.stringify(dataPath)} has size ${dataSizeBytes} bytes, not a positive multiple of ${VERITY_BLOCK_SIZE_BYTES}`);
  }
  const saltHex = options.salt ?? deriveSalt(options.contentDigestHex ?? (await digestPrefix(dataPath, dataSizeBytes, signal)));

  const appended = hashPathOption === undefined;
  const base: Omit<VerityInfo, "hashBlocks" | "rootHashHex"> = {
    dataPath,
    hashPath: hashPathOption ?? dataPath,
    hashOffsetBytes: appended ? dataSizeBytes : 0,
    dataBlocks: dataSizeBytes / VERITY_BLOCK_SIZE_BYTES,
    dataBlockSizeBytes: VERITY_BLOCK_SIZE_BYTES,
    hashBlockSizeBytes: VERITY_BLOCK_SIZE_BYTES,
    hashAlgorithm: "sha256",
    hashType: 1,
    saltHex,
    ...(options.label === undefined ? {} : { label: options.label }),
  };
  try {
    if (!appended) await (await open(base.hashPath, "w", 0o644)).close();
    return await writeHashTree(base, options.label, signal);
  } catch (error) {
    // Leave the image as it was: drop an appended partial tree, or the hash file this call made.
    await (appended ? truncate(dataPath, dataSizeBytes) : rm(base.hashPath, { force: true })).catch(() => undefined);
    throw error;
  }
}

/** Runs `veritysetup format` for `base` and checks its report against what was asked for. */
async function writeHashTree(base: Omit<VerityInfo, "hashBlocks" | "rootHashHex">, label: string | undefined, signal: AbortSignal | undefined): Promise<VerityInfo> {
  const disk = diskName({ dataPath: base.dataPath, label });
  const args = ["format", ...verityParameterArgs({ ...base, hashBlocks: 0, rootHashHex: "" }), base.dataPath, base.hashPath];
  const result = await runTool("veritysetup", args, { signal });
  if (result.exitCode !== 0) {
    throw new AdmissionError(`${disk} could not be formatted for dm-verity: veritysetup exited with ${result.exitCode ?? result.killSignal}: ${stderrTail(result.stderr)}`);
  }
  const report = parseVerityFormatReport(result.stdout);
  const mismatch = (what: string, got: unknown, want: unknown): never => {
    throw new AdmissionError(`${disk}: veritysetup reported ${what} ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
  };
  if (report.dataBlocks !== base.dataBlocks) mismatch("data blocks", report.dataBlocks, base.dataBlocks);
  if (report.dataBlockSizeBytes !== base.dataBlockSizeBytes) mismatch("data block size", report.dataBlockSizeBytes, base.dataBlockSizeBytes);
  if (report.hashBlockSizeBytes !== base.hashBlockSizeBytes) mismatch("hash block size", report.hashBlockSizeBytes, base.hashBlockSizeBytes);
  if (report.saltHex !== base.saltHex) mismatch("salt", report.saltHex, base.saltHex);
  const treeBytes = report.hashBlocks * report.hashBlockSizeBytes;
  if (report.hashDeviceSizeBytes !== undefined && report.hashDeviceSizeBytes !== treeBytes) mismatch("a hash device size", report.hashDeviceSizeBytes, treeBytes);
  const hashFileSize = await sizeOf(base.hashPath, "Hash file");
  if (hashFileSize !== base.hashOffsetBytes + treeBytes) mismatch("a hash file size", hashFileSize, base.hashOffsetBytes + treeBytes);
  return { ...base, hashBlocks: report.hashBlocks, rootHashHex: report.rootHashHex };
}

/**
 * Checks every data block of a disk against its hash tree in userspace (`veritysetup verify`; no
 * device-mapper needed). Throws AdmissionError naming the disk when any block does not match.
 */
export async function verifyVerity(info: VerityInfo, options: CallOptions = {}): Promise<void> {
  const signal = callSignal(options);
  if (!/^[0-9a-f]{64}$/.test(info.rootHashHex)) throw new InvalidArgumentError(`Root hash ${JSON.stringify(info.rootHashHex)} is not 64 lower-case hex digits`);
  await sizeOf(info.dataPath, "Disk image");
  await sizeOf(info.hashPath, "Hash file");
  const args = ["verify", ...verityParameterArgs(info), resolve(info.dataPath), resolve(info.hashPath), info.rootHashHex];
  const result = await runTool("veritysetup", args, { signal });
  if (result.exitCode === 0) return;
  throw new AdmissionError(`${diskName(info)} failed dm-verity verification: ${stderrTail(result.stderr) || `veritysetup exited with ${result.exitCode ?? result.killSignal}`}`, {
    hint: "The disk image was modified after it was built; rebuild it",
  });
}
