/**
 * The OCI config's `User` resolved to the numeric uid and gid a sandbox runs as: `uid`, `uid:gid`,
 * `name`, `name:group` (and mixes), names looked up in the image's own /etc/passwd and /etc/group,
 * read path-safely (no symlink followed anywhere on the way, regular files, size-capped). Root
 * (uid or gid 0) is never mapped: every tier runs workloads unprivileged.
 */
import { constants } from "node:fs";
import { lstat, open } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, UnsupportedCapabilityError } from "@mvm/protocol";

/** A numeric identity inside the sandbox. */
export interface ImageUser {
  readonly uid: number;
  readonly gid: number;
}

/** Largest /etc/passwd or /etc/group read from an image, in bytes. */
const MAX_DB_BYTES = 1024 * 1024;
/** Highest id accepted (ids at and above 2^31 - 1 are refused: overflow and "nobody" values of some tools). */
const MAX_ID = 2 ** 31 - 2;
const NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,63}\$?$/;
const NUMBER = /^[0-9]{1,10}$/;

/**
 * Resolves `user` (the config's `User`) against the image tree at `rootfsDir`.
 * @throws InvalidArgumentError when it is malformed or names a user or group the image lacks.
 * @throws UnsupportedCapabilityError when it is root (uid or gid 0).
 */
export async function resolveImageUser(rootfsDir: string, user: string): Promise<ImageUser> {
  const shown = JSON.stringify(user.slice(0, 100));
  const colon = user.indexOf(":");
  const userPart = colon < 0 ? user : user.slice(0, colon);
  const groupPart = colon < 0 ? undefined : user.slice(colon + 1);
  const valid = (p: string): boolean => NUMBER.test(p) || NAME.test(p);
  if (!valid(userPart) || (groupPart !== undefined && !valid(groupPart))) {
    throw new InvalidArgumentError(`Cannot use the image's user ${shown}: expected uid, uid:gid, name or name:group`);
  }
  let uid: number;
  let primaryGid: number | undefined;
  if (NUMBER.test(userPart)) {
    uid = Number(userPart);
  } else {
    const entry = lookup(await readImageDb(rootfsDir, "passwd"), userPart);
    if (entry === undefined) throw new InvalidArgumentError(`Cannot use the image's user ${shown}: the image's /etc/passwd has no user "${userPart}"`);
    uid = idField(entry[2], shown);
    primaryGid = idField(entry[3], shown);
  }
  let gid: number;
  if (groupPart === undefined) {
    // A numeric user with no group: its passwd entry's group if it has one, else the same number.
    if (primaryGid === undefined) {
      const db = await readImageDb(rootfsDir, "passwd");
      const entry = db?.split("\n").map((l) => l.split(":")).find((f) => f[2] === String(uid));
      primaryGid = entry !== undefined ? idField(entry[3], shown) : uid;
    }
    gid = primaryGid;
  } else if (NUMBER.test(groupPart)) {
    gid = Number(groupPart);
  } else {
    const entry = lookup(await readImageDb(rootfsDir, "group"), groupPart);
    if (entry === undefined) throw new InvalidArgumentError(`Cannot use the image's user ${shown}: the image's /etc/group has no group "${groupPart}"`);
    gid = idField(entry[2], shown);
  }
  if (uid === 0 || gid === 0) {
    throw new UnsupportedCapabilityError(`Cannot run as the image's user ${shown}: it is root (uid ${uid}, gid ${gid}), and sandboxes never run workloads as root`);
  }
  if (uid > MAX_ID || gid > MAX_ID) throw new InvalidArgumentError(`Cannot use the image's user ${shown}: uid ${uid} or gid ${gid} is out of range`);
  return { uid, gid };
}

function idField(field: string | undefined, shown: string): number {
  if (field === undefined || !NUMBER.test(field)) throw new InvalidArgumentError(`Cannot use the image's user ${shown}: its entry has no numeric id`);
  return Number(field);
}

/** The fields of the first line of `db` whose name is `name`. */
function lookup(db: string | undefined, name: string): string[] | undefined {
  if (db === undefined) return undefined;
  for (const line of db.split("\n")) {
    const fields = line.split(":");
    if (fields[0] === name) return fields;
  }
  return undefined;
}

/** `etc/<name>` of the image when /etc is a real directory and the file a small regular file; undefined otherwise. */
async function readImageDb(rootfsDir: string, name: "passwd" | "group"): Promise<string | undefined> {
  const etc = await lstat(join(rootfsDir, "etc")).catch(() => undefined);
  if (etc?.isDirectory() !== true) return undefined;
  const handle = await open(join(rootfsDir, "etc", name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(() => undefined);
  if (handle === undefined) return undefined;
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size > MAX_DB_BYTES) return undefined;
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await handle.read(buf, 0, st.size, 0);
    return buf.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}
