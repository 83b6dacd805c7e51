/**
 * Boots a real microVM (TCG here: no /dev/kvm) with a busybox image and the real agent, and
 * talks protocol v1 to it. The kernel, initramfs and disks are cached under
 * $MVM_TEST_VM_CACHE (default /var/tmp/mvm-test-vm-cache) across runs.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../../agent/client.js";
import { assembleAgentRuntime } from "../../runtime/agent-runtime.js";
import { isSameLiveProcess } from "../../_internal/proc.js";
import { ImageStore } from "../../images/store.js";
import { buildBusyboxRootfs, makeSpec, makeTestRoot, removeTestRoot } from "../namespace/_fixtures.js";
import { VmBackend } from "./vm-backend.js";

const CACHE = process.env["MVM_TEST_VM_CACHE"] ?? "/var/tmp/mvm-test-vm-cache";
const IMAGES = "/var/lib/mvm/images";

async function run(client: AgentClient, argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const proc = await client.exec(
    { argv, env: { PATH: "/bin" }, cwd: "/work", timeoutMs: 60_000, killGraceMs: 1_000, maxOutputBytes: 1 << 20 },
    { openStdin: false, output: { onStdout: (c) => (stdout += Buffer.from(c).toString()), onStderr: (c) => (stderr += Buffer.from(c).toString()) } },
  );
  const exit = await proc.exit;
  return { code: exit.exitCode, stdout, stderr };
}

describe("VmBackend", { timeout: 600_000 }, () => {
  let root: string;
  let rootfsDir: string;
  let agentDir: string;
  let backend: VmBackend;

  before(async () => {
    root = await makeTestRoot("mvm-vm-");
    rootfsDir = join(root, "rootfs");
    await mkdir(rootfsDir);
    await buildBusyboxRootfs(rootfsDir);
    const agentBundlePath = createRequire(import.meta.url).resolve("@mvm/agent/agent.cjs");
    agentDir = (await assembleAgentRuntime({ agentBundlePath, outRoot: join(root, "runtime") })).dir;
    backend = new VmBackend({ cacheRoot: CACHE, diskRoot: join(root, "disks") });
  });
  after(() => removeTestRoot(root));

  it("probes qemu, kvm and the tier", async () => {
    const report = await backend.probe();
    assert.equal(report.backend, "vm");
    assert.equal(report.usable, true);
    const kvm = report.checks.find((c) => c.name === "kvm");
    assert.ok(kvm !== undefined);
    assert.equal(report.tier, kvm.ok ? "vm-hardware" : "vm-emulated");
    assert.deepEqual(report.enforceable, { memory: true, pids: true, cpu: true });
  });

  it("boots the agent, runs commands as an unprivileged uid, and leaves nothing after destroy", async () => {
    const spec = await makeSpec({ root, rootfsDir, agentDir, resources: { memoryMiB: 384 }, workMiB: 8, tmpMiB: 8 });
    const started = performance.now();
    const sandbox = await backend.launch(spec);
    const launchedMs = performance.now() - started;
    try {
      const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: 120_000, requestTimeoutMs: 60_000, label: spec.sandboxId }).catch(async (err: unknown) => {
        await sandbox.destroy();
        throw new Error(`no hello; QEMU said ${JSON.stringify(sandbox.qemuStderr())}; guest console:\n${(await readFile(spec.agentLogPath, "utf8")).slice(-3000)}`, { cause: err });
      });
      const helloMs = performance.now() - started;
      console.log(`vm boot: launch ${launchedMs.toFixed(0)} ms, hello ${helloMs.toFixed(0)} ms after launch() was called`);

      const echo = await run(client, ["/bin/echo", "hi"]);
      assert.deepEqual(echo, { code: 0, stdout: "hi\n", stderr: "" });
      const uid = await run(client, ["/bin/id", "-u"]);
      assert.equal(uid.code, 0);
      assert.notEqual(uid.stdout.trim(), "0");
      assert.match(uid.stdout, /^[1-9][0-9]*\n$/);
      // The image and the runtime are read-only; /work is writable.
      const ro = await run(client, ["/bin/sh", "-c", "touch /bin/x 2>/dev/null && echo writable || echo ro; touch /work/x && echo work-ok"]);
      assert.equal(ro.stdout, "ro\nwork-ok\n");
      // Only the harmless devices, the sandbox's own terminals (ptmx, pts) and the agent's two ports (channel and relay) are in /dev.
      const dev = await run(client, ["/bin/ls", "/dev"]);
      assert.deepEqual(dev.stdout.trim().split("\n").sort(), ["fd", "full", "null", "ptmx", "pts", "random", "tty", "urandom", "vport0p1", "vport0p3", "zero"]);
      // The agent cannot gain privileges: no_new_privs is set and no capability is held.
      const status = await run(client, ["/bin/sh", "-c", "grep -E '^(NoNewPrivs|CapEff|CapPrm):' /proc/self/status"]);
      assert.equal(status.stdout, "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n");
      await sandbox.destroy();
      await client.closed;
    } finally {
      await sandbox.destroy();
    }
    const exit = await sandbox.exited;
    assert.equal(exit.signal, "SIGKILL");
    assert.equal(await isSameLiveProcess(sandbox.reapRecord.pid, sandbox.reapRecord.pidStartTime), false);
    assert.deepEqual(await readdir(spec.stateDir), ["agent.log"]);
    assert.ok((await readdir(join(root, "disks"))).every((name) => /^[0-9a-f]{64}\.(ext4|ext4\.verified|verity\.json)$/.test(name)));
    await sandbox.destroy();
  });

  it("boots the default Debian image and runs python3", { skip: !existsSync(join(IMAGES, "refs.json")) && `no image store at ${IMAGES}` }, async () => {
    const store = await ImageStore.open(IMAGES);
    const image = await store.resolve("debian:bookworm+python3");
    if (image === undefined) return assert.fail("debian:bookworm+python3 is not in the image store");
    const spec = await makeSpec({ root, rootfsDir: image.rootfsDir, agentDir, resources: { memoryMiB: 512 } });
    const sandbox = await backend.launch(spec);
    try {
      const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: 120_000, requestTimeoutMs: 60_000, label: spec.sandboxId });
      const py = await run(client, ["/usr/bin/python3", "-c", "import os; print(os.getuid() != 0, open('/etc/debian_version').read().split('.')[0])"]);
      assert.deepEqual(py, { code: 0, stdout: "True 12\n", stderr: "" });
    } finally {
      await sandbox.destroy();
    }
  });

  it("powers the VM off when the agent exits", async () => {
    const spec = await makeSpec({ root, rootfsDir, agentDir });
    const sandbox = await backend.launch(spec);
    try {
      const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: 120_000, requestTimeoutMs: 60_000, label: spec.sandboxId });
      // The workload shares the agent's uid, so it can end the agent; init then reboots and QEMU exits.
      void run(client, ["/bin/sh", "-c", "kill -KILL $PPID"]).catch(() => undefined);
      assert.deepEqual(await sandbox.exited, { code: 0, signal: null });
      await client.closed;
      assert.match(await readFile(spec.agentLogPath, "utf8"), /mvm-init: agent exited with status 137/);
    } finally {
      await sandbox.destroy();
    }
  });

  it("reap kills a QEMU the engine lost track of", async () => {
    const spec = await makeSpec({ root, rootfsDir, agentDir });
    const sandbox = await backend.launch(spec);
    try {
      assert.equal(await isSameLiveProcess(sandbox.reapRecord.pid, sandbox.reapRecord.pidStartTime), true);
      await backend.reap(sandbox.reapRecord);
      const exit = await sandbox.exited;
      assert.equal(exit.signal, "SIGKILL");
      await backend.reap(sandbox.reapRecord);
    } finally {
      await sandbox.destroy();
    }
  });
});
