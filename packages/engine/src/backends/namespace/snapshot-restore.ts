/**
 * Restoring a namespace sandbox's /work and /tmp from capture archives, confined to the new
 * sandbox. The extraction is the first thing the sandbox runs: bubblewrap's command is a static
 * busybox shell (executed through an inherited descriptor via a symlink on the new /tmp, which the
 * shell removes first) that runs GNU tar, also from inherited descriptors with its loader and
 * libraries, once per archive, then closes every restore descriptor and execs the agent. So the
 * extraction runs in the sandbox's namespaces, under its seccomp filter and cgroups, as its user,
 * on its size-capped tmpfs mounts; the archives are read from read-only descriptors and no host
 * path is ever named by archive content. The shell reports "ok" on a status pipe; anything else
 * (or the pipe closing) fails the launch.
 *
 *   fd 8   status pipe (sandbox → engine)   fd 9   busybox
 *   fd 10  tar's loader                     fd 11  tar
 *   fd 12… tar's libraries, then the work archive and the tmp archive when present
 */
import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { Readable } from "node:stream";
import { SnapshotMismatchError, UnsupportedCapabilityError } from "@mvm/protocol";
import { settlesWithin } from "../_teardown.js";
import type { LaunchSpec, RestoreSpec } from "../types.js";
import type { CappedLog } from "./agent-log.js";
import { type ExitStatus, TEARDOWN_STEP_MS } from "./launched-sandbox.js";
import { MEMORY_SNAPSHOT_UNSUPPORTED, archiveLimitBytes, type CapturedTree } from "./snapshot-capture.js";
import type { SnapshotTools } from "./snapshot-tools.js";

export const RESTORE_STATUS_FD = 8;
export const RESTORE_SHELL_FD = 9;
const LOADER_FD = 10;
const TAR_FD = 11;
const FIRST_LIBRARY_FD = 12;

/** The directory on the new /tmp that holds the shell's symlink until the shell removes it. */
export const RESTORE_SHELL_DIR = "/tmp/.mvm-restore";
/** Named `sh` so busybox runs its shell applet. */
export const RESTORE_SHELL_PATH = `${RESTORE_SHELL_DIR}/sh`;

/** The largest status report read from the pipe, bytes. */
const MAX_STATUS_BYTES = 256;

/** GNU tar's options for extraction, as the sandbox user: modes kept, owners not, no xattrs. */
export const RESTORE_TAR_ARGS: readonly string[] = [
  "--extract",
  "--file=-",
  "--same-permissions",
  "--no-same-owner",
  "--numeric-owner",
  "--no-xattrs",
  "--no-acls",
  "--no-selinux",
  "--warning=no-timestamp",
];

/** Descriptors the restore step inherits, in fd order from RESTORE_SHELL_FD (the status pipe is extra). */
export interface RestoreFiles {
  readonly handles: readonly FileHandle[];
  /** The trees restored, in the order of their archives' descriptors after the libraries. */
  readonly trees: readonly CapturedTree[];
  readonly libraryCount: number;
}

/**
 * Checks a restore request against this tier and the new caps, and opens every descriptor the
 * restore step needs (the archives with O_NOFOLLOW, regular files only). The caller closes them.
 */
export async function openRestoreFiles(spec: LaunchSpec, restore: RestoreSpec, tools: SnapshotTools): Promise<RestoreFiles> {
  if (restore.memory) {
    throw new UnsupportedCapabilityError(`Cannot restore sandbox "${spec.sandboxId}" with memory: ${MEMORY_SNAPSHOT_UNSUPPORTED.reason}`, {
      hint: MEMORY_SNAPSHOT_UNSUPPORTED.hint,
    });
  }
  for (const part of ["ram", "device"] as const) {
    if (restore.parts[part] !== undefined) {
      throw new SnapshotMismatchError(`Cannot restore sandbox "${spec.sandboxId}": the snapshot has a "${part}" part, which namespace sandboxes do not have`, {
        hint: "restore it on the vm backend",
      });
    }
  }
  const handles: FileHandle[] = [];
  try {
    for (const path of [tools.busybox, tools.tarLoader, tools.tar, ...tools.tarLibraries]) {
      handles.push(
        await open(path, "r").catch((err: unknown) => {
          throw new UnsupportedCapabilityError(`Cannot restore sandbox "${spec.sandboxId}": cannot open "${path}"`, { cause: err });
        }),
      );
    }
    const trees: CapturedTree[] = [];
    for (const tree of ["work", "tmp"] as const) {
      const path = restore.parts[tree];
      if (path === undefined) continue;
      const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: unknown) => {
        throw new SnapshotMismatchError(`Cannot restore sandbox "${spec.sandboxId}": cannot open the ${tree} archive "${path}"`, { cause: err });
      });
      handles.push(handle);
      const st = await handle.stat();
      if (!st.isFile()) throw new SnapshotMismatchError(`Cannot restore sandbox "${spec.sandboxId}": the ${tree} archive "${path}" is not a regular file`);
      const capMiB = tree === "work" ? spec.workMiB : spec.tmpMiB;
      const limit = archiveLimitBytes(capMiB);
      if (st.size > limit) {
        throw new SnapshotMismatchError(
          `Cannot restore sandbox "${spec.sandboxId}": the ${tree} archive (${st.size} bytes) cannot fit /${tree} of ${capMiB} MiB`,
          { hint: `create the sandbox with a larger ${tree}MiB` },
        );
      }
      trees.push(tree);
    }
    return { handles, trees, libraryCount: tools.tarLibraries.length };
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  }
}

/**
 * The shell script of the restore step (busybox sh; the agent's argv follows as "$@"): removes
 * its own symlink, extracts each archive into its tree, reports, closes every restore
 * descriptor and execs the agent. tar's stdout goes to stderr (fd 1 is the agent channel).
 */
export function restoreScript(files: Pick<RestoreFiles, "trees" | "libraryCount">): string {
  const libraryFds = Array.from({ length: files.libraryCount }, (_, i) => FIRST_LIBRARY_FD + i);
  const archiveFds = files.trees.map((_, i) => FIRST_LIBRARY_FD + files.libraryCount + i);
  const preload = libraryFds.map((fd) => `/proc/self/fd/${fd}`).join(" ");
  const closeAll = [RESTORE_STATUS_FD, RESTORE_SHELL_FD, LOADER_FD, TAR_FD, ...libraryFds, ...archiveFds].map((fd) => `${fd}>&-`).join(" ");
  const lines = [
    `rm -rf ${RESTORE_SHELL_DIR} || exit 70`,
    `untar() { /proc/self/fd/${LOADER_FD} --argv0 tar${preload ? ` --preload "${preload}"` : ""} /proc/self/fd/${TAR_FD} ${RESTORE_TAR_ARGS.join(" ")} "$@"; }`,
  ];
  files.trees.forEach((tree, i) => {
    const fd = archiveFds[i] ?? 0;
    lines.push(`untar --directory=/${tree} <&${fd} >&2 ${RESTORE_STATUS_FD}>&- || { echo "${tree} $?" >&${RESTORE_STATUS_FD}; exit 71; }`);
  });
  // The agent gets the environment bubblewrap set, not the shell's additions.
  lines.push(`echo ok >&${RESTORE_STATUS_FD} || exit 72`, `exec ${closeAll}`, "unset SHLVL", 'exec "$@"');
  return lines.join("\n");
}

/** bubblewrap's command for a restoring sandbox: the restore shell, then `agentCommand`. */
export function restoreCommand(files: Pick<RestoreFiles, "trees" | "libraryCount">, agentCommand: readonly string[]): string[] {
  return [RESTORE_SHELL_PATH, "-c", restoreScript(files), "mvm-restore", ...agentCommand];
}

/** What the restore step reported: "ok", or the tree whose extraction failed and tar's exit code. */
export type RestoreOutcome = { readonly ok: true } | { readonly ok: false; readonly tree?: string; readonly code?: number };

/** Reads the status pipe to its end (the shell closes it before exec'ing the agent). */
export function readRestoreOutcome(stream: Readable, signal: AbortSignal | undefined): Promise<RestoreOutcome> {
  return new Promise((resolve, reject) => {
    let text = "";
    const finish = (): void => {
      stream.off("data", onData);
      stream.off("end", finish);
      stream.off("close", finish);
      stream.off("error", finish);
      signal?.removeEventListener("abort", onAbort);
      stream.destroy();
      if (text === "ok\n") return resolve({ ok: true });
      const failed = /^(work|tmp) (\d{1,3})\n$/.exec(text);
      resolve(failed ? { ok: false, tree: failed[1] ?? "", code: Number(failed[2]) } : { ok: false });
    };
    const onData = (chunk: Buffer): void => {
      text += chunk.toString("latin1");
      if (text.length > MAX_STATUS_BYTES) finish();
    };
    const onAbort = (): void => {
      stream.off("data", onData);
      stream.off("end", finish);
      stream.off("close", finish);
      stream.off("error", finish);
      stream.destroy();
      reject(signal?.reason ?? new Error("aborted"));
    };
    if (signal?.aborted) return onAbort();
    stream.on("data", onData);
    stream.once("end", finish);
    stream.once("close", finish);
    stream.once("error", finish);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The launch error for a restore step that did not report success. */
export async function restoreFailure(spec: LaunchSpec, outcome: RestoreOutcome, log: CappedLog, exited: Promise<ExitStatus>): Promise<SnapshotMismatchError> {
  await settlesWithin(exited, TEARDOWN_STEP_MS);
  await log.close(1_000);
  const said = log.headText().trim().slice(0, 600);
  const tree = !outcome.ok ? outcome.tree : undefined;
  const code = !outcome.ok && outcome.code !== undefined ? ` (tar exit code ${outcome.code})` : "";
  if (tree !== undefined && /No space left on device|Disk quota exceeded|Wrote only \d+ of \d+ bytes/.test(said)) {
    const capMiB = tree === "work" ? spec.workMiB : spec.tmpMiB;
    return new SnapshotMismatchError(`Cannot restore sandbox "${spec.sandboxId}": the ${tree} archive does not fit /${tree} of ${capMiB} MiB`, {
      hint: `create the sandbox with a larger ${tree}MiB`,
    });
  }
  return new SnapshotMismatchError(
    `Cannot restore sandbox "${spec.sandboxId}": ${tree !== undefined ? `extracting the ${tree} archive failed${code}` : "the restore step ended without reporting"}${said ? `: ${JSON.stringify(said)}` : ""}`,
  );
}
