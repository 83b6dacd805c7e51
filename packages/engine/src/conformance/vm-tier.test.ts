/**
 * What only the VM tier promises, tested on real VMs (TCG here): a tampered disk fails closed on
 * the host and in the guest, a QEMU crash and a hung guest become SandboxCrashedError with
 * everything released, restored sandboxes never share randomness, and QEMU sees nothing of the
 * host but its own program files.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdmissionError, SandboxCrashedError, type EngineApi } from "@mvm/protocol";
import { openEngine } from "../open.js";
import { listProcessesWithId, readProcUid } from "../_internal/proc.js";
import { buildBusyboxRootfs } from "../backends/namespace/_fixtures.js";
import { DEFAULT_IMAGE } from "../engine.js";
import { run, sh, sharedImagesDir, sharedVmCacheDir, unavailableReason } from "./harness.js";

const skip = unavailableReason() ?? (existsSync("/usr/bin/qemu-system-x86_64") ? undefined : "needs qemu-system-x86_64 (scripts/setup.sh installs it)");

interface Opened {
  engine: EngineApi & { close(): Promise<void> };
  stateDir: string;
}

async function vmEngine(extra: { heartbeat?: { intervalMs: number; timeoutMs: number }; imagesDir?: string } = {}): Promise<Opened> {
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-vmtier-"));
  const engine = await openEngine({ stateDir, imagesDir: extra.imagesDir ?? sharedImagesDir(), vmCacheDir: sharedVmCacheDir(), backends: ["vm"], ...(extra.heartbeat ? { heartbeat: extra.heartbeat } : {}) });
  return { engine, stateDir };
}

async function recordOf(stateDir: string, id: string): Promise<{ pid: number; hostUid: number | undefined }> {
  const raw = JSON.parse(await readFile(join(stateDir, "sandboxes", id, "record.json"), "utf8")) as { reap?: { pid: number; extra: Record<string, string> } };
  const uid = raw.reap?.extra["hostUid"];
  return { pid: raw.reap?.pid ?? 0, hostUid: uid === undefined ? undefined : Number(uid) };
}

/** The QEMU process of a sandbox: the process running as its own host uid whose name is qemu-system-*. */
async function qemuPid(hostUid: number): Promise<number> {
  for (const pid of await listProcessesWithId(hostUid)) {
    if ((await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "")).startsWith("qemu-system")) return pid;
  }
  throw new Error(`no QEMU runs as uid ${hostUid}`);
}

async function noneLeft(stateDir: string, id: string, hostUid: number | undefined): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const procs = hostUid === undefined ? [] : await listProcessesWithId(hostUid);
    if (procs.length === 0 && !existsSync(join(stateDir, "sandboxes", id))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`sandbox ${id} left processes or files behind`);
}

describe("vm tier", { skip, timeout: 900_000 }, () => {
  let t: Opened;
  before(async () => {
    t = await vmEngine();
  });
  after(async () => {
    await t?.engine.close();
    if (t) await rm(t.stateDir, { recursive: true, force: true });
  });

  test("QEMU runs jailed: own uid, no_new_privs, seccomp, no capabilities, and no host files in its mount view", async () => {
    const info = await t.engine.createSandbox({ image: DEFAULT_IMAGE });
    try {
      const { hostUid } = await recordOf(t.stateDir, info.id);
      assert.ok(hostUid !== undefined && hostUid >= 0x7000_0000, `QEMU uid ${hostUid}`);
      const pid = await qemuPid(hostUid);
      assert.equal(await readProcUid(pid), hostUid);
      const status = await readFile(`/proc/${pid}/status`, "utf8");
      assert.match(status, /^NoNewPrivs:\s+1$/m);
      assert.match(status, /^Seccomp:\s+2$/m);
      assert.match(status, /^CapEff:\s+0+$/m);
      const root = `/proc/${pid}/root`;
      for (const hostPath of ["/etc/shadow", "/etc/passwd", "/root", "/home", "/var/lib/mvm", "/proc/1", "/dev/shm/mvm-vm", t.stateDir, sharedImagesDir()]) {
        assert.equal(existsSync(join(root, hostPath)), false, `${hostPath} is visible to QEMU`);
      }
      // Its own guest RAM file and save directory (nothing else of tmpfs), kernel and initramfs.
      assert.deepEqual((await readdir(join(root, "vm"))).sort(), ["initrd", "ram", "save", "vmlinuz"]);
    } finally {
      await t.engine.killSandbox(info.id);
    }
  });

  test("restored sandboxes never share randomness, and each gets its own work disk", async () => {
    const a = await t.engine.createSandbox({ image: DEFAULT_IMAGE });
    const b = await t.engine.createSandbox({ image: DEFAULT_IMAGE });
    try {
      const read = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/uuid";
      const [ra, rb] = await Promise.all([sh(t.engine, a.id, read), sh(t.engine, b.id, read)]);
      assert.equal(ra.exit.exitCode, 0, ra.stderr);
      assert.notEqual(ra.stdout, rb.stdout);
      await sh(t.engine, a.id, "echo only-in-a > /work/mine");
      const seen = await sh(t.engine, b.id, "ls -A /work");
      assert.equal(seen.stdout, "");
      const clock = await sh(t.engine, a.id, "date +%s");
      assert.ok(Math.abs(Number(clock.stdout.trim()) - Date.now() / 1000) < 120, `guest clock ${clock.stdout}`);
    } finally {
      await t.engine.killSandbox(a.id);
      await t.engine.killSandbox(b.id);
    }
  });

  test("a QEMU crash is a SandboxCrashedError and releases everything", async () => {
    const info = await t.engine.createSandbox({ image: DEFAULT_IMAGE });
    const { hostUid } = await recordOf(t.stateDir, info.id);
    const pid = await qemuPid(hostUid!);
    process.kill(pid, "SIGSEGV");
    await assert.rejects(run(t.engine, info.id, ["/bin/sleep", "30"]), (err: unknown) => {
      assert.ok(err instanceof SandboxCrashedError, String(err));
      assert.match(err.message, /QEMU died of signal 11|killed by SIGSEGV/);
      return true;
    });
    await noneLeft(t.stateDir, info.id, hostUid);
    assert.equal((await t.engine.getSandbox(info.id)).endReason, "crashed");
  });

  test("a hung guest is found by the heartbeat and becomes SandboxCrashedError", async () => {
    const hb = await vmEngine({ heartbeat: { intervalMs: 500, timeoutMs: 3_000 } });
    try {
      const info = await hb.engine.createSandbox({ image: DEFAULT_IMAGE });
      const { hostUid } = await recordOf(hb.stateDir, info.id);
      const pid = await qemuPid(hostUid!);
      process.kill(pid, "SIGSTOP");
      const started = Date.now();
      await assert.rejects(run(hb.engine, info.id, ["/bin/true"]), SandboxCrashedError);
      const tookMs = Date.now() - started;
      await noneLeft(hb.stateDir, info.id, hostUid);
      assert.match((await hb.engine.getSandbox(info.id)).endReason ?? "", /crashed/);
      console.log(`hung guest reported after ${tookMs} ms`);
    } finally {
      await hb.engine.close();
      await rm(hb.stateDir, { recursive: true, force: true });
    }
  });

  describe("a tampered disk fails closed", () => {
    let imagesDir: string;
    let diskPath: string;
    let offset: number;
    let original: number;
    before(async () => {
      // A small image of its own, so the shared default image's disk is never touched.
      imagesDir = await mkdtemp(join(tmpdir(), "mvm-vmtier-images-"));
      const src = join(imagesDir, "src");
      await mkdir(src);
      await buildBusyboxRootfs(src);
      await writeFile(join(src, "data.txt"), `${"payload ".repeat(1024)}\n`);
    });
    after(async () => {
      if (diskPath !== undefined) {
        await rm(diskPath, { force: true });
        await rm(diskPath.replace(/\.ext4$/, ".verity.json"), { force: true });
        await rm(`${diskPath}.verified`, { force: true });
      }
      await rm(imagesDir, { recursive: true, force: true });
    });

    test("a byte flipped under a running guest panics it when read: SandboxCrashedError naming the disk", async () => {
      const e = await vmEngine({ imagesDir: join(imagesDir, "store") });
      try {
        await e.engine.importImage(join(imagesDir, "src"), "tamper-test:1");
        const info = await e.engine.createSandbox({ image: "tamper-test:1" });
        // Find the image disk: the newest verity disk in the shared cache holding data.txt.
        const disks = join(sharedVmCacheDir(), "disks");
        for (const name of await readdir(disks)) {
          if (!name.endsWith(".ext4")) continue;
          const path = join(disks, name);
          const out = execFileSync("debugfs", ["-R", "bmap /data.txt 0", path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
          if (/^[0-9]+$/.test(out) && Number(out) > 0) {
            diskPath = path;
            offset = Number(out) * 4096 + 100;
          }
        }
        assert.ok(diskPath !== undefined, "the test image's disk was not found");
        const fh = await open(diskPath, "r+");
        const byte = Buffer.alloc(1);
        await fh.read(byte, 0, 1, offset);
        original = byte[0]!;
        byte[0] = original ^ 0x01;
        await fh.write(byte, 0, 1, offset);
        await fh.close();
        await assert.rejects(run(e.engine, info.id, ["/bin/cat", "/data.txt"]), (err: unknown) => {
          assert.ok(err instanceof SandboxCrashedError, String(err));
          assert.match(err.message, /tampered disk block|verity/);
          return true;
        });
        await e.engine.killSandbox(info.id).catch(() => undefined);
      } finally {
        await e.engine.close();
        await rm(e.stateDir, { recursive: true, force: true });
      }
    });

    test("the host refuses to start a sandbox on a disk that fails its hash check: AdmissionError", async () => {
      assert.ok(diskPath !== undefined);
      const e = await vmEngine({ imagesDir: join(imagesDir, "store") });
      try {
        await assert.rejects(e.engine.createSandbox({ image: "tamper-test:1" }), (err: unknown) => {
          assert.ok(err instanceof AdmissionError, String(err));
          assert.match(err.message, /dm-verity verification/);
          return true;
        });
        assert.deepEqual(await readdir(join(e.stateDir, "sandboxes")).catch(() => []), []);
      } finally {
        await e.engine.close();
        await rm(e.stateDir, { recursive: true, force: true });
      }
    });
  });
});
