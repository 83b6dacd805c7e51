/**
 * Test fixtures: small ext4 images built with `mkfs.ext4 -d`, the physical offset of a file's
 * data found with debugfs, and a one-byte flip. Tests only; the production disk builder is
 * elsewhere.
 */
import { mkdir, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { runTool, stderrTail } from "./_run.js";

export interface TempDir extends AsyncDisposable {
  path: string;
}

export async function tempDir(prefix = "mvm-verity-"): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, [Symbol.asyncDispose]: () => rm(path, { recursive: true, force: true }) };
}

/** Writes `files` (relative path → content) under a fresh directory and makes an ext4 image of it. */
export async function makeExt4Image(dir: string, name: string, files: Record<string, string | Uint8Array>, sizeMiB = 8): Promise<string> {
  const tree = join(dir, `${name}.tree`);
  for (const [rel, content] of Object.entries(files)) {
    const path = join(tree, rel);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, content);
  }
  await mkdir(tree, { recursive: true });
  const image = join(dir, `${name}.ext4`);
  const result = await runTool("mkfs.ext4", ["-q", "-F", "-b", "4096", "-O", "^inline_data", "-d", tree, image, `${sizeMiB}M`]);
  if (result.exitCode !== 0) throw new Error(`mkfs.ext4 failed: ${stderrTail(result.stderr)}`);
  return image;
}

/** Byte offset in the image of the first data block of the file at `pathInFs` (ext4, 4 KiB blocks). */
export async function fileDataOffset(image: string, pathInFs: string): Promise<number> {
  const result = await runTool("debugfs", ["-R", `bmap ${pathInFs} 0`, image]);
  const block = result.stdout.trim();
  if (result.exitCode !== 0 || !/^[1-9][0-9]*$/.test(block)) throw new Error(`debugfs bmap of "${pathInFs}" gave "${block}": ${stderrTail(result.stderr)}`);
  return Number(block) * 4096;
}

export async function readByte(path: string, offset: number): Promise<number> {
  const handle = await open(path, "r");
  try {
    const buffer = Buffer.alloc(1);
    await handle.read(buffer, 0, 1, offset);
    return buffer[0] ?? 0;
  } finally {
    await handle.close();
  }
}

/** Inverts every bit of the byte at `offset`. */
export async function flipByte(path: string, offset: number): Promise<void> {
  const before = await readByte(path, offset);
  const handle = await open(path, "r+");
  try {
    await handle.write(Buffer.from([before ^ 0xff]), 0, 1, offset);
  } finally {
    await handle.close();
  }
}
