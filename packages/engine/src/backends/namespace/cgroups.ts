/**
 * Which cgroup controllers this host lets the engine enforce, and where sandbox groups go.
 *
 * Both layouts are supported: cgroup v2 (one unified hierarchy, controllers enabled through
 * cgroup.subtree_control) and v1 (one hierarchy per controller, e.g. /sys/fs/cgroup/memory).
 * A controller bound to a v1 hierarchy is not available in v2 ("hybrid" hosts), so each
 * controller is looked up where the kernel has it.
 *
 * Pausing a sandbox freezes its group: on v2 through `cgroup.freeze` of the sandbox's v2 group
 * (any non-root group has it, no controller needed), on v1 through a group in the `freezer`
 * hierarchy.
 *
 * As root the engine creates a parent group `mvm` at the top of each hierarchy it uses (and on
 * v2 enables the controllers for it). As another user it can only use a subtree delegated to it:
 * on v1 the group the engine runs in, if writable; on v2 the group it runs in or that group's
 * parent, if writable and the controllers can be enabled there.
 */
import { constants } from "node:fs";
import { access, mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";

export const CGROUP_CONTROLLERS = ["memory", "pids", "cpu"] as const;
export type CgroupController = (typeof CGROUP_CONTROLLERS)[number];

/** A place where the engine can create sandbox groups. */
export interface CgroupHierarchy {
  readonly version: 1 | 2;
  /** Directory under which sandbox groups are created. */
  readonly parentDir: string;
  /** Controllers a group created here enforces. */
  readonly controllers: readonly CgroupController[];
}

export type ControllerStatus =
  | { readonly enforceable: true; readonly hierarchy: CgroupHierarchy }
  | { readonly enforceable: false; readonly reason: string; readonly hint: string };

/** Where a sandbox's processes can be frozen (pause), or why they cannot. */
export type FreezerStatus =
  | { readonly available: true; readonly hierarchy: CgroupHierarchy }
  | { readonly available: false; readonly reason: string; readonly hint: string };

export interface CgroupSupport {
  /** What the host mounts: v2 only, v1 only, v1 controllers next to a v2 mount, or nothing. */
  readonly layout: "v1" | "v2" | "hybrid" | "none";
  readonly controllers: Readonly<Record<CgroupController, ControllerStatus>>;
  /**
   * Usable hierarchies, best first. The first one is also where a sandbox without limits gets a
   * group, so that all of its processes can be found and killed.
   */
  readonly hierarchies: readonly CgroupHierarchy[];
  /**
   * The hierarchy whose sandbox group freezes the sandbox: v2 (`cgroup.freeze`, preferred) or the
   * v1 `freezer` hierarchy (a group of its own, `controllers` empty).
   */
  readonly freezer: FreezerStatus;
}

export interface DetectCgroupsOptions {
  /** Text of /proc/self/mountinfo. @default read from /proc */
  readonly mountinfo?: string;
  /** Text of /proc/self/cgroup. @default read from /proc */
  readonly selfCgroup?: string;
  /** Whether the engine runs as root. @default process.geteuid() === 0 */
  readonly isRoot?: boolean;
  /** Name of the parent group created as root. @default "mvm" */
  readonly parentName?: string;
}

interface CgroupMount {
  readonly version: 1 | 2;
  readonly mountPoint: string;
  /** The cgroup path the mount shows at its root (usually "/"). */
  readonly root: string;
  /** v1: controllers bound to this hierarchy. */
  readonly controllers: readonly string[];
}

const HINT_ROOT = "run the engine as root, or start it in a cgroup delegated to its user (e.g. `systemd-run --user -p Delegate=yes ...`)";

/** cgroup v1 super options that are not controller names. */
const V1_MOUNT_OPTIONS = new Set(["rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "nsdelegate", "all", "none"]);

/** Parses /proc/self/mountinfo for cgroup and cgroup2 mounts. */
export function parseCgroupMounts(mountinfo: string): CgroupMount[] {
  const mounts: CgroupMount[] = [];
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (left === undefined || right === undefined) continue;
    const fields = left.split(" ");
    const [fstype, , superOptions = ""] = right.split(" ");
    const root = fields[3];
    const mountPoint = fields[4];
    if (root === undefined || mountPoint === undefined) continue;
    const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    if (fstype === "cgroup2") {
      mounts.push({ version: 2, mountPoint: unescape(mountPoint), root: unescape(root), controllers: [] });
    } else if (fstype === "cgroup") {
      const controllers = superOptions.split(",").filter((o) => !V1_MOUNT_OPTIONS.has(o) && !o.includes("="));
      mounts.push({ version: 1, mountPoint: unescape(mountPoint), root: unescape(root), controllers });
    }
  }
  return mounts;
}

/** Parses /proc/self/cgroup into "controller list" → path ("" is the v2 entry). */
export function parseSelfCgroup(text: string): Map<string, string> {
  const byControllers = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line.trim());
    if (match?.[2] === undefined) continue;
    for (const controller of (match[1] ?? "").split(",")) byControllers.set(controller, match[2]);
  }
  return byControllers;
}

async function canWrite(...paths: string[]): Promise<boolean> {
  try {
    for (const path of paths) await access(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

async function readControllers(file: string): Promise<string[]> {
  try {
    return (await readFile(file, "utf8")).trim().split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
}

function describe(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/** The engine's own group inside `mount`, from its /proc/self/cgroup path. */
function ownGroupDir(mount: CgroupMount, path: string): string | undefined {
  const rel = relative(mount.root, path);
  return rel.startsWith("..") ? undefined : join(mount.mountPoint, rel);
}

/** Enables `wanted` in `dir/cgroup.subtree_control`; returns the ones now enabled and the first failure. */
async function enableControllers(dir: string, wanted: readonly CgroupController[]): Promise<{ enabled: CgroupController[]; failure?: string }> {
  const file = join(dir, "cgroup.subtree_control");
  let failure: string | undefined;
  for (const controller of wanted) {
    if ((await readControllers(file)).includes(controller)) continue;
    try {
      await writeFile(file, `+${controller}`);
    } catch (err) {
      failure ??= `cannot enable "${controller}" in "${file}": ${describe(err)}`;
    }
  }
  const now = await readControllers(file);
  const enabled = wanted.filter((c) => now.includes(c));
  return failure === undefined ? { enabled } : { enabled, failure };
}

async function detectV2(mount: CgroupMount, ownPath: string | undefined, isRoot: boolean, parentName: string) {
  const listed = await readControllers(join(mount.mountPoint, "cgroup.controllers"));
  const available = CGROUP_CONTROLLERS.filter((c) => listed.includes(c));
  if (available.length === 0) return { hierarchy: undefined, why: `no controllers are available in "${mount.mountPoint}"` };
  let failure: string | undefined;
  if (isRoot) {
    const top = await enableControllers(mount.mountPoint, available);
    const parentDir = join(mount.mountPoint, parentName);
    try {
      await mkdir(parentDir, { recursive: true, mode: 0o755 });
    } catch (err) {
      return { hierarchy: undefined, why: `cannot create "${parentDir}": ${describe(err)}` };
    }
    const sub = await enableControllers(parentDir, top.enabled);
    const hierarchy: CgroupHierarchy = { version: 2, parentDir, controllers: sub.enabled };
    return { hierarchy, why: top.failure ?? sub.failure ?? "" };
  }
  const own = ownPath === undefined ? undefined : ownGroupDir(mount, ownPath);
  if (own === undefined) return { hierarchy: undefined, why: "the engine's own cgroup is not visible" };
  // The engine's own group can hold sandbox groups only if it has no processes (v2 rule), so its parent is tried too.
  for (const candidate of [own, dirname(own)]) {
    if (!candidate.startsWith(mount.mountPoint) || candidate === mount.mountPoint) continue;
    if (!(await canWrite(candidate, join(candidate, "cgroup.procs"), join(candidate, "cgroup.subtree_control")))) {
      failure ??= `cgroup "${candidate}" is not writable by uid ${process.getuid?.()}`;
      continue;
    }
    const result = await enableControllers(candidate, available);
    if (result.enabled.length > 0) {
      return { hierarchy: { version: 2 as const, parentDir: candidate, controllers: result.enabled }, why: result.failure ?? "" };
    }
    failure ??= result.failure;
  }
  return { hierarchy: undefined, why: failure ?? "no delegated cgroup found" };
}

const V1_PROBE_FILE: Record<CgroupController | "freezer", string> = {
  memory: "memory.limit_in_bytes",
  pids: "pids.max",
  cpu: "cpu.cfs_quota_us",
  freezer: "freezer.state",
};

async function detectV1(
  controller: CgroupController | "freezer",
  mount: CgroupMount,
  ownPath: string | undefined,
  isRoot: boolean,
  parentName: string,
): Promise<{ hierarchy: CgroupHierarchy | undefined; why: string }> {
  let parentDir: string;
  if (isRoot) {
    parentDir = join(mount.mountPoint, parentName);
    try {
      await mkdir(parentDir, { recursive: true, mode: 0o755 });
    } catch (err) {
      return { hierarchy: undefined, why: `cannot create "${parentDir}": ${describe(err)}` };
    }
  } else {
    const own = ownPath === undefined ? undefined : ownGroupDir(mount, ownPath);
    if (own === undefined) return { hierarchy: undefined, why: `the engine's own ${controller} cgroup is not visible` };
    if (!(await canWrite(own, join(own, "cgroup.procs")))) {
      return { hierarchy: undefined, why: `cgroup "${own}" is not writable by uid ${process.getuid?.()}` };
    }
    parentDir = own;
  }
  const probe = join(parentDir, V1_PROBE_FILE[controller]);
  try {
    await access(probe);
  } catch {
    return { hierarchy: undefined, why: `"${probe}" is missing` };
  }
  return { hierarchy: { version: 1 as const, parentDir, controllers: controller === "freezer" ? [] : [controller] }, why: "" };
}

/**
 * Finds where each controller can be enforced. As root this creates the parent groups (and on v2
 * enables controllers), so it is idempotent but not free of side effects.
 */
export async function detectCgroups(options: DetectCgroupsOptions = {}): Promise<CgroupSupport> {
  const isRoot = options.isRoot ?? process.geteuid?.() === 0;
  const parentName = options.parentName ?? "mvm";
  const mounts = parseCgroupMounts(options.mountinfo ?? (await readFile("/proc/self/mountinfo", "utf8")));
  const self = parseSelfCgroup(options.selfCgroup ?? (await readFile("/proc/self/cgroup", "utf8").catch(() => "")));
  const v2Mount = mounts.find((m) => m.version === 2);
  const v1Mounts = mounts.filter((m) => m.version === 1 && m.controllers.length > 0);

  const controllers = {} as Record<CgroupController, ControllerStatus>;
  const hierarchies: CgroupHierarchy[] = [];
  const v2 = v2Mount === undefined ? undefined : await detectV2(v2Mount, self.get(""), isRoot, parentName);
  if (v2?.hierarchy !== undefined && v2.hierarchy.controllers.length > 0) hierarchies.push(v2.hierarchy);

  for (const controller of CGROUP_CONTROLLERS) {
    const v1Mount = v1Mounts.find((m) => m.controllers.includes(controller));
    if (v1Mount !== undefined) {
      const v1 = await detectV1(controller, v1Mount, self.get(controller), isRoot, parentName);
      if (v1.hierarchy !== undefined) {
        controllers[controller] = { enforceable: true, hierarchy: v1.hierarchy };
        hierarchies.push(v1.hierarchy);
      } else {
        controllers[controller] = { enforceable: false, reason: v1.why, hint: isRoot ? `check the cgroup v1 ${controller} hierarchy` : HINT_ROOT };
      }
    } else if (v2?.hierarchy?.controllers.includes(controller)) {
      controllers[controller] = { enforceable: true, hierarchy: v2.hierarchy };
    } else {
      const reason =
        v2Mount === undefined
          ? `no cgroup hierarchy has the ${controller} controller`
          : v2?.why || `the ${controller} controller is not enabled in cgroup v2 at "${v2Mount.mountPoint}"`;
      controllers[controller] = {
        enforceable: false,
        reason,
        hint: isRoot ? `enable the ${controller} controller (cgroup v2: cgroup.subtree_control; v1: mount it)` : HINT_ROOT,
      };
    }
  }
  const layout = v2Mount !== undefined ? (v1Mounts.length > 0 ? "hybrid" : "v2") : v1Mounts.length > 0 ? "v1" : "none";
  hierarchies.sort((a, b) => rank(a) - rank(b));
  const freezer = await detectFreezer(hierarchies, v1Mounts.find((m) => m.controllers.includes("freezer")), self.get("freezer"), isRoot, parentName);
  return { layout, controllers, hierarchies, freezer };
}

/** The v2 hierarchy when its groups have `cgroup.freeze` (kernel 5.2+), else the v1 freezer hierarchy. */
async function detectFreezer(
  hierarchies: readonly CgroupHierarchy[],
  v1Mount: CgroupMount | undefined,
  ownPath: string | undefined,
  isRoot: boolean,
  parentName: string,
): Promise<FreezerStatus> {
  const v2 = hierarchies.find((h) => h.version === 2);
  if (v2 !== undefined && (await exists(join(v2.parentDir, "cgroup.freeze")))) return { available: true, hierarchy: v2 };
  if (v1Mount !== undefined) {
    const v1 = await detectV1("freezer", v1Mount, ownPath, isRoot, parentName);
    if (v1.hierarchy !== undefined) return { available: true, hierarchy: v1.hierarchy };
    return { available: false, reason: `the cgroup v1 freezer cannot be used: ${v1.why}`, hint: isRoot ? "check the cgroup v1 freezer hierarchy" : HINT_ROOT };
  }
  const reason =
    v2 !== undefined
      ? `"${join(v2.parentDir, "cgroup.freeze")}" is missing (cgroup v2 freezing needs Linux 5.2 or later)`
      : "no usable cgroup v2 group and no cgroup v1 freezer hierarchy";
  return { available: false, reason, hint: isRoot ? "mount the cgroup v1 freezer controller, or use a host with cgroup v2 on Linux 5.2+" : HINT_ROOT };
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** v2 first (one group holds everything), then v1 pids (cheapest to track with), memory, cpu. */
function rank(h: CgroupHierarchy): number {
  return h.version === 2 ? 0 : 1 + ["pids", "memory", "cpu"].indexOf(h.controllers[0] ?? "cpu");
}
