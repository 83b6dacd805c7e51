/**
 * Test-only backends for unit tests of engine logic: each "sandbox" is the agent bundle run as a
 * plain host process (no isolation at all). Snapshots copy a per-sandbox state file, so the
 * engine's snapshot plumbing (store, manifests, admission, audit, fork) can be tested fast; the
 * real backends' snapshots are tested by the conformance suite.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { UnsupportedCapabilityError, type BackendName, type Tier } from "@mvm/protocol";
import { defaultAgentBundlePath } from "./open.js";
import { readProcStartTime } from "./_internal/proc.js";
import type { Backend, LaunchSpec, LaunchedSandbox, ProbeResult, ReapRecord } from "./backends/types.js";
import { ImageStore } from "./images/store.js";

/** The file that stands for a host-process sandbox's /work: "fresh" at launch, or the restored part. */
export const STATE_FILE = "work.state";

export class HostProcessBackend implements Backend {
  readonly reaped: ReapRecord[] = [];
  readonly children: ChildProcess[] = [];
  constructor(
    readonly name: BackendName,
    private readonly probeResult: Omit<ProbeResult, "backend">,
  ) {}
  /** How many times the engine probed this backend. */
  probes = 0;
  async probe(): Promise<ProbeResult> {
    this.probes++;
    return { backend: this.name, ...this.probeResult };
  }
  readonly launches: LaunchSpec[] = [];
  async launch(spec: LaunchSpec): Promise<LaunchedSandbox> {
    this.launches.push(spec);
    await mkdir(join(spec.stateDir, "work"), { recursive: true });
    const state = join(spec.stateDir, STATE_FILE);
    if (spec.restore?.parts.work !== undefined) await copyFile(spec.restore.parts.work, state);
    else await writeFile(state, "fresh\n");
    const child = spawn(process.execPath, [defaultAgentBundlePath(), "--channel", "stdio"], { stdio: ["pipe", "pipe", "ignore"] });
    this.children.push(child);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once("exit", (code, signal) => resolve({ code, signal })),
    );
    const startTime = (await readProcStartTime(child.pid!)) ?? "0";
    const relay = Promise.reject(new Error("this test backend has no egress relay"));
    relay.catch(() => {});
    return {
      channel: Duplex.from({ readable: child.stdout!, writable: child.stdin! }),
      relay,
      reapRecord: { backend: this.name, pid: child.pid!, pidStartTime: startTime, cgroups: [], extra: {} },
      exited,
      oomKills: async () => 0,
      snapshot: async (capture) => {
        if (capture.memory) throw new UnsupportedCapabilityError("host-process sandboxes have no memory snapshot");
        await copyFile(state, join(capture.dir, "work"));
        return { parts: { work: join(capture.dir, "work") }, shape: {} };
      },
      // A stopped process stands for a frozen sandbox (its agent does not answer).
      pause: async () => {
        if (this.probeResult.pauseUnsupported) throw new UnsupportedCapabilityError(`Cannot pause: ${this.probeResult.pauseUnsupported.reason}`);
        child.kill("SIGSTOP");
      },
      resume: async () => void child.kill("SIGCONT"),
      destroy: async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
        await exited;
      },
    };
  }
  async reap(record: ReapRecord): Promise<void> {
    this.reaped.push(record);
  }
}

export const usable = (tier: Tier, enforce = true): Omit<ProbeResult, "backend"> => ({
  tier,
  usable: true,
  checks: [{ name: "fake", ok: true, detail: "host process" }],
  enforceable: { memory: enforce, pids: enforce, cpu: enforce },
});
export const unusable: Omit<ProbeResult, "backend"> = {
  tier: "vm-emulated",
  usable: false,
  checks: [{ name: "qemu", ok: false, detail: "not installed", hint: "apt-get install qemu-system-x86" }],
  enforceable: { memory: false, pids: false, cpu: false },
};

/** A throwaway directory holding an image store with one tiny image, "tiny" (/bin/hello). */
export async function tinyImageStore(prefix: string): Promise<{ root: string; images: ImageStore }> {
  const root = await mkdtemp(join(tmpdir(), prefix));
  const tree = join(root, "tree");
  await mkdir(join(tree, "bin"), { recursive: true });
  await writeFile(join(tree, "bin", "hello"), "hi\n");
  const images = await ImageStore.open(join(root, "images"));
  await images.importDir(tree, "tiny");
  return { root, images };
}
