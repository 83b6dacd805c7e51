/**
 * Who is on the other end of a daemon connection. Node has no SO_PEERCRED API, so a small C
 * program (packages/engine/host/mvm-peercred.c) is spawned with the accepted socket as its fd 3
 * and prints the pid, uid, gid and supplementary groups the kernel recorded at the peer's
 * connect(). It is compiled once with the system C compiler and kept, keyed by the digest of its
 * source and flags, in a directory only the daemon's uid can write.
 */
import { spawn } from "node:child_process";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { InternalError, InvalidArgumentError, PermissionDeniedError } from "@mvm/protocol";
import { buildCProgram, run } from "../_internal/c-program.js";

/** The credentials of a connected peer, as of its connect(). */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  /** Supplementary groups (SO_PEERGROUPS). */
  readonly groups: readonly number[];
}

/** Who may use the daemon besides root. */
export interface PeerPolicy {
  /** The daemon's own uid: its peers with that uid are admitted. */
  readonly daemonUid: number;
  /** Members of this group (primary or supplementary) are admitted. */
  readonly operatorGid?: number | undefined;
}

/** True when `peer` may use the daemon: root, the daemon's own uid, or an operator-group member. */
export function peerAdmitted(peer: PeerCredentials, policy: PeerPolicy): boolean {
  if (peer.uid === 0 || peer.uid === policy.daemonUid) return true;
  const gid = policy.operatorGid;
  return gid !== undefined && (peer.gid === gid || peer.groups.includes(gid));
}

/** True when the peer acts with the daemon's own privileges (root, or the daemon's uid). */
export function peerPrivileged(peer: PeerCredentials, daemonUid: number): boolean {
  return peer.uid === 0 || peer.uid === daemonUid;
}

/** The error a refused peer gets (403), before any route runs. */
export function peerRefused(peer: PeerCredentials, policy: PeerPolicy): PermissionDeniedError {
  const who = policy.operatorGid === undefined ? "root or the daemon's uid" : `root, the daemon's uid or members of group ${policy.operatorGid}`;
  return new PermissionDeniedError(`Peer uid ${peer.uid} (pid ${peer.pid}) may not use this daemon: it serves ${who}`, {
    hint: "Run as root, or ask the operator to add you to the daemon's group (mvmctl daemon --group NAME)",
  });
}

const CFLAGS: readonly string[] = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"];
const HELPER_NAME = "mvm-peercred";
const COMPILER_HINT = "Install a C compiler (Debian: apt-get install gcc libc6-dev)";

function sourcePath(): string {
  return fileURLToPath(new URL("../../host/mvm-peercred.c", import.meta.url));
}

/**
 * Compiles the helper into `outRoot/<key>/mvm-peercred` (or finds it there) and returns its path.
 * `outRoot` must be a directory the daemon alone can write (its runtime directory's children).
 * @throws UnsupportedCapabilityError when no C compiler works
 */
export async function buildPeerCredHelper(outRoot: string, ccPath = "cc"): Promise<string> {
  const built = await buildCProgram({
    sourcePath: sourcePath(),
    name: HELPER_NAME,
    cflags: CFLAGS,
    outRoot,
    dirMode: 0o700,
    what: "build the daemon's peer-credential helper",
    hint: COMPILER_HINT,
    ccPath,
  });
  return built.path;
}

/** Parses the helper's output; undefined when it is not exactly what the helper prints. */
export function parsePeerCredentials(text: string): PeerCredentials | undefined {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const m = /^(pid|uid|gid|groups)=([0-9,]*)$/.exec(line);
    if (!m || fields.has(m[1] as string)) return undefined;
    fields.set(m[1] as string, m[2] as string);
  }
  const num = (s: string | undefined): number | undefined => (s !== undefined && /^[0-9]{1,10}$/.test(s) ? Number(s) : undefined);
  const pid = num(fields.get("pid"));
  const uid = num(fields.get("uid"));
  const gid = num(fields.get("gid"));
  if (pid === undefined || uid === undefined || gid === undefined) return undefined;
  const list = fields.get("groups") ?? "";
  const groups = list === "" ? [] : list.split(",").map(num);
  if (groups.some((g) => g === undefined)) return undefined;
  return { pid, uid, gid, groups: groups as number[] };
}

/** The kernel's record of who connected `socket` (an accepted Unix-socket connection). */
export function readPeerCredentials(helperPath: string, socket: Socket): Promise<PeerCredentials> {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return Promise.reject(new InternalError("Cannot check the peer: the connection has no file descriptor"));
  return new Promise((resolve, reject) => {
    const child = spawn(helperPath, [], { stdio: ["ignore", "pipe", "pipe", fd], env: {} });
    let out = "";
    let err = "";
    child.stdout?.setEncoding("utf8").on("data", (c: string) => (out = (out + c).slice(0, 1 << 20)));
    child.stderr?.setEncoding("utf8").on("data", (c: string) => (err = (err + c).slice(0, 4096)));
    child.once("error", (e) => reject(new InternalError(`Cannot check the peer: "${helperPath}" did not start`, { cause: e })));
    child.once("close", (code) => {
      const creds = code === 0 ? parsePeerCredentials(out) : undefined;
      if (creds) resolve(creds);
      else reject(new InternalError(`Cannot check the peer: "${helperPath}" failed${err.trim() ? `: ${err.trim()}` : ` (exit ${code})`}`));
    });
  });
}

/** The gid of `group`: a number, or a group name looked up with getent (NSS). */
export async function resolveGroup(group: string): Promise<number> {
  if (/^[0-9]{1,10}$/.test(group)) return Number(group);
  if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,63}\$?$/.test(group)) throw new InvalidArgumentError(`Invalid group name "${group.slice(0, 64)}"`);
  let line: string;
  try {
    line = (await run("getent", ["group", group], { timeoutMs: 10_000, signal: undefined })).stdout.split("\n")[0] ?? "";
  } catch (err) {
    throw new InvalidArgumentError(`Group "${group}" does not exist`, { cause: err, hint: `Create it (groupadd ${group}) or pass a numeric gid` });
  }
  const gid = line.split(":")[2];
  if (gid === undefined || !/^[0-9]{1,10}$/.test(gid)) throw new InvalidArgumentError(`Group "${group}" has no usable gid`);
  return Number(gid);
}
