/**
 * The host programs that capture and restore a namespace sandbox's /work and /tmp: GNU tar (with
 * its loader and libraries, so that it can run inside a sandbox whose image has none of them),
 * a static busybox (the shell of the restore step), and, for an engine that is not root,
 * unshare (capture runs in a user namespace of its own, see snapshot-capture.ts).
 */
import { open } from "node:fs/promises";
import { UnsupportedCapabilityError } from "@mvm/protocol";
import { listSharedLibraries } from "../../runtime/shared-libs.js";
import { findExecutable, runBounded } from "./probe.js";

export interface SnapshotTools {
  /** GNU tar on the host. */
  readonly tar: string;
  /** tar's dynamic loader and every shared library it needs (host paths). */
  readonly tarLoader: string;
  readonly tarLibraries: readonly string[];
  /** A statically linked busybox (runs in any image: it needs no file of it). */
  readonly busybox: string;
  /** unshare(1), needed only when the engine is not root. */
  readonly unshare: string | undefined;
}

export interface SnapshotToolPaths {
  readonly tarPath?: string;
  readonly busyboxPath?: string;
}

const HINT = "install GNU tar and busybox-static (scripts/setup.sh does), or use the vm backend";

/** ELF type PT_INTERP: a program header naming a dynamic loader. */
const PT_INTERP = 3;

/**
 * True when `path` is a 64-bit little-endian ELF executable without a program interpreter
 * (statically linked, so it runs in an image that has no libc).
 */
export async function isStaticElf(path: string): Promise<boolean> {
  const file = await open(path, "r");
  try {
    const header = Buffer.alloc(64);
    if ((await file.read(header, 0, 64, 0)).bytesRead < 64) return false;
    if (header.readUInt32BE(0) !== 0x7f454c46 || header[4] !== 2 || header[5] !== 1) return false;
    const phoff = Number(header.readBigUInt64LE(32));
    const phentsize = header.readUInt16LE(54);
    const phnum = header.readUInt16LE(56);
    if (phentsize < 4 || phnum === 0 || phnum > 256) return false;
    const table = Buffer.alloc(phentsize * phnum);
    if ((await file.read(table, 0, table.length, phoff)).bytesRead < table.length) return false;
    for (let i = 0; i < phnum; i++) if (table.readUInt32LE(i * phentsize) === PT_INTERP) return false;
    return true;
  } finally {
    await file.close();
  }
}

/** Finds the snapshot tools; throws UnsupportedCapabilityError naming what is missing. */
export async function findSnapshotTools(paths: SnapshotToolPaths, isRoot: boolean): Promise<SnapshotTools> {
  const refuse = (why: string): never => {
    throw new UnsupportedCapabilityError(`Cannot snapshot or restore namespace sandboxes on this host: ${why}`, { hint: HINT });
  };
  const [tar, busybox, unshare] = await Promise.all([
    findExecutable("tar", paths.tarPath),
    findExecutable("busybox", paths.busyboxPath),
    isRoot ? Promise.resolve(undefined) : findExecutable("unshare"),
  ]);
  if (tar === undefined) return refuse("tar was not found");
  const version = await runBounded([tar, "--version"], 10_000);
  if (version.code !== 0 || !version.output.startsWith("tar (GNU tar)")) return refuse(`"${tar}" is not GNU tar`);
  if (busybox === undefined) return refuse("busybox was not found");
  if (!(await isStaticElf(busybox).catch(() => false))) return refuse(`"${busybox}" is not a statically linked busybox`);
  if (!isRoot && unshare === undefined) return refuse("unshare (util-linux) was not found");
  const libs = await listSharedLibraries(tar, "find the libraries of tar");
  return { tar, tarLoader: libs.loader, tarLibraries: libs.libraries.map((l) => l.path), busybox, unshare };
}
