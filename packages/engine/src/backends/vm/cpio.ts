/**
 * A writer for the "newc" cpio format the Linux kernel unpacks as an initramfs. Output is
 * deterministic: inode numbers count up from 1, every mtime is 0, owners are root.
 */
import { InvalidArgumentError } from "@mvm/protocol";

export type CpioEntry =
  | { readonly type: "dir"; readonly path: string; readonly mode: number }
  | { readonly type: "file"; readonly path: string; readonly mode: number; readonly data: Uint8Array }
  | { readonly type: "symlink"; readonly path: string; readonly target: string }
  | { readonly type: "chardev"; readonly path: string; readonly mode: number; readonly major: number; readonly minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = "TRAILER!!!";

function hex8(value: number): string {
  return value.toString(16).padStart(8, "0");
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(ino: number, mode: number, nlink: number, data: Uint8Array, name: string, rdev: [number, number] = [0, 0]): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, "utf8");
  const header = Buffer.from(
    "070701" +
      [ino, mode, 0, 0, nlink, 0, data.byteLength, 0, 0, rdev[0], rdev[1], nameBytes.length, 0].map(hex8).join(""),
    "latin1",
  );
  return [header, nameBytes, pad4(header.length + nameBytes.length), Buffer.from(data.buffer, data.byteOffset, data.byteLength), pad4(data.byteLength)];
}

/**
 * Encodes `entries` (paths relative, without a leading "/", parents before children) followed
 * by the trailer. Throws InvalidArgumentError for an absolute path, "..", or a mode with type bits.
 */
export function writeNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const entry of entries) {
    if (entry.path === "" || entry.path.startsWith("/") || entry.path.split("/").includes("..")) {
      throw new InvalidArgumentError(`Invalid cpio path "${entry.path}"`);
    }
    if ("mode" in entry && (entry.mode & ~0o7777) !== 0) throw new InvalidArgumentError(`Invalid cpio mode "${entry.mode.toString(8)}" for "${entry.path}"`);
    switch (entry.type) {
      case "dir":
        parts.push(...record(ino++, S_IFDIR | entry.mode, 2, new Uint8Array(0), entry.path));
        break;
      case "file":
        parts.push(...record(ino++, S_IFREG | entry.mode, 1, entry.data, entry.path));
        break;
      case "symlink":
        parts.push(...record(ino++, S_IFLNK | 0o777, 1, Buffer.from(entry.target, "utf8"), entry.path));
        break;
      case "chardev":
        parts.push(...record(ino++, S_IFCHR | entry.mode, 1, new Uint8Array(0), entry.path, [entry.major, entry.minor]));
        break;
    }
  }
  parts.push(...record(0, 0, 1, new Uint8Array(0), TRAILER));
  return Buffer.concat(parts);
}
