/**
 * When the vm backend uses KVM: only hardware virtualization that the jailed QEMU uid can open.
 * The module directory is a stand-in (a temp dir with the module names); the devices are real
 * character devices (copies of /dev/null made with mknod, so their mode and owner can be set).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { UnsupportedCapabilityError } from "@mvm/protocol";
import type { LaunchSpec } from "../types.js";
import { VmBackend, kvmStatus } from "./vm-backend.js";

const isRoot = process.geteuid?.() === 0;

async function modules(...names: string[]): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-kvm-modules-"));
  for (const name of names) await mkdir(join(dir, name));
  return dir;
}

function mknod(path: string, mode: string, owner: string): void {
  const made = spawnSync("/usr/bin/mknod", ["-m", mode, path, "c", "1", "3"], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  const chowned = spawnSync("/usr/bin/chown", [owner, path], { encoding: "utf8" });
  assert.equal(chowned.status, 0, chowned.stderr);
}

describe("kvmStatus", () => {
  it("is not usable when the device is missing", async () => {
    const dir = await modules("kvm", "kvm_intel");
    try {
      const status = await kvmStatus(dir, join(dir, "no-such-kvm"));
      assert.equal(status.usable, false);
      assert.match(status.detail, /does not exist/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("is not usable when KVM is a paravirtual provider (kvm_pvm) that cannot run the stock kernel", async () => {
    const dir = await modules("kvm", "kvm_pvm");
    try {
      const status = await kvmStatus(dir, "/dev/null");
      assert.equal(status.usable, false);
      assert.match(status.detail, /not hardware virtualization .*kvm_pvm/);
      assert.ok(status.hint);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("is usable with kvm_intel or kvm_amd and a device the jailed uid can open", async () => {
    for (const vendor of ["kvm_intel", "kvm_amd"]) {
      const dir = await modules("kvm", vendor);
      try {
        const status = await kvmStatus(dir, "/dev/null");
        assert.equal(status.usable, true, status.detail);
        assert.match(status.detail, new RegExp(vendor));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
  });

  it("as root, a device only root can open is not usable (QEMU runs as an unprivileged uid); group kvm 0660 is", { skip: !isRoot && "needs root for mknod and chown: runs in CI, which runs as root" }, async () => {
    const dir = await modules("kvm", "kvm_intel");
    const device = `/dev/mvm-kvm-status-test-${process.pid}`;
    try {
      mknod(device, "0600", "0:0");
      const rootOnly = await kvmStatus(dir, device);
      assert.equal(rootOnly.usable, false);
      assert.match(rootOnly.detail, /only for root/);
      assert.match(rootOnly.hint ?? "", /chmod 0660/);
      await rm(device);
      mknod(device, "0660", "0:65533");
      assert.equal((await kvmStatus(dir, device)).usable, true);
    } finally {
      await rm(device, { force: true });
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("a vm backend configured for KVM follows what this host's KVM can do", () => {
  // No skip: each host checks its own side. Where KVM is not usable (these machines and CI: a
  // paravirtual /dev/kvm, or none) the forced backend is refused; on a host with usable hardware
  // KVM it is offered as vm-hardware.
  it("without usable KVM it probes as unusable and refuses a launch before building anything, and auto runs emulated; with it, both are vm-hardware", async () => {
    const status = await kvmStatus();
    const root = await mkdtemp(join(tmpdir(), "mvm-kvm-backend-"));
    try {
      const forced = new VmBackend({ cacheRoot: root, accel: "kvm" });
      const probe = await forced.probe();
      const auto = await new VmBackend({ cacheRoot: root }).probe();
      assert.equal(probe.checks.find((c) => c.name === "kvm")?.detail, status.detail);
      if (status.usable) {
        assert.equal(probe.usable, true);
        assert.equal(probe.tier, "vm-hardware");
        assert.equal(auto.tier, "vm-hardware");
        return;
      }
      assert.equal(probe.usable, false);
      assert.equal(probe.tier, "vm-emulated");
      const spec = { sandboxId: "sbx_aaaaaaaaaaaaaaaaaaaa" } as unknown as LaunchSpec;
      await assert.rejects(forced.launch(spec), (err: unknown) => err instanceof UnsupportedCapabilityError && /configured for KVM/.test(err.message));
      assert.equal(auto.tier, "vm-emulated");
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
