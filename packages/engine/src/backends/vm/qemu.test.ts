import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { InvalidArgumentError } from "@mvm/protocol";
import { CONSOLE_FD, CONTROL_FD, QMP_FD, RELAY_FD, STATE_FD, kernelCommandLine, parseTscKhz, qemuArgs, type QemuVmConfig } from "./qemu.js";

const verity = { dataBlocks: 100, hashStartBlock: 100, rootHashHex: "ab".repeat(32), saltHex: "cd".repeat(32) };
const base: QemuVmConfig = {
  accel: "tcg", kernelPath: "/k/vmlinuz", initrdPath: "/k/initrd", rootDiskPath: "/d/root.ext4", agentDiskPath: "/d/agent.ext4",
  workDiskPath: "/d/work.img", rootVerity: verity, agentVerity: { ...verity, rootHashHex: "ef".repeat(32) },
  memoryMiB: 256, cpus: 1, guestUid: 1000,
};

describe("parseTscKhz", () => {
  const cpu = (mhz: string, flags: string) => `processor\t: 0\ncpu MHz\t\t: ${mhz}\nflags\t\t: fpu ${flags} sse\n\nprocessor\t: 1\ncpu MHz\t\t: 1.000\n`;
  it("reads the first CPU's rate when the TSC is constant", () => {
    assert.equal(parseTscKhz(cpu("2096.000", "tsc constant_tsc")), 2_096_000);
    assert.equal(parseTscKhz(cpu("2095.9964", "constant_tsc")), 2_095_996);
  });
  it("gives up on a variable TSC or a missing or absurd rate", () => {
    assert.equal(parseTscKhz(cpu("2096.000", "tsc")), undefined);
    assert.equal(parseTscKhz(cpu("abc", "constant_tsc")), undefined);
    assert.equal(parseTscKhz(cpu("1.000", "constant_tsc")), undefined);
    assert.equal(parseTscKhz(""), undefined);
  });
});

describe("qemuArgs", () => {
  it("builds a microvm with read-only disks, the agent port on stdio and the seccomp sandbox", () => {
    const args = qemuArgs(base);
    const after = (flag: string) => args.filter((_, i) => args[i - 1] === flag);
    assert.deepEqual(after("-accel"), ["tcg"]);
    assert.deepEqual(after("-m"), ["256"]);
    assert.ok(args.includes("-nodefaults") && args.includes("-no-user-config") && args.includes("-no-reboot"));
    assert.deepEqual(after("-drive"), [
      "id=root,file=/d/root.ext4,format=raw,if=none,readonly=on,file.locking=off",
      "id=agent,file=/d/agent.ext4,format=raw,if=none,readonly=on,file.locking=off",
      "id=work,file=/d/work.img,format=raw,if=none,discard=unmap,file.locking=off",
    ]);
    assert.ok(after("-device").includes("virtserialport,chardev=ctl,name=mvm.ctl"));
    assert.ok(after("-chardev").includes("socket,id=qmp,fd=5"));
    assert.ok(!args.includes("-incoming") && !args.includes("-object"));
    const restoring = qemuArgs({ ...base, incoming: true, ramFile: { path: "/s/ram", shared: false } });
    assert.deepEqual(restoring.filter((_, i) => restoring[i - 1] === "-incoming"), ["defer"]);
    assert.deepEqual(restoring.filter((_, i) => restoring[i - 1] === "-object"), ["memory-backend-file,id=ram,size=256M,mem-path=/s/ram,share=off"]);
    assert.ok(after("-chardev").includes("stdio,id=agentch,signal=off"));
    assert.ok(after("-device").includes("virtserialport,chardev=agentch,name=mvm.agent"));
    assert.deepEqual(after("-sandbox"), ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
    assert.equal(after("-append")[0], kernelCommandLine(base));
    assert.ok(!args.includes("-cpu"));
    assert.deepEqual(qemuArgs({ ...base, accel: "kvm" }).filter((_, i, a) => a[i - 1] === "-cpu"), ["host"]);
  });

  it("adds the relay port on its own inherited socket and no network device", () => {
    const args = qemuArgs(base);
    const after = (flag: string) => args.filter((_, i) => args[i - 1] === flag);
    assert.ok(after("-chardev").includes(`socket,id=relay,fd=${RELAY_FD}`));
    assert.ok(after("-device").includes("virtserialport,chardev=relay,name=mvm.relay"));
    assert.ok(after("-device").includes("virtio-serial-device,max_ports=4"));
    assert.equal(after("-device").filter((d) => d.startsWith("virtserialport,")).length, 3);
    assert.ok(!args.some((a) => /netdev|virtio-net|-nic/.test(a)));
    assert.ok(![CONSOLE_FD, CONTROL_FD, QMP_FD, STATE_FD].includes(RELAY_FD));
  });

  it("passes the uid and both disks' verity parameters on the kernel command line", () => {
    assert.match(kernelCommandLine(base), /(^| )mvm\.uid=1000( |$)/);
    assert.match(kernelCommandLine(base), new RegExp(`(^| )mvm\\.verity_root=100:100:${"ab".repeat(32)}:${"cd".repeat(32)}( |$)`));
    assert.match(kernelCommandLine(base), new RegExp(`(^| )mvm\\.verity_agent=100:100:${"ef".repeat(32)}:`));
    assert.throws(() => kernelCommandLine({ ...base, rootVerity: { ...verity, rootHashHex: "x y" } }), InvalidArgumentError);
    assert.doesNotMatch(kernelCommandLine(base), /tsc_early_khz/);
    assert.match(kernelCommandLine({ ...base, tscKhz: 2_096_000 }), /(^| )tsc_early_khz=2096000( |$)/);
  });

  it("rejects paths that would inject options and out-of-range numbers", () => {
    assert.throws(() => qemuArgs({ ...base, rootDiskPath: "/d/x,readonly=off" }), InvalidArgumentError);
    assert.throws(() => qemuArgs({ ...base, kernelPath: "relative" }), InvalidArgumentError);
    assert.throws(() => qemuArgs({ ...base, guestUid: 0 }), /Invalid guestUid "0"/);
    assert.throws(() => qemuArgs({ ...base, memoryMiB: 64 }), InvalidArgumentError);
    assert.throws(() => qemuArgs({ ...base, cpus: 1.5 }), InvalidArgumentError);
    assert.throws(() => qemuArgs({ ...base, tscKhz: 12 }), InvalidArgumentError);
  });
});
