/**
 * Host checks for the namespace backend, each with a hint saying what to do when it fails.
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import type { ProbeCheck, ProbeResult } from "../types.js";
import type { CgroupSupport } from "./cgroups.js";
import type { SnapshotTools } from "./snapshot-tools.js";
import { CGROUP_CONTROLLERS } from "./cgroups.js";

/** bubblewrap 0.8 introduced --disable-userns. */
export const MIN_BWRAP_VERSION: readonly [number, number, number] = [0, 8, 0];

const SEARCH_DIRS = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/** Absolute path of an executable, from `explicit` or PATH plus the usual system directories. */
export async function findExecutable(name: string, explicit?: string): Promise<string | undefined> {
  const candidates = explicit !== undefined ? [explicit] : [...(process.env["PATH"] ?? "").split(":").filter((d) => d.startsWith("/")), ...SEARCH_DIRS].map((d) => join(d, name));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

/** Parses `bwrap --version` output ("bubblewrap 0.8.0"). */
export function parseBwrapVersion(text: string): [number, number, number] | undefined {
  const match = /bubblewrap\s+(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  if (match === null) return undefined;
  return [Number(match[1]), Number(match[2]), Number(match[3] ?? 0)];
}

export function versionAtLeast(version: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < min.length; i++) {
    const a = version[i] ?? 0;
    const b = min[i] ?? 0;
    if (a !== b) return a > b;
  }
  return true;
}

interface RunResult {
  code: number | null;
  output: string;
}

/** Runs a short host command, keeping at most 4 KiB of its combined output; killed after `timeoutMs`. */
export function runBounded(argv: readonly string[], timeoutMs: number, extraFd?: number): Promise<RunResult> {
  return new Promise((resolve) => {
    const [file, ...args] = argv;
    const stdio: Array<"ignore" | "pipe" | number> = ["ignore", "pipe", "pipe"];
    if (extraFd !== undefined) stdio.push(extraFd);
    const child = spawn(file ?? "/bin/false", args, { stdio, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" } });
    let output = "";
    const keep = (chunk: Buffer): void => {
      if (output.length < 4096) output += chunk.toString("utf8").slice(0, 4096 - output.length);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: null, output: String(err) });
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, output: output.trim() });
    });
  });
}

async function readSysctl(path: string): Promise<string | undefined> {
  return readFile(path, "utf8").then(
    (s) => s.trim(),
    () => undefined,
  );
}

export interface ProbeInputs {
  readonly isRoot: boolean;
  readonly bwrapPath: string | undefined;
  readonly setprivPath: string | undefined;
  readonly cgroups: CgroupSupport;
  /** Runs `bwrap --unshare-user --disable-userns ... /bin/sh -c 'exit 0'` the way launch would (as a sandbox uid when root). */
  readonly trySandbox: () => Promise<RunResult>;
  /** Runs `bwrap --version`. @default runs it at every probe */
  readonly bwrapVersion?: () => Promise<RunResult>;
  /** Finds the tools of filesystem snapshots; absent: no "snapshot" check. */
  readonly snapshotTools?: () => Promise<SnapshotTools>;
}

/** Runs every check and sums them up. */
export async function probeNamespaceHost(inputs: ProbeInputs): Promise<ProbeResult> {
  const checks: ProbeCheck[] = [];
  const add = (name: string, ok: boolean, detail: string, hint?: string): boolean => {
    checks.push(ok || hint === undefined ? { name, ok, detail } : { name, ok, detail, hint });
    return ok;
  };

  let bwrapOk = false;
  if (inputs.bwrapPath === undefined) {
    add("bwrap", false, "bubblewrap not found", "install bubblewrap 0.8 or newer (e.g. `apt-get install bubblewrap`)");
  } else {
    const version = await (inputs.bwrapVersion ?? (() => runBounded([inputs.bwrapPath!, "--version"], 10_000)))();
    const parsed = parseBwrapVersion(version.output);
    const setuid = ((await stat(inputs.bwrapPath)).mode & 0o4000) !== 0;
    const detail = `${parsed ? `bubblewrap ${parsed.join(".")}` : `unknown version ("${version.output.slice(0, 80)}")`} at ${inputs.bwrapPath}`;
    if (parsed === undefined || !versionAtLeast(parsed, MIN_BWRAP_VERSION)) {
      add("bwrap", false, detail, "install bubblewrap 0.8 or newer: --disable-userns is required");
    } else if (setuid) {
      add("bwrap", false, `${detail} is setuid root`, "use a bubblewrap that is not setuid: setuid mode refuses --size and relies on root privileges");
    } else {
      bwrapOk = add("bwrap", true, detail);
    }
  }

  let setprivOk = true;
  if (inputs.isRoot) {
    setprivOk = inputs.setprivPath !== undefined
      ? add("setpriv", true, `setpriv at ${inputs.setprivPath}`)
      : add("setpriv", false, "setpriv not found (needed to run sandboxes as unprivileged uids when the engine is root)", "install util-linux (`apt-get install util-linux`)");
  }

  const maxUserns = await readSysctl("/proc/sys/user/max_user_namespaces");
  add(
    "userns-limit",
    maxUserns !== undefined && Number(maxUserns) > 0,
    `user.max_user_namespaces = ${maxUserns ?? "unknown"}`,
    "enable user namespaces: `sysctl -w user.max_user_namespaces=15000`",
  );
  const debianClone = await readSysctl("/proc/sys/kernel/unprivileged_userns_clone");
  if (debianClone !== undefined) {
    add("userns-clone", debianClone !== "0", `kernel.unprivileged_userns_clone = ${debianClone}`, "`sysctl -w kernel.unprivileged_userns_clone=1`");
  }
  const apparmor = await readSysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
  if (apparmor !== undefined) {
    add(
      "apparmor-userns",
      apparmor !== "1",
      `kernel.apparmor_restrict_unprivileged_userns = ${apparmor}`,
      "AppArmor restricts unprivileged user namespaces: allow bwrap with a profile granting `userns,` (e.g. /etc/apparmor.d/bwrap), or `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
    );
  }

  const status = await readFile("/proc/self/status", "utf8").catch(() => "");
  const seccompOk = add(
    "seccomp",
    /^Seccomp:/m.test(status),
    /^Seccomp:/m.test(status) ? "seccomp filters supported" : "the kernel reports no seccomp support",
    "use a kernel built with CONFIG_SECCOMP_FILTER",
  );

  let usernsOk = false;
  if (bwrapOk && setprivOk) {
    const trial = await inputs.trySandbox();
    usernsOk = add(
      "userns",
      trial.code === 0,
      trial.code === 0 ? "a user-namespace sandbox with the seccomp filter started" : `a trial sandbox failed (exit ${trial.code}): "${trial.output.slice(0, 300)}"`,
      apparmor === "1"
        ? "allow bwrap to create user namespaces in AppArmor (see the apparmor-userns check)"
        : "make unprivileged user namespaces available to the engine's sandbox user",
    );
  }

  const cg = inputs.cgroups;
  const parts = CGROUP_CONTROLLERS.map((c) => {
    const s = cg.controllers[c];
    return s.enforceable ? `${c}: v${s.hierarchy.version} at ${s.hierarchy.parentDir}` : `${c}: not enforceable (${s.reason})`;
  });
  const allEnforceable = CGROUP_CONTROLLERS.every((c) => cg.controllers[c].enforceable);
  const firstHint = CGROUP_CONTROLLERS.map((c) => cg.controllers[c]).find((s) => !s.enforceable);
  add("cgroup", allEnforceable, `cgroup ${cg.layout}; ${parts.join("; ")}`, firstHint && !firstHint.enforceable ? firstHint.hint : undefined);
  const freezer = cg.freezer;
  add(
    "freezer",
    freezer.available,
    freezer.available ? `pause freezes a v${freezer.hierarchy.version} group under ${freezer.hierarchy.parentDir}` : `pause is not available: ${freezer.reason}`,
    freezer.available ? undefined : freezer.hint,
  );

  if (inputs.snapshotTools !== undefined) {
    const tools = await inputs.snapshotTools().then(
      (found) => ({ found }),
      (err: unknown) => ({ err: err as Error & { hint?: string } }),
    );
    const memory = "memory snapshots are not available on this tier (they would need CRIU, which fails on this kernel)";
    if ("err" in tools) {
      add("snapshot", false, `filesystem snapshots are not available: ${tools.err.message}; ${memory}`, tools.err.hint ?? "install GNU tar and busybox-static");
    } else {
      const where = `GNU tar at ${tools.found.tar}, busybox at ${tools.found.busybox}`;
      add(
        "snapshot",
        freezer.available,
        freezer.available
          ? `filesystem snapshots of /work and /tmp (${where}); ${memory}`
          : `restore from filesystem snapshots works (${where}), capture needs the freezer: ${freezer.reason}; ${memory}`,
        freezer.available ? undefined : freezer.hint,
      );
    }
  }

  return {
    backend: "namespace",
    tier: "container",
    usable: bwrapOk && setprivOk && seccompOk && usernsOk,
    checks,
    enforceable: {
      memory: cg.controllers.memory.enforceable,
      pids: cg.controllers.pids.enforceable,
      cpu: cg.controllers.cpu.enforceable,
    },
    ...(freezer.available ? {} : { pauseUnsupported: { reason: freezer.reason, hint: freezer.hint } }),
  };
}
