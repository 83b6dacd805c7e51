/**
 * The jail around a sandbox's QEMU process: bubblewrap runs QEMU in new user, mount, pid, ipc,
 * uts, net and cgroup namespaces, with no capabilities, no nested user namespaces, no_new_privs,
 * a new session, an empty environment, and (when the engine runs as root) as the sandbox's own
 * unprivileged host uid. A /bin/sh prelude runs first to set a hard RLIMIT_CORE of 0 and join the
 * sandbox's cgroups; setpriv then drops to the uid. QEMU's own seccomp filter (`-sandbox on`) is
 * the caller's part of the command line.
 *
 * What QEMU sees in its mount namespace (everything else is absent, not merely unreadable):
 * - `/`: bubblewrap's empty tmpfs, remounted read-only once the binds below are in place.
 * - the QEMU binary, read-only, at its host path.
 * - the ELF interpreter and every shared library `ldd` lists, read-only, each at the path `ldd`
 *   printed (the path the loader opens), bound from its real host file. No /etc: without
 *   /etc/ld.so.cache the loader searches its built-in directories, where those paths lie.
 * - the accelerator modules `accel-*.so` of `<prefix>/lib/x86_64-linux-gnu/qemu` and their
 *   libraries: Debian builds TCG as a module, which QEMU loads at start for `-accel tcg`; no
 *   other module (display, audio, block drivers) is present.
 * - `<prefix>/share/qemu/bios-microvm.bin`: the firmware of the `microvm` machine (`qboot`). With
 *   `x-option-roms=off` QEMU loads no other firmware file.
 * - `/dev`: bubblewrap's minimal set (null, zero, full, random, urandom, tty, pts, shm), read-only
 *   as a directory, plus the devices the caller lists (e.g. /dev/kvm).
 * - `/vm` (`JAIL_VM_DIR`): the sandbox's own files (kernel, initrd, disks), named by `jailPathFor`.
 *
 * Not there, found unnecessary by tracing QEMU's file accesses (`strace -f -e trace=%file`):
 * /proc (QEMU reads /proc/self/exe to find its data directories, and falls back to the built-in
 * ones above when it cannot), /sys (libnuma and libndctl probe it and carry on without),
 * /etc (ld.so.cache, localtime, selinux and libnl configuration: all optional), /home, /var, /tmp.
 *
 * Inherited fds stay open across bubblewrap and reach QEMU: 0-2, the console socket (3) and any
 * further descriptor the caller passes without FD_CLOEXEC.
 */
import { readdir, realpath, stat } from "node:fs/promises";
import { dirname, join, posix } from "node:path";
import { AdmissionError, InvalidArgumentError } from "@mvm/protocol";
import { BWRAP_ISOLATION_ARGS, PRELUDE_SCRIPT } from "../namespace/bwrap-args.js";
import { listSharedLibraries } from "../../runtime/shared-libs.js";


/** The directory in the jail holding the sandbox's own files (kernel, initrd, disks). */
export const JAIL_VM_DIR = "/vm";

/** A host file or directory made visible in the jail. */
export interface JailFile {
  /**
   * Absolute host path; bound as is (a symlink is followed by the mount). Ignored when `fd` is
   * set, but still names the file in error messages.
   */
  readonly hostPath: string;
  /**
   * A descriptor (in bubblewrap) of the file or directory to bind instead of the path, so the
   * jail's uid needs no search permission on the directories above it (--bind-fd).
   */
  readonly fd?: number;
  /** Absolute, normalized path in the jail. */
  readonly jailPath: string;
  /** Bound read-write when true. @default false */
  readonly writable?: boolean;
}

const SAFE_NAME = /^[A-Za-z0-9._+-]+$/;
/** An absolute path, optionally followed by the load address `ldd` prints. */

/**
 * The jail path of a sandbox file named `name` (a plain file name), under JAIL_VM_DIR.
 * Throws InvalidArgumentError for a name with a slash, a comma (QEMU option syntax) or a dot name.
 * @example jailPathFor("root.ext4") // "/vm/root.ext4"
 */
export function jailPathFor(name: string): string {
  if (!SAFE_NAME.test(name) || name === "." || name === "..") {
    throw new InvalidArgumentError(`Invalid jail file name "${name}": must be a plain file name of letters, digits and ._+-`);
  }
  return `${JAIL_VM_DIR}/${name}`;
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

async function resolveQemuJailFiles(qemuPath: string): Promise<JailFile[]> {
  if (!posix.isAbsolute(qemuPath) || posix.normalize(qemuPath) !== qemuPath) {
    throw new InvalidArgumentError(`Invalid qemuPath "${qemuPath}": must be an absolute, normalized path`);
  }
  let realQemu: string;
  try {
    realQemu = await realpath(qemuPath);
  } catch (err) {
    throw new AdmissionError(`Cannot jail QEMU: "${qemuPath}" not found`, { cause: err });
  }
  // <prefix>/bin/qemu-system-x86_64 → <prefix>/share/qemu, <prefix>/lib/x86_64-linux-gnu/qemu.
  const prefix = dirname(dirname(realQemu));
  const firmware = join(prefix, "share/qemu/bios-microvm.bin");
  if (!(await isFile(firmware))) {
    throw new AdmissionError(`Cannot jail QEMU: the microvm firmware "${firmware}" not found`, { hint: "install the qemu-system-x86 package (it ships qboot)" });
  }
  const moduleDir = join(prefix, "lib/x86_64-linux-gnu/qemu");
  const modules = (await readdir(moduleDir).catch(() => [] as string[]))
    .filter((name) => name.startsWith("accel-") && name.endsWith(".so"))
    .sort()
    .map((name) => join(moduleDir, name));

  const files = new Map<string, JailFile>();
  const add = (hostPath: string, jailPath: string): void => {
    if (!files.has(jailPath)) files.set(jailPath, { hostPath, jailPath });
  };
  add(realQemu, qemuPath);
  add(await realpath(firmware), firmware); // Debian's bios-microvm.bin is a symlink to qboot.rom
  for (const binary of [qemuPath, ...modules]) {
    if (binary !== qemuPath) add(await realpath(binary), binary);
    const { loader: interpreter, libraries: libs } = await listSharedLibraries(binary, "jail QEMU");
    const libraries = libs.map((lib) => lib.path);
    for (const path of [interpreter, ...libraries]) {
      if (files.has(path)) continue;
      try {
        add(await realpath(path), path);
      } catch (err) {
        throw new AdmissionError(`Cannot jail QEMU: library "${path}" of "${binary}" cannot be resolved`, { cause: err });
      }
    }
  }
  return [...files.values()];
}

const jailFilesCache = new Map<string, Promise<JailFile[]>>();

/**
 * The read-only files QEMU itself needs in its jail (binary, ELF interpreter, shared libraries,
 * accelerator modules and their libraries, microvm firmware), found once per `qemuPath` and
 * cached in memory; a failure is retried on the next call. Throws AdmissionError when QEMU, a
 * library or the firmware is missing.
 * @example
 * const files = [...(await qemuJailFiles("/usr/bin/qemu-system-x86_64")), { hostPath: kernel, jailPath: jailPathFor("vmlinuz") }];
 */
export function qemuJailFiles(qemuPath: string): Promise<JailFile[]> {
  let pending = jailFilesCache.get(qemuPath);
  if (pending === undefined) {
    const created = resolveQemuJailFiles(qemuPath);
    pending = created;
    jailFilesCache.set(qemuPath, created);
    created.catch(() => {
      if (jailFilesCache.get(qemuPath) === created) jailFilesCache.delete(qemuPath);
    });
  }
  return pending.then((list) => list.map((file) => ({ ...file })));
}

/**
 * The supplementary groups the jailed uid needs to open `devices` read-write: the owning group of
 * each device that other users cannot read and write but its group can (e.g. /dev/kvm, mode 0660,
 * group kvm). Throws AdmissionError when a device is missing or not a character device.
 * @example jailArgv({ ..., devices: ["/dev/kvm"], groups: await jailDeviceGroups(["/dev/kvm"]) })
 */
export async function jailDeviceGroups(devices: readonly string[]): Promise<number[]> {
  const groups = new Set<number>();
  for (const device of devices) {
    const info = await stat(device).catch((err: unknown) => {
      throw new AdmissionError(`Cannot jail QEMU: device "${device}" not found`, { cause: err });
    });
    if (!info.isCharacterDevice()) throw new AdmissionError(`Cannot jail QEMU: "${device}" is not a character device`);
    const access = jailedDeviceAccess(info);
    if (access !== undefined && access !== "other") groups.add(access.group);
  }
  return [...groups].sort((a, b) => a - b);
}

/**
 * How a jailed (unprivileged, non-root-group) uid can open a device read-write: through its
 * "other" permissions, through its non-root group, or not at all (undefined).
 */
export function jailedDeviceAccess(info: { mode: number; gid: number }): "other" | { group: number } | undefined {
  if ((info.mode & 0o006) === 0o006) return "other";
  if ((info.mode & 0o060) === 0o060 && info.gid !== 0) return { group: info.gid };
  return undefined;
}

export interface JailArgvOptions {
  readonly bwrapPath: string;
  /** setpriv, used when `uid` is set. @default "/usr/bin/setpriv" */
  readonly setprivPath?: string;
  /** The unprivileged host uid (also the gid) QEMU runs as; set when the engine runs as root. */
  readonly uid?: number;
  /** Supplementary host groups kept after the switch to `uid` (e.g. /dev/kvm's group); none by default. */
  readonly groups?: readonly number[];
  /** QEMU's path in the jail (one of `files`). */
  readonly qemuPath: string;
  /** QEMU's arguments, naming jail paths only. */
  readonly qemuArgs: readonly string[];
  readonly files: readonly JailFile[];
  /** Host devices bound into the jail's /dev at the same path, e.g. ["/dev/kvm"]. */
  readonly devices?: readonly string[];
  /** cgroup.procs files the prelude joins before anything else runs. */
  readonly procsFiles?: readonly string[];
  /** @default "/bin/sh" */
  readonly shell?: string;
}

const MAX_ID = 0xffff_fffe;

function checkPath(label: string, path: string): void {
  if (!posix.isAbsolute(path) || posix.normalize(path) !== path || path.includes("\0")) {
    throw new InvalidArgumentError(`Invalid ${label} "${path}": must be an absolute, normalized path`);
  }
}

function checkId(label: string, id: number, min: number): void {
  if (!Number.isInteger(id) || id < min || id > MAX_ID) {
    throw new InvalidArgumentError(`Invalid ${label} "${id}": must be an integer from ${min} to ${MAX_ID}`);
  }
}

function checkOptions(options: JailArgvOptions): void {
  checkPath("bwrapPath", options.bwrapPath);
  checkPath("qemuPath", options.qemuPath);
  if (options.uid !== undefined) checkId("uid", options.uid, 1);
  for (const gid of options.groups ?? []) checkId("group", gid, 1);
  if (options.groups !== undefined && options.uid === undefined) {
    throw new InvalidArgumentError(`Invalid groups "${options.groups.join(",")}": supplementary groups need a uid to switch to`);
  }
  const seen = new Set<string>();
  for (const file of options.files) {
    checkPath("hostPath", file.hostPath);
    if (file.fd !== undefined && (!Number.isInteger(file.fd) || file.fd < 3 || file.fd > 1023)) {
      throw new InvalidArgumentError(`Invalid fd "${file.fd}" for "${file.hostPath}": must be an integer from 3 to 1023`);
    }
    checkPath("jailPath", file.jailPath);
    if (file.jailPath === "/" || file.jailPath === "/dev" || file.jailPath.startsWith("/dev/")) {
      throw new InvalidArgumentError(`Invalid jailPath "${file.jailPath}": / and /dev belong to the jail`);
    }
    if (seen.has(file.jailPath)) throw new InvalidArgumentError(`Invalid jailPath "${file.jailPath}": bound twice`);
    seen.add(file.jailPath);
  }
  if (!seen.has(options.qemuPath)) throw new InvalidArgumentError(`Invalid qemuPath "${options.qemuPath}": not among the jail's files`);
  for (const device of options.devices ?? []) {
    checkPath("device", device);
    if (!device.startsWith("/dev/")) throw new InvalidArgumentError(`Invalid device "${device}": must be under /dev`);
  }
  for (const file of options.procsFiles ?? []) checkPath("procsFile", file);
}

/** bubblewrap's arguments (without the program), ending with `--`, QEMU and its arguments. */
export function jailBwrapArgs(options: JailArgvOptions): string[] {
  const args = [
    ...BWRAP_ISOLATION_ARGS,
    "--dev", "/dev",
  ];
  for (const device of options.devices ?? []) args.push("--dev-bind", device, device);
  for (const file of options.files) {
    if (file.fd !== undefined) args.push(file.writable === true ? "--bind-fd" : "--ro-bind-fd", String(file.fd), file.jailPath);
    else args.push(file.writable === true ? "--bind" : "--ro-bind", file.hostPath, file.jailPath);
  }
  args.push("--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/", "--", options.qemuPath, ...options.qemuArgs);
  return args;
}

/**
 * The full argv (program first) that starts QEMU in its jail: the prelude (core limit 0, cgroups
 * joined), then, when `uid` is set, setpriv switching to that uid and gid with only `groups` as
 * supplementary groups, no inheritable or bounding capabilities and no_new_privs, then bubblewrap.
 * Throws InvalidArgumentError for a relative or unnormalized path, a duplicate jail path, a
 * device outside /dev, or a uid or group of 0.
 * @example
 * const argv = jailArgv({ bwrapPath, uid, qemuPath, qemuArgs, files: [...await qemuJailFiles(qemuPath), ...vmFiles] });
 * spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", "pipe", "pipe"], detached: true });
 */
export function jailArgv(options: JailArgvOptions): string[] {
  checkOptions(options);
  const procsFiles = options.procsFiles ?? [];
  const privilegeDrop =
    options.uid === undefined
      ? []
      : [
          options.setprivPath ?? "/usr/bin/setpriv",
          `--reuid=${options.uid}`,
          `--regid=${options.uid}`,
          ...(options.groups !== undefined && options.groups.length > 0 ? [`--groups=${options.groups.join(",")}`] : ["--clear-groups"]),
          "--inh-caps=-all",
          "--bounding-set=-all",
          "--no-new-privs",
        ];
  return [
    options.shell ?? "/bin/sh",
    "-c",
    PRELUDE_SCRIPT,
    "mvm-qemu-prelude",
    String(procsFiles.length),
    ...procsFiles,
    ...privilegeDrop,
    options.bwrapPath,
    ...jailBwrapArgs(options),
  ];
}
