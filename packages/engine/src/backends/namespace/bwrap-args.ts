/**
 * The command lines that start a namespace sandbox: bubblewrap's arguments, and the /bin/sh
 * prelude that runs before it (still as the engine's user) to set the core-dump limit, put itself
 * into the sandbox's cgroups and, as root, switch to the sandbox's own host uid.
 */
import { InvalidArgumentError, NAMESPACE_RELAY_PATH, SYSTEM_TRUST_BUNDLE_PATH, TRUST_BUNDLE_PATH } from "@mvm/protocol";
import { AGENT_MOUNT_POINT, agentRuntimeCommand } from "../../runtime/agent-runtime.js";
import { RESTORE_SHELL_DIR, RESTORE_SHELL_PATH } from "./snapshot-restore.js";

/** uid and gid of the sandbox user inside the sandbox. */
export const SANDBOX_UID = 1000;
export const SANDBOX_GID = 1000;
export const SANDBOX_HOSTNAME = "sandbox";
/** Mount points the image's root filesystem must provide (bwrap cannot create them in a read-only root). */
export const REQUIRED_MOUNT_POINTS = ["proc", "dev", "work", "tmp", AGENT_MOUNT_POINT.slice(1)] as const;

export interface BwrapArgsOptions {
  /** Host directory mounted read-only as /. */
  readonly rootfsDir: string;
  /** Host directory of the agent runtime, mounted read-only at /.mvm. */
  readonly agentDir: string;
  /** Size cap of the /work tmpfs, MiB. */
  readonly workMiB: number;
  /** Size cap of the /tmp tmpfs, MiB. */
  readonly tmpMiB: number;
  /** The fd (in bwrap) from which it reads the seccomp program. */
  readonly seccompFd: number;
  /** The fd (in bwrap) to which it writes its JSON status ({"child-pid": N, ...}). */
  readonly statusFd?: number;
  /** Host path of the relay's Unix socket, bound read-only at NAMESPACE_RELAY_PATH. */
  readonly relaySocketPath: string;
  /** fds (in bwrap) from which it copies the trust bundle; present when the sandbox has one. */
  readonly trustBundle?: TrustBundleFds;
  /**
   * The fd (in the sandbox) of the static busybox that runs the restore step: a symlink to it is
   * made at RESTORE_SHELL_PATH on the new /tmp (see snapshot-restore.ts). Only when restoring.
   */
  readonly restoreShellFd?: number;
  /** What runs inside. @default agentRuntimeCommand({ relayPath: NAMESPACE_RELAY_PATH }) */
  readonly command?: readonly string[];
  /**
   * The sandbox user's identity (identity.ts): host files bound read-only over /etc/passwd and
   * /etc/group, and whether /home gets a tmpfs (tmpMiB) holding /home/user.
   */
  readonly identity?: { readonly passwd?: string; readonly group?: string; readonly home: boolean };
  /** uid and gid inside the sandbox (from the image's config); default SANDBOX_UID and SANDBOX_GID. Never 0. */
  readonly user?: { readonly uid: number; readonly gid: number };
}

export interface TrustBundleFds {
  /** Copied to TRUST_BUNDLE_PATH, on a tmpfs mounted at /run (the image must have /run). */
  readonly fd: number;
  /** Copied over SYSTEM_TRUST_BUNDLE_PATH; only when the image has that file. */
  readonly systemFd?: number;
}

/** Size cap of the /run tmpfs that holds the trust bundle's mount point, bytes. */
export const RUN_TMPFS_BYTES = 1024 * 1024;
/** Size cap of the /dev/shm tmpfs (POSIX shared memory and semaphores), bytes. */
export const DEV_SHM_BYTES = 64 * 1024 * 1024;

const MiB = 1024 * 1024;

/**
 * The summed size caps of a sandbox's tmpfs mounts (/work, /tmp, /dev/shm and, with a trust
 * bundle, /run), bytes. tmpfs pages are charged to the memory cgroup of the process that writes them, so the
 * sandbox's memory limit adds this sum to `memoryMiB` (see limitWrites in sandbox-cgroups.ts).
 */
export function tmpfsCapBytes(options: { readonly workMiB: number; readonly tmpMiB: number; readonly trustBundle: boolean; readonly home?: boolean }): number {
  const home = options.home === true ? options.tmpMiB * MiB : 0;
  return (options.workMiB + options.tmpMiB) * MiB + DEV_SHM_BYTES + (options.trustBundle ? RUN_TMPFS_BYTES : 0) + home;
}

/**
 * The isolation every bubblewrap the engine starts gets (sandboxes and QEMU's jail): new user,
 * mount, pid, ipc, uts, net and cgroup namespaces, no nested user namespaces, no capabilities,
 * death with its parent, a new session, an empty environment.
 */
export const BWRAP_ISOLATION_ARGS: readonly string[] = [
  "--unshare-all",
  "--unshare-user",
  "--unshare-cgroup",
  "--disable-userns",
  "--cap-drop", "ALL",
  "--die-with-parent",
  "--new-session",
  "--clearenv",
];

/**
 * bubblewrap's argv (without the program name): new user, mount, pid, ipc, uts, net (loopback
 * only) and cgroup namespaces, no nested user namespaces, no capabilities, a read-only root,
 * private /proc and a read-only /dev, size-capped tmpfs /work, /tmp and /dev/shm, the agent
 * runtime at /.mvm, the relay socket at /dev/mvm-relay, the trust bundle when given, uid and gid 1000, an empty environment,
 * a new session, and the seccomp filter.
 */
export function bwrapArgs(options: BwrapArgsOptions): string[] {
  return [...bwrapOptions(options), "--", ...bwrapCommand(options)];
}

/** bubblewrap's argv split for `bwrap --args FD`. */
export interface BwrapArgsThroughFd {
  /** bubblewrap's argv (without the program name): `--args FD -- command...`. */
  readonly argv: string[];
  /** Every option of bwrapArgs, each followed by a NUL byte: what bubblewrap reads from FD. */
  readonly data: Buffer;
}

/**
 * bwrapArgs with every option moved into `data`, which bubblewrap reads from `argsFd` and then
 * closes. Its command line, which the sandbox sees as /proc/1/cmdline, then holds no host path:
 * only `--args FD -- command...` (the command runs inside and names sandbox paths).
 * Throws InvalidArgumentError for an option containing a NUL byte.
 */
export function bwrapArgsThroughFd(options: BwrapArgsOptions, argsFd: number): BwrapArgsThroughFd {
  const opts = bwrapOptions(options);
  const bad = opts.find((o) => o.includes("\0"));
  if (bad !== undefined) throw new InvalidArgumentError(`Invalid bubblewrap argument ${JSON.stringify(bad)}: contains a NUL byte`);
  return {
    argv: ["--args", String(argsFd), "--", ...bwrapCommand(options)],
    data: Buffer.from(opts.map((o) => `${o}\0`).join(""), "utf8"),
  };
}

function bwrapCommand(options: BwrapArgsOptions): readonly string[] {
  return options.command ?? agentRuntimeCommand({ relayPath: NAMESPACE_RELAY_PATH });
}

function bwrapOptions(options: BwrapArgsOptions): string[] {
  const args = [
    ...BWRAP_ISOLATION_ARGS,
    "--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--hostname", SANDBOX_HOSTNAME,
    "--ro-bind", options.rootfsDir, "/",
    "--proc", "/proc",
    "--dev", "/dev",
    "--size", String(DEV_SHM_BYTES), "--tmpfs", "/dev/shm",
    "--size", String(options.workMiB * MiB), "--tmpfs", "/work",
    "--size", String(options.tmpMiB * MiB), "--tmpfs", "/tmp",
    ...(options.restoreShellFd !== undefined
      ? ["--dir", RESTORE_SHELL_DIR, "--symlink", `/proc/self/fd/${options.restoreShellFd}`, RESTORE_SHELL_PATH]
      : []),
    ...identityArgs(options),
    "--ro-bind", options.agentDir, AGENT_MOUNT_POINT,
    // connect() needs no write access to the mount: a read-only bind of the socket is enough.
    "--ro-bind", options.relaySocketPath, NAMESPACE_RELAY_PATH,
    // bwrap's /dev is a tmpfs without a size cap owned by the sandbox user: read-only once its
    // last mount point is made (device nodes stay usable; /dev/shm is a mount of its own).
    "--remount-ro", "/dev",
    ...trustBundleArgs(options.trustBundle),
    "--chdir", "/work",
    "--uid", String(options.user?.uid ?? SANDBOX_UID),
    "--gid", String(options.user?.gid ?? SANDBOX_GID),
  ];
  if (options.statusFd !== undefined) args.push("--json-status-fd", String(options.statusFd));
  args.push("--seccomp", String(options.seccompFd));
  return args;
}

/** The sandbox user's passwd and group copies, and its home on a tmpfs at /home. */
function identityArgs(options: BwrapArgsOptions): string[] {
  const id = options.identity;
  if (id === undefined) return [];
  const args: string[] = [];
  if (id.passwd !== undefined) args.push("--ro-bind", id.passwd, "/etc/passwd");
  if (id.group !== undefined) args.push("--ro-bind", id.group, "/etc/group");
  if (id.home) args.push("--size", String(options.tmpMiB * MiB), "--tmpfs", "/home", "--perms", "0755", "--dir", "/home/user");
  return args;
}

/**
 * A small tmpfs over the image's /run (bwrap creates missing mount points only on writable
 * parents), the bundle copied read-only to TRUST_BUNDLE_PATH, and over the system bundle.
 */
function trustBundleArgs(fds: TrustBundleFds | undefined): string[] {
  if (fds === undefined) return [];
  const args = ["--size", String(RUN_TMPFS_BYTES), "--tmpfs", "/run", "--perms", "0444", "--ro-bind-data", String(fds.fd), TRUST_BUNDLE_PATH];
  if (fds.systemFd !== undefined) args.push("--perms", "0444", "--ro-bind-data", String(fds.systemFd), SYSTEM_TRUST_BUNDLE_PATH);
  return args;
}

/**
 * The prelude: sets a hard RLIMIT_CORE of 0, writes its own pid into each cgroup.procs file (so
 * bwrap and everything it starts are inside the sandbox's cgroups from the first instruction),
 * then execs the rest of its arguments.
 */
export const PRELUDE_SCRIPT = [
  "set -eu",
  "ulimit -S -c 0",
  "ulimit -H -c 0",
  'n="$1"',
  "shift",
  'while [ "$n" -gt 0 ]; do echo "$$" > "$1"; shift; n=$((n - 1)); done',
  'exec "$@"',
].join("\n");

export interface PreludeOptions {
  readonly shell?: string;
  /** cgroup.procs files to join. */
  readonly procsFiles: readonly string[];
  readonly bwrapPath: string;
  readonly bwrapArgs: readonly string[];
  /** When set (engine runs as root), bwrap runs as this host uid and gid through setpriv. */
  readonly switchUser?: { readonly uid: number; readonly setprivPath: string };
}

/** The full argv (program first) that starts a sandbox. */
export function launchArgv(options: PreludeOptions): string[] {
  const user = options.switchUser;
  const privilegeDrop = user
    ? [user.setprivPath, `--reuid=${user.uid}`, `--regid=${user.uid}`, "--clear-groups", "--inh-caps=-all"]
    : [];
  return [
    options.shell ?? "/bin/sh",
    "-c",
    PRELUDE_SCRIPT,
    "mvm-prelude",
    String(options.procsFiles.length),
    ...options.procsFiles,
    ...privilegeDrop,
    options.bwrapPath,
    ...options.bwrapArgs,
  ];
}
