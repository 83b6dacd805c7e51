import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { InvalidArgumentError, UnsupportedCapabilityError, type BackendName, type Tier } from "@mvm/protocol";
import { TIER_STRENGTH, chooseBackend, chooseDefault, parseBackendName, resolveConfiguredDefault } from "./backend-choice.js";
import type { ProbeResult } from "./backends/types.js";

function probe(backend: BackendName, tier: Tier, usable: boolean): ProbeResult {
  return {
    backend,
    tier,
    usable,
    checks: usable
      ? [{ name: "fake", ok: true, detail: "fine" }]
      : [
          { name: "fake", ok: true, detail: "fine" },
          { name: "qemu", ok: false, detail: "qemu-system-x86_64 not found", hint: "install qemu" },
        ],
    enforceable: { memory: true, pids: true, cpu: true },
  };
}

test("the default is the strongest usable tier: vm-hardware, then vm-emulated, then container", () => {
  const hw = probe("vm", "vm-hardware", true);
  const emu = probe("vm", "vm-emulated", true);
  const ns = probe("namespace", "container", true);
  assert.equal(chooseDefault([ns, hw], undefined).index, 1);
  assert.equal(chooseDefault([ns, emu], undefined).index, 1, "vm-emulated beats namespace");
  assert.equal(chooseDefault([emu, ns], undefined).index, 0);
  assert.equal(chooseDefault([ns, emu], undefined).reason, "strongest usable tier: vm-emulated");
});

test("an unusable vm leaves the default to namespace, and the reason names the failed check", () => {
  const choice = chooseDefault([probe("vm", "vm-emulated", false), probe("namespace", "container", true)], undefined);
  assert.equal(choice.index, 1);
  assert.equal(choice.reason, 'strongest usable tier: container; "vm" is not usable: qemu: qemu-system-x86_64 not found');
  const none = chooseDefault([probe("vm", "vm-emulated", false), probe("namespace", "container", false)], undefined);
  assert.deepEqual(none, { index: -1, reason: "no backend is usable on this host" });
});

test("whatever the probes, the default is usable and no usable backend has a stronger tier", () => {
  const arbProbe = fc.record({
    backend: fc.constantFrom<BackendName>("vm", "namespace"),
    tier: fc.constantFrom<Tier>("vm-hardware", "vm-emulated", "container"),
    usable: fc.boolean(),
  });
  fc.assert(
    fc.property(fc.array(arbProbe, { maxLength: 5 }), (specs) => {
      const probes = specs.map((s) => probe(s.backend, s.tier, s.usable));
      const { index } = chooseDefault(probes, undefined);
      if (index < 0) return probes.every((p) => !p.usable);
      const chosen = probes[index]!;
      return chosen.usable && probes.every((p) => !p.usable || TIER_STRENGTH[p.tier] <= TIER_STRENGTH[chosen.tier]);
    }),
  );
});

test("a requested backend is used only when usable; it is never replaced", () => {
  const probes = [probe("vm", "vm-emulated", false), probe("namespace", "container", true)];
  assert.deepEqual(chooseBackend(probes, "namespace", undefined), { index: 1, defaulted: false });
  assert.deepEqual(chooseBackend(probes, undefined, undefined), { index: 1, defaulted: true });
  assert.throws(
    () => chooseBackend(probes, "vm", undefined),
    (err: unknown) =>
      err instanceof UnsupportedCapabilityError &&
      err.message === 'Backend "vm" is not usable on this host: qemu: qemu-system-x86_64 not found' &&
      err.hint === "run `mvmctl doctor` for fixes",
  );
  assert.throws(() => chooseBackend([probe("namespace", "container", true)], "vm", undefined), /Backend "vm" is not available in this engine/);
});

test("a configured default is honoured, even over a stronger tier, and never falls back", () => {
  const probes = [probe("vm", "vm-emulated", true), probe("namespace", "container", true)];
  const toNs = { backend: "namespace", setting: "MVM_DEFAULT_BACKEND" } as const;
  assert.deepEqual(chooseDefault(probes, toNs), { index: 1, reason: "set by MVM_DEFAULT_BACKEND" });
  assert.deepEqual(chooseBackend(probes, undefined, toNs), { index: 1, defaulted: true });
  assert.deepEqual(chooseBackend(probes, "vm", toNs), { index: 0, defaulted: false }, "a request beats the default");

  const broken = [probe("vm", "vm-emulated", false), probe("namespace", "container", true)];
  const toVm = { backend: "vm", setting: "MVM_DEFAULT_BACKEND" } as const;
  assert.equal(chooseDefault(broken, toVm).index, -1);
  assert.throws(
    () => chooseBackend(broken, undefined, toVm),
    (err: unknown) =>
      err instanceof UnsupportedCapabilityError &&
      err.message ===
        'No default backend can start sandboxes: MVM_DEFAULT_BACKEND names "vm", which is not usable here: qemu: qemu-system-x86_64 not found' &&
      /unset MVM_DEFAULT_BACKEND/.test(err.hint ?? ""),
  );
});

test("configured names are validated: bad values are InvalidArgumentError naming the setting", () => {
  assert.equal(parseBackendName("vm", "MVM_DEFAULT_BACKEND"), "vm");
  for (const bad of ["VM", "kvm", "", " namespace", 1, null]) {
    assert.throws(
      () => parseBackendName(bad, "MVM_DEFAULT_BACKEND"),
      (err: unknown) => err instanceof InvalidArgumentError && err.message.startsWith(`Invalid MVM_DEFAULT_BACKEND ${JSON.stringify(bad)}: expected one of "namespace", "vm"`),
    );
  }
  assert.equal(resolveConfiguredDefault(undefined, ["vm", "namespace"]), undefined);
  assert.deepEqual(resolveConfiguredDefault("vm", ["vm", "namespace"]), { backend: "vm", setting: "defaultBackend" });
  assert.throws(
    () => resolveConfiguredDefault({ backend: "vm", setting: "MVM_DEFAULT_BACKEND" }, ["namespace"]),
    (err: unknown) => err instanceof InvalidArgumentError && err.message === 'Invalid MVM_DEFAULT_BACKEND "vm": this engine offers only "namespace"',
  );
});
