/**
 * The namespace backend: sandboxes are bubblewrap containers on the host kernel (container tier).
 *
 * Each sandbox gets new user, mount, pid, ipc, uts, network (loopback only) and cgroup
 * namespaces, no capabilities, no nested user namespaces, a seccomp filter, a read-only image
 * root with size-capped tmpfs /work and /tmp, and its own cgroups for the requested limits. When
 * the engine runs as root, each sandbox runs as its own unprivileged host uid, so the uid inside
 * never maps to host root.
 */
import { createHash } from "node:crypto";
import { mkdtemp, open, readdir, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import type { HostFacts } from "../../store/host-facts.js";
import type { Backend, LaunchSpec, LaunchedSandbox, ProbeResult, ReapRecord } from "../types.js";
import { detectCgroups } from "./cgroups.js";
import { type HostSetup, launchNamespaceSandbox } from "./launch.js";
import { findExecutable, probeNamespaceHost, runBounded } from "./probe.js";
import { reapNamespaceSandbox } from "./reap.js";
import { sweepRelayDirs } from "./relay-listener.js";
import { sandboxSeccompProgram } from "./seccomp.js";
import { type SnapshotTools, findSnapshotTools } from "./snapshot-tools.js";
import { SandboxUidAllocator } from "./uid.js";

export interface NamespaceBackendOptions {
  /** The bubblewrap binary. @default `bwrap` found on PATH or in the system directories */
  readonly bwrapPath?: string;
  /** The setpriv binary, used when the engine runs as root. @default `setpriv` found like bwrap */
  readonly setprivPath?: string;
  /** Name of the parent cgroup created when the engine runs as root. @default "mvm" */
  readonly cgroupParentName?: string;
  /** GNU tar, for filesystem snapshots and restores. @default `tar` found like bwrap */
  readonly tarPath?: string;
  /** A statically linked busybox, the shell of the restore step. @default `busybox` found like bwrap */
  readonly busyboxPath?: string;
  /**
   * Keeps the outcome of the probe's host commands (`bwrap --version`, the trial sandbox, finding
   * the snapshot tools) between engine starts, reused while the binaries, the kernel, the boot
   * and the user-namespace settings are unchanged. @default none: run at every probe
   */
  readonly facts?: HostFacts;
}

const RunOutcome = z.strictObject({ code: z.number().int().nullable(), output: z.string().max(4096) });
const SnapshotToolsFact = z.strictObject({
  tar: z.string().startsWith("/"),
  tarLoader: z.string().startsWith("/"),
  tarLibraries: z.array(z.string().startsWith("/")).max(256),
  busybox: z.string().startsWith("/"),
  unshare: z.string().startsWith("/").optional(),
});

/** Everything a trial sandbox's outcome depends on besides the binaries: kernel, boot, uid, settings, filter. */
async function trialContext(): Promise<string> {
  const read = (p: string): Promise<string> => readFile(p, "utf8").then((s) => s.trim(), () => "-");
  const parts = await Promise.all([
    read("/proc/sys/kernel/osrelease"),
    read("/proc/sys/kernel/random/boot_id"),
    read("/proc/sys/user/max_user_namespaces"),
    read("/proc/sys/kernel/unprivileged_userns_clone"),
    read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    read("/proc/sys/kernel/yama/ptrace_scope"),
  ]);
  const filter = createHash("sha256").update(sandboxSeccompProgram()).digest("hex");
  return JSON.stringify([process.geteuid?.() ?? -1, ...parts, filter]);
}

/**
 * @example
 * const backend = new NamespaceBackend();
 * const report = await backend.probe();
 * if (report.usable) {
 *   const sandbox = await backend.launch(spec);
 *   // ... speak to the agent over sandbox.channel ...
 *   await sandbox.destroy();
 * }
 */
export class NamespaceBackend implements Backend {
  readonly name = "namespace" as const;
  private readonly uids = new SandboxUidAllocator();
  private setup: Promise<HostSetup> | undefined;
  private tools: Promise<SnapshotTools> | undefined;

  constructor(private readonly options: NamespaceBackendOptions = {}) {}

  private async discover(): Promise<HostSetup> {
    const isRoot = process.geteuid?.() === 0;
    const [bwrapPath, setprivPath, cgroups] = await Promise.all([
      findExecutable("bwrap", this.options.bwrapPath),
      isRoot ? findExecutable("setpriv", this.options.setprivPath) : Promise.resolve(undefined),
      detectCgroups({ isRoot, ...(this.options.cgroupParentName !== undefined ? { parentName: this.options.cgroupParentName } : {}) }),
    ]);
    return { isRoot, bwrapPath, setprivPath, cgroups };
  }

  /** The host setup, found once (single-flight; a failed discovery is retried next time). */
  private host(): Promise<HostSetup> {
    if (this.setup === undefined) {
      const pending = this.discover();
      this.setup = pending;
      pending.catch(() => {
        if (this.setup === pending) this.setup = undefined;
      });
    }
    return this.setup;
  }

  /**
   * Removes empty `sbx_*` cgroups older than a minute and stale relay directories: left when an
   * engine died mid-launch.
   */
  async sweep(): Promise<string[]> {
    const host = await this.host();
    const removed: string[] = await sweepRelayDirs();
    const freezer = host.cgroups.freezer.available ? [host.cgroups.freezer.hierarchy] : [];
    for (const h of new Set([...host.cgroups.hierarchies, ...freezer])) {
      let names: string[];
      try {
        names = await readdir(h.parentDir);
      } catch {
        continue;
      }
      for (const name of names) {
        if (!/^sbx_[a-z2-7]{20}$/.test(name)) continue;
        const dir = join(h.parentDir, name);
        try {
          const [st, procs] = await Promise.all([stat(dir), readFile(join(dir, "cgroup.procs"), "utf8")]);
          if (procs.trim() !== "" || Date.now() - st.mtimeMs < 60_000) continue;
          await rmdir(dir);
          removed.push(dir);
        } catch {
          // raced with another engine, or not empty after all
        }
      }
    }
    return removed;
  }

  async probe(): Promise<ProbeResult> {
    const fresh = this.discover();
    this.setup = fresh;
    const host = await fresh;
    const facts = this.options.facts;
    const bwrap = host.bwrapPath;
    return probeNamespaceHost({
      isRoot: host.isRoot,
      bwrapPath: bwrap,
      setprivPath: host.setprivPath,
      cgroups: host.cgroups,
      trySandbox: async () =>
        facts === undefined || bwrap === undefined
          ? this.trySandbox(host)
          : facts.fact({
              key: `namespace-trial:${bwrap}:${host.setprivPath ?? ""}`,
              files: [bwrap, ...(host.setprivPath !== undefined ? [host.setprivPath] : [])],
              context: await trialContext(),
              schema: RunOutcome,
              compute: async () => ({ value: await this.trySandbox(host) }),
              // A failed trial is tried again at the next probe: it may have been passing trouble.
              keep: (outcome) => outcome.code === 0,
            }),
      ...(facts === undefined || bwrap === undefined
        ? {}
        : {
            bwrapVersion: () =>
              facts.fact({ key: `bwrap-version:${bwrap}`, files: [bwrap], schema: RunOutcome, compute: async () => ({ value: await runBounded([bwrap, "--version"], 10_000) }), keep: (r) => r.code === 0 }),
          }),
      snapshotTools: () => this.snapshotTools(host.isRoot),
    });
  }

  /** Starts a throwaway sandbox the way launch does (uid switch, user namespace, seccomp) and runs `exit 0`. */
  private async trySandbox(host: HostSetup): Promise<{ code: number | null; output: string }> {
    if (host.bwrapPath === undefined) return { code: null, output: "bubblewrap not found" };
    const dir = await mkdtemp(join(tmpdir(), "mvm-probe-"));
    const uid = host.isRoot ? await this.uids.allocate() : undefined;
    try {
      await writeFile(join(dir, "seccomp.bpf"), sandboxSeccompProgram(), { mode: 0o600 });
      const file = await open(join(dir, "seccomp.bpf"), "r");
      try {
        const prefix = uid !== undefined && host.setprivPath !== undefined
          ? [host.setprivPath, `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--inh-caps=-all"]
          : [];
        const argv = [
          ...prefix, host.bwrapPath,
          "--unshare-all", "--unshare-user", "--unshare-cgroup", "--disable-userns", "--cap-drop", "ALL", "--die-with-parent",
          "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--seccomp", "3", "--", "/bin/sh", "-c", "exit 0",
        ];
        return await runBounded(argv, 10_000, file.fd);
      } finally {
        await file.close();
      }
    } finally {
      if (uid !== undefined) this.uids.release(uid);
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Starts bubblewrap with the agent runtime command. Resolves once bubblewrap has created the
   * sandbox's first process; the agent's hello follows on `channel`. Throws
   * UnsupportedCapabilityError for a limit the host cannot enforce, AdmissionError when the
   * image or host is not fit, AbortedError when `signal` fires; nothing is left behind.
   */
  async launch(spec: LaunchSpec, signal?: AbortSignal): Promise<LaunchedSandbox> {
    const host = await this.host();
    return launchNamespaceSandbox(spec, host, this.uids, signal, () => this.snapshotTools(host.isRoot));
  }

  /** The snapshot tools, found once (single-flight; a failed search is retried next time). */
  private snapshotTools(isRoot: boolean): Promise<SnapshotTools> {
    if (this.tools === undefined) {
      const paths = {
        ...(this.options.tarPath !== undefined ? { tarPath: this.options.tarPath } : {}),
        ...(this.options.busyboxPath !== undefined ? { busyboxPath: this.options.busyboxPath } : {}),
      };
      const facts = this.options.facts;
      const find = async (): Promise<SnapshotTools> => {
        if (facts === undefined) return findSnapshotTools(paths, isRoot);
        const [tar, busybox] = await Promise.all([findExecutable("tar", paths.tarPath), findExecutable("busybox", paths.busyboxPath)]);
        // Not found: the search itself says what is missing, and nothing is kept.
        if (tar === undefined || busybox === undefined) return findSnapshotTools(paths, isRoot);
        const found = await facts.fact({
          key: `snapshot-tools:${isRoot}:${tar}:${busybox}`,
          files: [tar, busybox],
          context: process.env["PATH"] ?? "",
          schema: SnapshotToolsFact,
          compute: async () => {
            const tools = await findSnapshotTools({ tarPath: tar, busyboxPath: busybox }, isRoot);
            const value = { ...tools, tarLibraries: [...tools.tarLibraries], ...(tools.unshare !== undefined ? { unshare: tools.unshare } : {}) };
            return { value, discovered: [tools.tarLoader, ...tools.tarLibraries, ...(tools.unshare !== undefined ? [tools.unshare] : [])] };
          },
        });
        return { ...found, unshare: found.unshare };
      };
      const pending = find();
      this.tools = pending;
      pending.catch(() => {
        if (this.tools === pending) this.tools = undefined;
      });
    }
    return this.tools;
  }

  reap(record: ReapRecord): Promise<void> {
    return reapNamespaceSandbox(record);
  }
}
