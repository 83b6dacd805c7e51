/**
 * Capturing a namespace sandbox's filesystem state: /work and /tmp, each as a GNU-format tar
 * archive. The tree is hostile, so capture reads it only while every process of the sandbox is
 * frozen (nothing can rename, swap a symlink or grow a file under the reader), through a directory
 * descriptor the engine opened on /proc/PID/root/<tree>, with GNU tar that follows no symlink,
 * stays on the one tmpfs, stores numeric owners and no xattrs, and writes to a pipe the engine
 * counts: an archive past its bound is cut off and the capture fails.
 *
 * Mode-000 files and directories must still be read. As root, tar has CAP_DAC_READ_SEARCH. An
 * engine that is not root owns the sandbox's files (uid 1000 inside maps to it), so tar runs in a
 * user namespace of its own where that uid is root (`unshare --map-root-user`), which gives it
 * the same override over those files and nothing else.
 */
import { spawn } from "node:child_process";
import { constants, createWriteStream } from "node:fs";
import { type FileHandle, open, unlink } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { AbortedError, InternalError, MvmError, SnapshotMismatchError, UnsupportedCapabilityError } from "@mvm/protocol";
import { isSameLiveProcess } from "../../_internal/proc.js";
import type { SnapshotTools } from "./snapshot-tools.js";

const MiB = 1024 * 1024;

/** Why a memory snapshot is refused on this tier, and what to use instead. */
export const MEMORY_SNAPSHOT_UNSUPPORTED = {
  reason:
    "process memory on the container tier would need CRIU, which does not work on this host: Debian bookworm's CRIU 3.17 " +
    'fails `criu check` on this kernel ("Unexpected rt vDSO area bounds"); CRIU 4.1.1 dumps a bubblewrap sandbox only with ' +
    "uid 0 mapped inside its user namespace and then fails to restore it (writing net sysctls into the new namespace); and " +
    "CRIU needs capabilities (CAP_SYS_RESOURCE) that the engine does not have",
  hint: "snapshot with { memory: false } for /work and /tmp only, or use the vm backend for memory snapshots",
} as const;

/** The trees a capture archives, by part name. */
export const CAPTURED_TREES = ["work", "tmp"] as const;
export type CapturedTree = (typeof CAPTURED_TREES)[number];

/**
 * The largest archive accepted for a tree whose tmpfs cap is `capMiB`, bytes: the cap plus an
 * eighth of it plus 8 MiB. Data fits within the cap (tmpfs counts whole pages, tar 512-byte
 * blocks); the overhead is for headers of files that take no tmpfs space (empty files,
 * directories, short symlinks, hard links), 512 bytes each and more for long names.
 */
export function archiveLimitBytes(capMiB: number): number {
  return capMiB * MiB + Math.ceil((capMiB * MiB) / 8) + 8 * MiB;
}

/** GNU tar's options for capture (the tree is its working directory, given as fd 3). */
export const CAPTURE_TAR_ARGS: readonly string[] = [
  "--create",
  "--file=-",
  "--format=gnu",
  "--sparse",
  "--numeric-owner",
  "--one-file-system",
  "--no-xattrs",
  "--no-acls",
  "--no-selinux",
  "--directory=/proc/self/fd/3",
  ".",
];

/** What capture needs to know about the sandbox. */
export interface CaptureTarget {
  readonly sandboxId: string;
  /** The sandbox's pid 1, as seen from the host, and its start time (pid reuse check). */
  readonly init: { readonly pid: number; readonly startTime: string };
  readonly workMiB: number;
  readonly tmpMiB: number;
  readonly isRoot: boolean;
}

/** Counts bytes through; fails once more than `limit` have passed. */
class ByteLimit extends Transform {
  bytes = 0;
  exceeded = false;

  constructor(private readonly limit: number) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limit) {
      this.exceeded = true;
      callback(new Error(`more than ${this.limit} bytes`));
      return;
    }
    callback(null, chunk);
  }
}

/**
 * Archives /work and /tmp of a frozen sandbox into `dir` (work.tar, tmp.tar, 0600, created new).
 * The caller freezes the sandbox first and thaws it afterwards. Removes what it wrote when it fails.
 */
export async function captureTrees(
  target: CaptureTarget,
  tools: SnapshotTools,
  dir: string,
  signal: AbortSignal | undefined,
): Promise<Record<CapturedTree, string>> {
  const written: string[] = [];
  try {
    const parts = {} as Record<CapturedTree, string>;
    for (const tree of CAPTURED_TREES) {
      const path = join(dir, `${tree}.tar`);
      written.push(path);
      await captureTree(target, tools, tree, path, signal);
      parts[tree] = path;
    }
    return parts;
  } catch (err) {
    await Promise.all(written.map((p) => unlink(p).catch(() => undefined)));
    if (err instanceof MvmError) throw err;
    throw new InternalError(`Cannot capture the trees of sandbox "${target.sandboxId}" into "${dir}": ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

async function captureTree(
  target: CaptureTarget,
  tools: SnapshotTools,
  tree: CapturedTree,
  path: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const what = `/${tree} of sandbox "${target.sandboxId}"`;
  if (signal?.aborted) throw new AbortedError(`Snapshot of sandbox "${target.sandboxId}" was aborted`, { cause: signal.reason });
  const limit = archiveLimitBytes(tree === "work" ? target.workMiB : target.tmpMiB);
  let treeDir: FileHandle;
  try {
    treeDir = await open(`/proc/${target.init.pid}/root/${tree}`, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (err) {
    throw new InternalError(`Cannot capture ${what}: cannot open its tree`, { cause: err });
  }
  try {
    // The descriptor is the tree of the process that had this start time only if it still runs.
    if (!(await isSameLiveProcess(target.init.pid, target.init.startTime))) {
      throw new InternalError(`Cannot capture ${what}: the sandbox is no longer running`);
    }
    if (!target.isRoot && tools.unshare === undefined) {
      throw new UnsupportedCapabilityError(`Cannot capture ${what}: unshare (util-linux) was not found`, { hint: "install util-linux" });
    }
    const argv = target.isRoot
      ? [tools.tar, ...CAPTURE_TAR_ARGS]
      : [tools.unshare ?? "unshare", "--user", "--map-root-user", "--", tools.tar, ...CAPTURE_TAR_ARGS];
    await runCapture(argv, treeDir.fd, path, limit, what, signal);
  } finally {
    await treeDir.close();
  }
}

/** Runs tar (`argv`) with `treeFd` as its fd 3, its archive streamed into a new file at `path`. */
async function runCapture(
  argv: readonly string[],
  treeFd: number,
  path: string,
  limit: number,
  what: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const out = createWriteStream(path, { flags: "wx", mode: 0o600 });
  await new Promise<void>((resolve, reject) => {
    out.once("open", () => resolve());
    out.once("error", reject);
  });
  const child = spawn(argv[0] ?? "tar", argv.slice(1), {
    stdio: ["ignore", "pipe", "pipe", treeFd],
    cwd: "/",
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
  });
  const exited = new Promise<{ code: number | null; error?: Error }>((resolve) => {
    child.once("error", (error) => resolve({ code: null, error }));
    child.once("close", (code) => resolve({ code }));
  });
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (s: string) => {
    if (stderr.length < 2048) stderr += s.slice(0, 2048 - stderr.length);
  });
  const onAbort = (): void => {
    child.kill("SIGKILL");
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  const counter = new ByteLimit(limit);
  try {
    const copied = child.stdout === null ? Promise.reject(new Error("no stdout")) : pipeline(child.stdout, counter, out);
    const copyError = await copied.then(
      () => undefined,
      (err: unknown) => {
        child.kill("SIGKILL");
        return err;
      },
    );
    const { code, error } = await exited;
    if (signal?.aborted) throw new AbortedError(`Capture of ${what} was aborted`, { cause: signal.reason });
    if (counter.exceeded) {
      throw new SnapshotMismatchError(`Cannot capture ${what}: its archive is larger than ${limit} bytes`, {
        hint: "a tree with very many empty files, directories or links does not fit a snapshot of this sandbox's size; remove some, or give the sandbox a larger cap",
      });
    }
    if (error !== undefined || copyError !== undefined) throw new InternalError(`Cannot capture ${what}: ${String(error ?? copyError)}`, { cause: error ?? copyError });
    if (code !== 0) {
      throw new InternalError(`Cannot capture ${what}: tar exited with code ${code}: ${JSON.stringify(stderr.trim().slice(0, 600))}`);
    }
    const written = await open(path, "r");
    await written.sync().finally(() => written.close());
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    if (!out.closed) await new Promise<void>((resolve) => out.destroy().once("close", () => resolve()));
  }
}
