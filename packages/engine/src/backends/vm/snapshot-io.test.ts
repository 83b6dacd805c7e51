/**
 * Save/restore round trips with real QEMU (TCG). The guest is the cached guest kernel with a
 * tiny initramfs whose /init prints "tick <n>" on the serial console forever: a restored VM
 * that continues the count (instead of booting and starting at 0) proves its state survived.
 * The kernel is cached under $MVM_TEST_VM_CACHE (default /var/tmp/mvm-test-vm-cache).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { closeSync, openSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex, Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { InternalError, InvalidArgumentError, SnapshotMismatchError, TransportError } from "@mvm/protocol";
import { writeNewc } from "./cpio.js";
import { ensureGuestKernel } from "./kernel.js";
import { parseTscKhz } from "./qemu.js";
import { QmpClient } from "./qmp.js";
import { restoreVmState, saveVmState, waitIncomingDone } from "./snapshot-io.js";

const CACHE = process.env["MVM_TEST_VM_CACHE"] ?? "/var/tmp/mvm-test-vm-cache";
const MEMORY_MIB = 128;
const T = { timeoutMs: 120_000 };
/** Descriptors in QEMU: 3 serial console, 4 QMP, 5 the state file (restore only). */
const STATE_FD = 5;

const TICK_INIT = `#!/bin/busybox sh
i=0
while :; do echo "tick $i"; i=$((i + 1)); /bin/busybox usleep 50000; done
`;

/** The serial console of a VM, searchable as it arrives (capped at 1 MiB). */
class Console {
  text = "";
  private readonly waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];
  constructor(stream: Readable) {
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      this.text = (this.text + chunk).slice(-(1 << 20));
      for (const waiter of [...this.waiters]) {
        const match = waiter.re.exec(this.text);
        if (match) {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          waiter.resolve(match);
        }
      }
    });
  }
  /** Resolves with the first match; rejects with the console's tail after `timeoutMs`. */
  waitFor(re: RegExp, timeoutMs = 180_000): Promise<RegExpExecArray> {
    const match = re.exec(this.text);
    if (match) return Promise.resolve(match);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${re} on the console; it said: ${JSON.stringify(this.text.slice(-500))}`)), timeoutMs);
      this.waiters.push({ re, resolve: (m) => {
        clearTimeout(timer);
        resolve(m);
      } });
    });
  }
  ticks(): number[] {
    return [...this.text.matchAll(/tick (\d+)\r?\n/g)].map((m) => Number(m[1]));
  }
}

interface Vm {
  readonly child: ChildProcess;
  readonly qmp: QmpClient;
  readonly console: Console;
  readonly exited: Promise<unknown>;
}

describe("VM state save and restore", { timeout: 600_000 }, () => {
  let root: string;
  let kernelPath: string;
  let initrdPath: string;
  let tscKhz: number | undefined;
  const vms: Vm[] = [];

  before(async () => {
    root = await mkdtemp(join(tmpdir(), "mvm-snapio-"));
    await chmod(root, 0o711);
    kernelPath = (await ensureGuestKernel(join(CACHE, "kernel"))).kernelPath;
    tscKhz = parseTscKhz(await readFile("/proc/cpuinfo", "utf8"));
    initrdPath = join(root, "tick.cpio.gz");
    const busybox = await readFile("/bin/busybox");
    await writeFile(initrdPath, gzipSync(writeNewc([
      { type: "dir", path: "bin", mode: 0o755 },
      { type: "file", path: "bin/busybox", mode: 0o755, data: busybox },
      { type: "dir", path: "dev", mode: 0o755 },
      { type: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
      { type: "file", path: "init", mode: 0o755, data: Buffer.from(TICK_INIT) },
    ])));
  });

  after(async () => {
    for (const vm of vms) {
      vm.qmp.close();
      vm.child.kill("SIGKILL");
      await vm.exited;
    }
    await rm(root, { recursive: true, force: true });
  });

  /** Starts QEMU; `ram` makes guest RAM a file backend, `incoming` adds `-incoming`. */
  async function startVm(options: { boot?: boolean; ram?: { path: string; share: boolean }; incoming?: string; stateFd?: number; uid?: number } = {}): Promise<Vm> {
    const machine = options.ram
      ? ["-M", "microvm,x-option-roms=off,memory-backend=mvm.ram", "-object", `memory-backend-file,id=mvm.ram,size=${MEMORY_MIB}M,mem-path=${options.ram.path},share=${options.ram.share ? "on" : "off"}`]
      : ["-M", "microvm,x-option-roms=off"];
    const args = [
      ...machine,
      "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-m", String(MEMORY_MIB),
      ...(options.boot === false ? ["-S"] : ["-kernel", kernelPath, "-initrd", initrdPath, "-append", `console=ttyS0 quiet panic=-1${tscKhz !== undefined ? ` tsc_early_khz=${tscKhz}` : ""}`]),
      "-chardev", "socket,id=con,fd=3", "-serial", "chardev:con",
      "-chardev", "socket,id=qmp,fd=4", "-mon", "chardev=qmp,mode=control",
      ...(options.incoming !== undefined ? ["-incoming", options.incoming] : []),
      "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ];
    const argv = options.uid === undefined ? ["qemu-system-x86_64", ...args] : ["setpriv", `--reuid=${options.uid}`, `--regid=${options.uid}`, "--clear-groups", "qemu-system-x86_64", ...args];
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe", options.stateFd ?? "ignore"] });
    const exited = once(child, "exit");
    const serial = new Console(child.stdio[3] as Readable);
    try {
      const qmp = await QmpClient.connect(child.stdio[4] as Duplex, { timeoutMs: 30_000, label: `qemu ${child.pid}` });
      const vm = { child, qmp, console: serial, exited };
      vms.push(vm);
      return vm;
    } catch (err) {
      child.kill("SIGKILL");
      await exited;
      throw err;
    }
  }

  async function stop(vm: Vm): Promise<void> {
    vm.qmp.close();
    vm.child.kill("SIGKILL");
    await vm.exited;
  }

  /** Boots a ticking guest, saves it, and returns the last tick seen before the save. */
  async function bootAndSave(path: string, ram?: { path: string; share: boolean }): Promise<{ lastTick: number; bytes: number }> {
    const source = await startVm(ram ? { ram } : {});
    await source.console.waitFor(/tick 3\r?\n/);
    const started = performance.now();
    const saved = await saveVmState(source.qmp, { path, ...T, ignoreShared: ram !== undefined });
    console.log(`save (${ram ? "file-backed RAM" : "plain"}): ${(performance.now() - started).toFixed(0)} ms, ${saved.bytes} bytes, QEMU total-time ${saved.totalTimeMs} ms`);
    assert.equal(saved.bytes, (await stat(path)).size);
    // The digest is of the bytes as they streamed past, and they are the bytes in the file.
    assert.equal(saved.digest, `sha256:${createHash("sha256").update(await readFile(path)).digest("hex")}`);
    assert.deepEqual(await source.qmp.execute("query-status", undefined, T), { status: "postmigrate", singlestep: false, running: false });
    const lastTick = Math.max(...source.console.ticks());
    await stop(source);
    return { lastTick, bytes: saved.bytes };
  }

  /** The first tick a restored VM prints; it continues the saved count. */
  async function assertContinues(vm: Vm, lastTick: number): Promise<void> {
    const [, first] = await vm.console.waitFor(/tick (\d+)\r?\n/);
    assert.ok(Number(first) > lastTick, `restored VM printed "tick ${first}" after the save saw "tick ${lastTick}"`);
    assert.equal((await vm.qmp.execute("query-status", undefined, T) as { status: string }).status, "running");
  }

  it("restores a plain migration stream with -incoming defer and with -incoming fd", async () => {
    const path = join(root, "plain.state");
    const { lastTick } = await bootAndSave(path);
    assert.deepEqual((await readdir(root)).filter((name) => name.endsWith(".tmp")), []);

    const fd = openSync(path, "r");
    let started = performance.now();
    const deferred = await startVm({ incoming: "defer", stateFd: fd }).finally(() => closeSync(fd));
    await restoreVmState(deferred.qmp, { fdNumber: STATE_FD, ...T });
    console.log(`restore (plain, defer): running ${(performance.now() - started).toFixed(0)} ms after spawn`);
    await assertContinues(deferred, lastTick);
    await stop(deferred);

    const fd2 = openSync(path, "r");
    started = performance.now();
    const direct = await startVm({ incoming: `fd:${STATE_FD}`, stateFd: fd2 }).finally(() => closeSync(fd2));
    await waitIncomingDone(direct.qmp, T);
    console.log(`restore (plain, -incoming fd): running ${(performance.now() - started).toFixed(0)} ms after spawn`);
    await assertContinues(direct, lastTick);
    await stop(direct);
  });

  it("restores from a shared RAM file copy-on-write: two VMs from one file, the file unchanged", async () => {
    const ramPath = join(root, "ram");
    const path = join(root, "shared.state");
    const { lastTick, bytes } = await bootAndSave(path, { path: ramPath, share: true });
    // Only device state is in the stream; guest RAM is the file.
    assert.ok(bytes < 1024 * 1024, `state stream of ${bytes} bytes holds guest RAM`);
    const digest = async () => createHash("sha256").update(await readFile(ramPath)).digest("hex");
    const before = await digest();

    const restored: Vm[] = [];
    for (let i = 0; i < 2; i++) {
      const fd = openSync(path, "r");
      const started = performance.now();
      const vm = await startVm({ incoming: "defer", stateFd: fd, ram: { path: ramPath, share: false } }).finally(() => closeSync(fd));
      await restoreVmState(vm.qmp, { fdNumber: STATE_FD, ...T, ignoreShared: true });
      console.log(`restore (file-backed RAM, private): running ${(performance.now() - started).toFixed(0)} ms after spawn`);
      restored.push(vm);
    }
    for (const vm of restored) await assertContinues(vm, lastTick);
    // Both keep running on their own copies: each prints further ticks.
    for (const vm of restored) {
      const seen = Math.max(...vm.console.ticks());
      await vm.console.waitFor(new RegExp(`tick ${seen + 2}\\r?\\n`));
    }
    for (const vm of restored) await stop(vm);
    assert.equal(await digest(), before);
  });

  it("fails a restore from a truncated file with SnapshotMismatchError, and QEMU exits", async () => {
    const path = join(root, "paused.state");
    const source = await startVm({ boot: false });
    const saved = await saveVmState(source.qmp, { path, ...T });
    await stop(source);
    await truncate(path, Math.floor(saved.bytes / 2));
    const fd = openSync(path, "r");
    const vm = await startVm({ boot: false, incoming: "defer", stateFd: fd }).finally(() => closeSync(fd));
    await assert.rejects(restoreVmState(vm.qmp, { fdNumber: STATE_FD, ...T }), SnapshotMismatchError);
    await vm.exited;
  });

  it("stops a stream over maxBytes with TransportError and leaves no file", async () => {
    const path = join(root, "capped.state");
    const source = await startVm({ boot: false });
    await assert.rejects(saveVmState(source.qmp, { path, ...T, maxBytes: 4096 }), (err: unknown) => err instanceof TransportError && /exceeds 4096 bytes/.test(err.message));
    assert.deepEqual((await readdir(root)).filter((name) => name.startsWith("capped") || name.startsWith(".capped")), []);
    // The source VM survives a failed save and can still be saved.
    await saveVmState(source.qmp, { path, ...T });
    assert.ok((await stat(path)).size > 4096);
    await stop(source);
  });

  it("hands the migration socket to a QEMU running as another uid", { skip: process.getuid?.() !== 0 && "needs root to change uids" }, async () => {
    const path = join(root, "unprivileged.state");
    const sockets = join(root, "sockets");
    await mkdir(sockets, { mode: 0o711 });
    const source = await startVm({ boot: false, uid: 65_534 });
    const saved = await saveVmState(source.qmp, { path, ...T, socketParentDir: sockets, socketOwner: { uid: 65_534, gid: 65_534 } });
    assert.equal((await stat(path)).size, saved.bytes);
    assert.deepEqual(await readdir(sockets), []);
    await stop(source);
    // Without the owner the socket directory stays private to root and QEMU cannot connect.
    const denied = await startVm({ boot: false, uid: 65_534 });
    await assert.rejects(saveVmState(denied.qmp, { path, ...T, socketParentDir: sockets }), (err: unknown) => err instanceof InternalError && /Permission denied/.test(err.message));
    await stop(denied);
  });

  it("checks its arguments", async () => {
    const source = await startVm({ boot: false });
    await assert.rejects(saveVmState(source.qmp, { path: "relative", ...T }), InvalidArgumentError);
    await assert.rejects(restoreVmState(source.qmp, { fdNumber: 1, ...T }), InvalidArgumentError);
    await stop(source);
  });
});
