/**
 * Host paths named by a daemon caller are read with the caller's own permissions: a caller
 * without the daemon's privileges (an operator-group member) gets only what it could read
 * itself. The read runs as the caller's uid, gid and groups (setpriv, no_new_privs) and its
 * bytes land in a private temporary copy that the engine then reads.
 */
import { spawn } from "node:child_process";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AbortedError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  type CreateSandboxRequest,
  type SecretRefJson,
} from "@mvm/protocol";
import type { PeerCredentials } from "./peer-cred.js";

/** A host path the engine may read on the caller's behalf; disposing removes any copy. */
export interface CallerSource extends AsyncDisposable {
  readonly path: string;
}

/** Stderr kept from a command run as the caller, in characters. */
const MAX_STDERR_CHARS = 2000;

interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `argv` as the peer (uid, gid, supplementary groups), stdout to `outFd` or captured. */
function runAsPeer(peer: PeerCredentials, argv: readonly string[], options: { outFd?: number; signal?: AbortSignal }): Promise<RunResult> {
  const groups = peer.groups.length > 0 ? `--groups=${peer.groups.join(",")}` : "--clear-groups";
  const args = [`--reuid=${peer.uid}`, `--regid=${peer.gid}`, groups, "--no-new-privs", "--", ...argv];
  return new Promise((resolve, reject) => {
    const child = spawn("setpriv", args, {
      cwd: "/",
      env: { PATH: "/usr/bin:/bin", LC_ALL: "C" },
      stdio: ["ignore", options.outFd ?? "pipe", "pipe"],
      ...(options.signal ? { signal: options.signal, killSignal: "SIGKILL" as const } : {}),
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (c: string) => (stdout = (stdout + c).slice(0, 4096)));
    child.stderr?.setEncoding("utf8").on("data", (c: string) => (stderr = (stderr + c).slice(0, MAX_STDERR_CHARS)));
    child.once("error", (err) => {
      if (options.signal?.aborted) reject(new AbortedError("Reading a host path was aborted", { cause: err }));
      else reject(new PermissionDeniedError(`Cannot read host paths as uid ${peer.uid}: setpriv did not run`, { cause: err }));
    });
    child.once("close", (code) => resolve({ code, stdout, stderr: stderr.trim() }));
  });
}

/** The typed error for a failed read of `path` as the peer. */
function readError(path: string, peer: PeerCredentials, stderr: string): Error {
  const detail = stderr === "" ? "" : `: ${stderr}`;
  if (/Permission denied|Operation not permitted/.test(stderr)) {
    return new PermissionDeniedError(`Cannot read "${path}" as uid ${peer.uid}${detail}`, {
      hint: "A host path given to the daemon is read with your own permissions: name one you can read",
    });
  }
  if (/No such file or directory|Not a directory/.test(stderr)) return new NotFoundError(`Cannot read "${path}": it does not exist${detail}`);
  return new InvalidArgumentError(`Cannot read "${path}" as uid ${peer.uid}${detail}`);
}

/**
 * `path` ready for the engine to read for this caller: itself for a privileged caller (root or
 * the daemon's uid), else a private copy made as the caller (a tar of a directory, the bytes of
 * a file). Dispose it when the engine is done.
 * @throws PermissionDeniedError when the caller could not read all of it itself
 */
export async function hostPathAsCaller(
  path: string,
  peer: PeerCredentials,
  privileged: boolean,
  options: { signal?: AbortSignal } = {},
): Promise<CallerSource> {
  if (privileged) return { path, [Symbol.asyncDispose]: async () => {} };
  const kind = await runAsPeer(peer, ["stat", "-L", "--format=%F", "--", path], options);
  if (kind.code !== 0) throw readError(path, peer, kind.stderr);
  const type = kind.stdout.trim();
  if (type !== "directory" && type !== "regular file" && type !== "regular empty file") {
    throw new InvalidArgumentError(`Cannot import "${path}": it is a ${type.slice(0, 64)}, not a directory or a file`);
  }
  const dir = await mkdtemp(join(tmpdir(), "mvm-caller-read-"));
  const source: CallerSource = { path: join(dir, "source"), [Symbol.asyncDispose]: () => rm(dir, { recursive: true, force: true }) };
  try {
    const out = await open(source.path, "wx", 0o600);
    let result: RunResult;
    try {
      const argv = type === "directory" ? ["tar", "-C", path, "-cf", "-", "."] : ["cat", "--", path];
      result = await runAsPeer(peer, argv, { ...options, outFd: out.fd });
    } finally {
      await out.close();
    }
    if (result.code !== 0) throw readError(path, peer, result.stderr);
    return source;
  } catch (err) {
    await source[Symbol.asyncDispose]();
    throw err;
  }
}

/**
 * Refuses secrets a create would read from the host's files or the daemon's environment when
 * the caller lacks the daemon's privileges: the engine reads them as itself, not as the caller.
 * @throws PermissionDeniedError naming the first such secret
 */
export function assertSecretSourcesAllowed(request: CreateSandboxRequest, peer: PeerCredentials, privileged: boolean): void {
  if (privileged) return;
  const refs: [string, SecretRefJson][] = [
    ...Object.entries(request.secrets ?? {}),
    ...(request.plan?.plan.ir.secrets ?? []).map((s): [string, SecretRefJson] => [s.name, s.ref]),
  ];
  for (const [env, ref] of refs) {
    if (ref.source === "store") continue;
    throw new PermissionDeniedError(
      `Secret "${env}" reads the daemon host's ${ref.source === "file" ? "file" : "environment variable"} "${ref.name}", which uid ${peer.uid} may not do through the daemon`,
      { hint: "Store the secret first (mvmctl secret set NAME) and reference it by name, or run as root" },
    );
  }
}
