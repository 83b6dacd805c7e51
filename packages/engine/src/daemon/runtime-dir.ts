/**
 * The daemon's private runtime directory and its socket file: the directory is 0700 and ours
 * (0710 and group-owned when an operator group may connect), the socket 0600 (0660), and a
 * socket file left by a dead daemon is removed only when nothing answers on it.
 */
import { connect } from "node:net";
import { chown, lstat, mkdir, chmod, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { AlreadyExistsError, InvalidArgumentError, PermissionDeniedError } from "@mvm/protocol";

/** The uid this process runs as (-1 where the platform has none). */
function ownUid(): number {
  return process.getuid?.() ?? -1;
}

/**
 * Creates `dir` with mode 0700 (parents too, also 0700), or checks an existing one: it must be a
 * real directory (not a symlink), owned by this process's uid, and closed to group and others.
 * With `groupGid`, the directory is then made 0710 and owned by that group (its members may
 * reach the socket inside, not list the directory); an existing one may already be so.
 * @throws PermissionDeniedError when an existing directory fails those checks
 */
export async function ensurePrivateDir(dir: string, options: { groupGid?: number } = {}): Promise<void> {
  if (!dir.startsWith("/")) throw new InvalidArgumentError(`Runtime directory "${dir}" is not an absolute path`);
  await mkdir(dirname(dir), { recursive: true, mode: 0o700 });
  let created = false;
  try {
    await mkdir(dir, { mode: 0o700 });
    created = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  // The umask may have narrowed the mode of a fresh directory; make it exactly 0700.
  if (created) await chmod(dir, 0o700);
  const st = await lstat(dir);
  if (!st.isDirectory()) {
    throw new PermissionDeniedError(`Runtime directory "${dir}" is not a directory`, {
      hint: "Remove it or choose another socket path",
    });
  }
  if (st.uid !== ownUid()) {
    throw new PermissionDeniedError(`Runtime directory "${dir}" is owned by uid ${st.uid}, not ${ownUid()}`, {
      hint: "Use a directory you own, or remove this one",
    });
  }
  const { groupGid } = options;
  const groupOk = groupGid !== undefined && st.gid === groupGid && (st.mode & 0o027) === 0;
  if ((st.mode & 0o077) !== 0 && !groupOk) {
    throw new PermissionDeniedError(
      `Runtime directory "${dir}" has mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}, open to group or others`,
      { hint: `Run: chmod 700 ${dir}` },
    );
  }
  if (groupGid !== undefined) {
    await giveToGroup(dir, st.uid, groupGid);
    await chmod(dir, 0o710);
  }
}

/**
 * Makes `path` owned by group `gid` (its owner unchanged).
 * @throws PermissionDeniedError when this process may not (it is neither root nor a member)
 */
export async function giveToGroup(path: string, uid: number, gid: number): Promise<void> {
  try {
    await chown(path, uid, gid);
  } catch (err) {
    throw new PermissionDeniedError(`Cannot give "${path}" to group ${gid}: ${(err as Error).message}`, {
      cause: err,
      hint: "Run the daemon as root, or as a member of that group",
    });
  }
}

/** Resolves true when something accepts a connection on the Unix socket at `path`. */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", (err: NodeJS.ErrnoException) => {
      sock.destroy();
      if (err.code === "ECONNREFUSED" || err.code === "ENOENT") resolve(false);
      else reject(err);
    });
  });
}

/**
 * Makes `path` free for a new listening socket: absent is fine; a socket nobody answers on is
 * removed; a live socket or any other kind of file is refused.
 * @throws AlreadyExistsError when a daemon already answers there, or the path is not a socket
 */
export async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new AlreadyExistsError(`Socket path "${path}" exists and is not a socket`, {
      hint: "Remove the file or choose another socket path",
    });
  }
  if (await socketAnswers(path)) {
    throw new AlreadyExistsError(`A daemon already answers on "${path}"`, {
      hint: "Stop it first, or choose another socket path",
    });
  }
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}
