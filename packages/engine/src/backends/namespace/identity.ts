/**
 * A name for the sandbox user in every image: when the image's /etc/passwd (or /etc/group) has no
 * entry for the sandbox uid (gid), the sandbox sees a copy with `user` added (home /home/user),
 * bind-mounted read-only over the image's file, which stays untouched (images are shared). A
 * tmpfs at /home holds the user's home, so `whoami`, `getpass.getuser()`, `pip install --user`
 * and shells work on images built without the user.
 */
import { lstat, open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { SANDBOX_GID, SANDBOX_UID } from "./bwrap-args.js";

/** Name of the sandbox user added to images that lack an entry for its uid. */
export const SANDBOX_USER = "user";
/** Home of the sandbox user. */
export const SANDBOX_HOME = "/home/user";
/** Largest /etc/passwd or /etc/group read from an image, in bytes. */
const MAX_DB_BYTES = 1024 * 1024;

export interface IdentityFiles {
  /** Host paths of the copies to bind over /etc/passwd and /etc/group; absent when the image's own serve. */
  readonly passwd?: string;
  readonly group?: string;
  /** Whether the image has a /home directory to mount the home tmpfs on. */
  readonly home: boolean;
}

/** Reads a small regular file of the image (never following a symlink out of it); undefined when absent. */
async function readImageFile(rootfsDir: string, rel: string): Promise<string | undefined> {
  const path = join(rootfsDir, rel);
  const st = await lstat(path).catch(() => undefined);
  if (st === undefined || !st.isFile() || st.size > MAX_DB_BYTES) return undefined;
  const handle = await open(path, "r");
  try {
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await handle.read(buf, 0, st.size, 0);
    return buf.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}

/** Whether a passwd or group file has an entry whose third field is `id`. */
export function hasId(db: string, id: number): boolean {
  return db.split("\n").some((line) => line.split(":")[2] === String(id));
}

/** `db` with `entry` appended on a line of its own. */
function withEntry(db: string, entry: string): string {
  return `${db}${db === "" || db.endsWith("\n") ? "" : "\n"}${entry}\n`;
}

/** Whether the image has a /home directory to mount the home tmpfs on. */
export async function imageHasHome(rootfsDir: string): Promise<boolean> {
  return (await lstat(join(rootfsDir, "home")).catch(() => undefined))?.isDirectory() ?? false;
}

/**
 * Writes the copies the sandbox needs into `dir`, an existing directory the sandbox's host uid can
 * search (the relay directory; its names are RELAY_DIR_EXTRA_FILES, removed with it). The files are
 * world-readable: bubblewrap opens them as that uid. An image whose /etc/passwd or /etc/group is
 * missing (or not a regular file) keeps it: there is no mount point to bind over.
 */
export async function prepareIdentity(rootfsDir: string, dir: string, user: { readonly uid: number; readonly gid: number } = { uid: SANDBOX_UID, gid: SANDBOX_GID }): Promise<IdentityFiles> {
  const { uid, gid } = user;
  const passwd = await readImageFile(rootfsDir, "etc/passwd");
  const group = await readImageFile(rootfsDir, "etc/group");
  const shell = (await lstat(join(rootfsDir, "bin/bash")).catch(() => undefined)) !== undefined ? "/bin/bash" : "/bin/sh";
  const out: { passwd?: string; group?: string; home: boolean } = { home: await imageHasHome(rootfsDir) };
  const needPasswd = passwd !== undefined && !hasId(passwd, uid);
  const needGroup = group !== undefined && !hasId(group, gid);
  if (!needPasswd && !needGroup) return out;
  if (needPasswd) {
    out.passwd = join(dir, "passwd");
    await writeFile(out.passwd, withEntry(passwd, `${SANDBOX_USER}:x:${uid}:${gid}:${SANDBOX_USER}:${SANDBOX_HOME}:${shell}`), { mode: 0o644 });
  }
  if (needGroup) {
    out.group = join(dir, "group");
    await writeFile(out.group, withEntry(group, `${SANDBOX_USER}:x:${gid}:`), { mode: 0o644 });
  }
  return out;
}
