/** Sandbox RAM directories on a real tmpfs (/dev/shm), and the device-state header codec. */
import assert from "node:assert/strict";
import { mkdtemp, open, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SnapshotMismatchError } from "@mvm/protocol";
import { makeSandboxRam, removeSandboxRam, sweepSandboxRam } from "./ram-file.js";
import { encodeDeviceHeader, readDeviceHeader, type DeviceHeader } from "./vm-snapshot.js";

const MiB = 1024 * 1024;
let root: string;

before(async () => {
  root = await mkdtemp("/dev/shm/mvm-ram-test-");
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("makeSandboxRam", () => {
  it("makes an all-hole RAM file of the VM's size and a save directory, 0600/0700, under a 0711 directory", async () => {
    const ram = await makeSandboxRam({ root, name: "sbx_a", memoryMiB: 128 });
    const st = await stat(ram.ramPath);
    assert.equal(st.size, 128 * MiB);
    assert.equal(st.blocks, 0);
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal((await stat(ram.saveDir)).mode & 0o777, 0o700);
    assert.equal((await stat(ram.dir)).mode & 0o777, 0o711);
    assert.equal((await stat(root)).mode & 0o777, 0o711);
    await assert.rejects(makeSandboxRam({ root, name: "sbx_a", memoryMiB: 128 }), { code: "EEXIST" });
  });

  it("copies a template sparsely, and refuses one of another size leaving nothing", async () => {
    const template = join(root, "template");
    const file = await open(template, "w");
    await file.write(Buffer.alloc(4096, 7), 0, 4096, 3 * MiB);
    await file.truncate(128 * MiB);
    await file.close();
    const handle = await open(template, "r");
    try {
      const ram = await makeSandboxRam({ root, name: "sbx_b", memoryMiB: 128, template: handle });
      const st = await stat(ram.ramPath);
      assert.equal(st.size, 128 * MiB);
      assert.ok(st.blocks * 512 <= 64 * 1024, `copy holds ${st.blocks * 512} bytes`);
      const copy = await open(ram.ramPath, "r");
      const buf = Buffer.alloc(4096);
      await copy.read(buf, 0, 4096, 3 * MiB);
      await copy.close();
      assert.ok(buf.every((b) => b === 7));
      await assert.rejects(makeSandboxRam({ root, name: "sbx_c", memoryMiB: 256, template: handle }), SnapshotMismatchError);
      assert.ok(!(await readdir(root)).includes("sbx_c"));
    } finally {
      await handle.close();
    }
  });

  it("refuses a name that is not a plain id", async () => {
    for (const name of ["../x", "a/b", "", ".", "x".repeat(100)]) await assert.rejects(makeSandboxRam({ root, name, memoryMiB: 128 }), { code: "INVALID_ARGUMENT" });
  });
});

describe("removeSandboxRam and sweepSandboxRam", () => {
  it("removes only a direct child of the root", async () => {
    const ram = await makeSandboxRam({ root, name: "sbx_d", memoryMiB: 128 });
    await removeSandboxRam(root, join(root, "..", "elsewhere"));
    await removeSandboxRam("/", root);
    assert.ok((await readdir(root)).includes("sbx_d"));
    await removeSandboxRam(root, ram.dir);
    assert.ok(!(await readdir(root)).includes("sbx_d"));
  });

  it("sweeps old directories no process holds open, and keeps held and young ones", async () => {
    const held = await makeSandboxRam({ root, name: "sbx_held", memoryMiB: 128 });
    const idle = await makeSandboxRam({ root, name: "sbx_idle", memoryMiB: 128 });
    const handle = await open(held.ramPath, "r");
    try {
      assert.deepEqual(await sweepSandboxRam(root, 60_000), []);
      const removed = await sweepSandboxRam(root, 0);
      assert.ok(removed.includes(idle.dir));
      assert.ok(!removed.includes(held.dir));
      assert.ok((await readdir(root)).includes("sbx_held"));
    } finally {
      await handle.close();
    }
  });
});

describe("device state header", () => {
  const HEADER: DeviceHeader = { argsDigest: "a".repeat(64), rootDiskKey: "image:sha256:x", agentDiskKey: "runtime:y", guestUid: 1000, accel: "tcg" };

  it("leaves the descriptor just past itself when it matches, and refuses any difference", async () => {
    const path = join(root, "device");
    await writeFile(path, Buffer.concat([encodeDeviceHeader(HEADER), Buffer.from("QEVM stream")]));
    const handle = await open(path, "r");
    try {
      await readDeviceHeader(handle, HEADER, "test");
      const rest = Buffer.alloc(64);
      const { bytesRead } = await handle.read(rest, 0, rest.length, null);
      assert.equal(rest.subarray(0, bytesRead).toString(), "QEVM stream");
    } finally {
      await handle.close();
    }
    for (const other of [{ ...HEADER, argsDigest: "b".repeat(64) }, { ...HEADER, agentDiskKey: "runtime:z" }, { ...HEADER, guestUid: 1001 }, { ...HEADER, accel: "kvm" as const }]) {
      const h = await open(path, "r");
      await assert.rejects(readDeviceHeader(h, other, "test"), SnapshotMismatchError);
      await h.close();
    }
  });

  it("refuses a stream without a header, or with a malformed one", async () => {
    for (const bytes of ["QEVM stream", "mvm-vm-device v1 {not json}\nQEVM", `mvm-vm-device v1 ${JSON.stringify({ ...HEADER, extra: 1 })}\n`, "mvm-vm-device v1 " + "x".repeat(5000)]) {
      const path = join(root, "bad-device");
      await writeFile(path, bytes);
      const h = await open(path, "r");
      await assert.rejects(readDeviceHeader(h, HEADER, "test"), SnapshotMismatchError);
      await h.close();
    }
  });
});
