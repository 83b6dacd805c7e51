import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { CONTAINER_TIER_CAVEATS, InvalidArgumentError, UnsupportedCapabilityError, type BackendName, type Tier } from "@mvm/protocol";
import {
  TIER_STRENGTH,
  checkTier,
  chooseBackend,
  chooseDefault,
  parseBackendName,
  parseTier,
  resolveConfiguredDefault,
  strictestMinimum,
} from "./backend-choice.js";
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
  assert.deepEqual(chooseBackend(probes, undefined, undefined), {
    index: 1,
    defaulted: true,
    reason: 'strongest usable tier: container; "vm" is not usable: qemu: qemu-system-x86_64 not found',
  });
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
  assert.deepEqual(chooseBackend(probes, undefined, toNs), { index: 1, defaulted: true, reason: "set by MVM_DEFAULT_BACKEND" });
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

test("tiers are ordered vm-hardware > vm-emulated > container; the strictest minimum wins", () => {
  assert.ok(TIER_STRENGTH["vm-hardware"] > TIER_STRENGTH["vm-emulated"] && TIER_STRENGTH["vm-emulated"] > TIER_STRENGTH.container);
  const req = { tier: "vm-emulated", setting: "minimumTier" } as const;
  const eng = { tier: "vm-hardware", setting: "MVM_MINIMUM_TIER of the engine" } as const;
  assert.equal(strictestMinimum(req, eng), eng);
  assert.equal(strictestMinimum(eng, req), eng);
  assert.equal(strictestMinimum(undefined, req), req);
  assert.equal(strictestMinimum(undefined, undefined), undefined);
  assert.equal(parseTier("vm-emulated", "MVM_MINIMUM_TIER"), "vm-emulated");
  assert.throws(
    () => parseTier("vm", "MVM_MINIMUM_TIER"),
    (err: unknown) => err instanceof InvalidArgumentError && err.message === 'Invalid MVM_MINIMUM_TIER "vm": expected one of "container", "vm-emulated", "vm-hardware"',
  );
});

test("a backend below the minimum tier is refused, whether named or chosen by default", () => {
  const emu = probe("vm", "vm-emulated", true);
  const ns = probe("namespace", "container", true);
  const hw = probe("vm", "vm-hardware", true);
  const probes = [emu, ns];
  const min = (tier: Tier) => ({ tier, setting: "minimumTier" });
  // Named: the caller's choice does not lower the minimum.
  assert.throws(
    () => checkTier(probes, ns, { defaulted: false, minimum: min("vm-emulated"), acknowledgedContainer: true }),
    (err: unknown) =>
      err instanceof UnsupportedCapabilityError &&
      err.message === 'Backend "namespace" gives the container tier, below the minimum "vm-emulated" set by minimumTier (it was named)' &&
      err.hint === 'name a backend of that tier or stronger: "vm" (vm-emulated)',
  );
  // Chosen by default: vm-emulated is the best here, and vm-hardware is asked for.
  assert.throws(
    () => checkTier(probes, emu, { defaulted: true, reason: "strongest usable tier: vm-emulated", minimum: min("vm-hardware"), acknowledgedContainer: false }),
    (err: unknown) =>
      err instanceof UnsupportedCapabilityError &&
      /^Backend "vm" gives the vm-emulated tier, below the minimum "vm-hardware" set by minimumTier \(the engine chose it: strongest usable tier: vm-emulated\)$/.test(err.message) &&
      /no usable backend here gives "vm-hardware" or stronger/.test(err.hint ?? ""),
  );
  // At or above the minimum: allowed.
  checkTier(probes, emu, { defaulted: true, minimum: min("vm-emulated"), acknowledgedContainer: false });
  checkTier([hw, ns], hw, { defaulted: true, minimum: min("vm-emulated"), acknowledgedContainer: false });
  checkTier(probes, ns, { defaulted: false, minimum: min("container"), acknowledgedContainer: false });
});

test("the container tier chosen by default needs the caller's acknowledgment; the refusal names the claims that do not hold", () => {
  const ns = probe("namespace", "container", true);
  const probes = [probe("vm", "vm-emulated", false), ns];
  assert.throws(
    () => checkTier(probes, ns, { defaulted: true, reason: "strongest usable tier: container", acknowledgedContainer: false }),
    (err: unknown) => {
      assert.ok(err instanceof UnsupportedCapabilityError);
      assert.match(err.message, /^Refusing the container tier for a create that names no backend \(backend "namespace", strongest usable tier: container\) without acknowledgment: /);
      for (const caveat of CONTAINER_TIER_CAVEATS) assert.ok(err.message.includes(caveat), caveat);
      assert.match(err.message, /claims 1 and 2 .* hold only while the host kernel has no exploitable bug/);
      assert.match(err.message, /claim 3 .* does not hold/);
      assert.match(err.hint ?? "", /acknowledgeContainerTier: true .*MVM_ACK_CONTAINER_TIER=1.* backend "namespace"/);
      return true;
    },
  );
  // Acknowledged, or named by the caller: allowed. A VM tier never needs it.
  checkTier(probes, ns, { defaulted: true, acknowledgedContainer: true });
  checkTier(probes, ns, { defaulted: false, acknowledgedContainer: false });
  const emu = probe("vm", "vm-emulated", true);
  checkTier([emu, ns], emu, { defaulted: true, acknowledgedContainer: false });
});
