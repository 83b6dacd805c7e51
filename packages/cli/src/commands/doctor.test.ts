import { test } from "node:test";
import assert from "node:assert/strict";
import type { HealthInfo } from "@mvm/protocol";
import { FakeEngine } from "../_test/fake-engine.js";
import { cli } from "../_test/test-io.js";
import type { DoctorJsonResult } from "./doctor.js";

/** A host without /dev/kvm: the vm backend works emulated, the namespace backend works too. */
function tcgHost(): HealthInfo {
  return {
    version: "0.1.0",
    defaultBackend: "vm",
    defaultReason: "strongest usable tier: vm-emulated",
    backends: [
      {
        backend: "vm",
        tier: "vm-emulated",
        usable: true,
        checks: [
          { name: "qemu", ok: true, detail: "QEMU at /usr/bin/qemu-system-x86_64" },
          { name: "kvm", ok: false, detail: "/dev/kvm is not usable", hint: "Enable virtualization" },
        ],
        enforceable: { memory: true, pids: false, cpu: false },
      },
      {
        backend: "namespace",
        tier: "container",
        usable: true,
        checks: [{ name: "bwrap", ok: true, detail: "bubblewrap 0.8.0" }],
        enforceable: { memory: true, pids: true, cpu: true },
      },
    ],
  };
}

function engineWith(health: HealthInfo): FakeEngine {
  const engine = new FakeEngine();
  engine.health_ = health;
  return engine;
}

test("doctor prints the default with its reason, then a tier table, then each backend's checks", async () => {
  const r = await cli(["doctor"], { engine: engineWith(tcgHost()) });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");
  const expectedHead =
    "engine 0.1.0\n" +
    "default backend: vm, tier vm-emulated (strongest usable tier: vm-emulated)\n" +
    "\n" +
    "BACKEND    TIER         ISOLATION                           USABLE  DEFAULT\n" +
    "vm         vm-emulated  VM isolation, emulated (TCG): slow  yes     yes\n" +
    "namespace  container    shared host kernel                  yes\n";
  assert.ok(r.stdout.startsWith(expectedHead), r.stdout);
  assert.match(r.stdout, /^vm: tier vm-emulated \(VM isolation, emulated \(TCG\): slow\), usable$/m);
  assert.match(r.stdout, /^  FAIL  kvm: \/dev\/kvm is not usable\n        fix: Enable virtualization$/m);
  assert.match(r.stdout, /^namespace: tier container \(shared host kernel\), usable$/m);
});

test("doctor labels the hardware tier, and falls to the namespace row when the vm is unusable", async () => {
  const kvm = tcgHost();
  kvm.backends[0] = { ...kvm.backends[0]!, tier: "vm-hardware" };
  kvm.defaultReason = "strongest usable tier: vm-hardware";
  const hw = await cli(["doctor"], { engine: engineWith(kvm) });
  assert.match(hw.stdout, /^vm +vm-hardware +hardware VM isolation \(KVM\) +yes +yes$/m);

  const noQemu = tcgHost();
  noQemu.backends[0] = { ...noQemu.backends[0]!, usable: false };
  noQemu.defaultBackend = "namespace";
  noQemu.defaultReason = 'strongest usable tier: container; "vm" is not usable: qemu: not found';
  const r = await cli(["doctor"], { engine: engineWith(noQemu) });
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^default backend: namespace, tier container \(strongest usable tier: container; "vm" is not usable: qemu: not found\)$/m);
  assert.match(r.stdout, /^vm +vm-emulated +VM isolation, emulated \(TCG\): slow +no$/m);
  assert.match(r.stdout, /^namespace +container +shared host kernel +yes +yes$/m);
});

test("doctor --json carries the same data: each backend's tier label, usable, checks and the default", async () => {
  const r = await cli(["doctor", "--json"], { engine: engineWith(tcgHost()) });
  assert.equal(r.code, 0);
  const out = JSON.parse(r.stdout) as DoctorJsonResult;
  assert.equal(out.usable, true);
  assert.equal(out.defaultBackend, "vm");
  assert.equal(out.defaultReason, "strongest usable tier: vm-emulated");
  assert.deepEqual(
    out.backends.map((b) => [b.backend, b.tier, b.isolation, b.usable, b.default]),
    [
      ["vm", "vm-emulated", "VM isolation, emulated (TCG): slow", true, true],
      ["namespace", "container", "shared host kernel", true, false],
    ],
  );
  assert.deepEqual(out.backends[0]?.checks[1], { name: "kvm", ok: false, detail: "/dev/kvm is not usable", hint: "Enable virtualization" });
});

test("a configured default that is unusable makes doctor exit 1 with the engine's reason, though another backend works", async () => {
  const pinned = tcgHost();
  pinned.backends[0] = { ...pinned.backends[0]!, usable: false };
  pinned.defaultBackend = null;
  pinned.defaultReason = 'MVM_DEFAULT_BACKEND names "vm", which is not usable here: qemu: not found';
  const r = await cli(["doctor"], { engine: engineWith(pinned) });
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^default backend: none \(MVM_DEFAULT_BACKEND names "vm", which is not usable here: qemu: not found\)$/m);
  assert.doesNotMatch(r.stdout, / yes +yes$/m, "no row is marked default");
  assert.match(r.stderr, /^error: the default backend cannot start sandboxes: MVM_DEFAULT_BACKEND names "vm", which is not usable here: qemu: not found\nhint: .*MVM_DEFAULT_BACKEND/);
  const json = await cli(["doctor", "--json"], { engine: engineWith(pinned) });
  assert.equal(json.code, 1);
  assert.equal((JSON.parse(json.stdout) as DoctorJsonResult).usable, false);
});

test("text from the engine is printed with control characters escaped", async () => {
  const hostile = tcgHost();
  hostile.defaultReason = "fine\x1b[2J";
  const r = await cli(["doctor"], { engine: engineWith(hostile) });
  assert.match(r.stdout, /^default backend: vm, tier vm-emulated \(fine\\x1b\[2J\)$/m);
  assert.doesNotMatch(r.stdout, /\x1b/);
});
