import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
import { configuredDefaultBackend, configuredMinimumTier, openEngine } from "./open.js";

const root = await mkdtemp(join(tmpdir(), "mvm-open-test-"));
after(() => rm(root, { recursive: true, force: true }));

/** Runs `body` with MVM_DEFAULT_BACKEND set to `value` (unset when undefined), then restores it. */
async function withDefaultEnv<T>(value: string | undefined, body: () => Promise<T>): Promise<T> {
  const saved = process.env["MVM_DEFAULT_BACKEND"];
  if (value === undefined) delete process.env["MVM_DEFAULT_BACKEND"];
  else process.env["MVM_DEFAULT_BACKEND"] = value;
  try {
    return await body();
  } finally {
    if (saved === undefined) delete process.env["MVM_DEFAULT_BACKEND"];
    else process.env["MVM_DEFAULT_BACKEND"] = saved;
  }
}

test("MVM_DEFAULT_BACKEND is read and validated; the option wins; empty counts as unset", () => {
  assert.deepEqual(configuredDefaultBackend(undefined, { MVM_DEFAULT_BACKEND: "vm" }), { backend: "vm", setting: "MVM_DEFAULT_BACKEND" });
  assert.deepEqual(configuredDefaultBackend("namespace", { MVM_DEFAULT_BACKEND: "vm" }), { backend: "namespace", setting: "defaultBackend" });
  assert.equal(configuredDefaultBackend(undefined, { MVM_DEFAULT_BACKEND: "" }), undefined);
  assert.equal(configuredDefaultBackend(undefined, {}), undefined);
  assert.throws(
    () => configuredDefaultBackend(undefined, { MVM_DEFAULT_BACKEND: "firecracker" }),
    (err: unknown) =>
      err instanceof InvalidArgumentError &&
      err.message === 'Invalid MVM_DEFAULT_BACKEND "firecracker": expected one of "namespace", "vm"' &&
      err.cause !== undefined,
  );
});

test("a bad MVM_DEFAULT_BACKEND or backends list fails openEngine before anything is created", async () => {
  const stateDir = join(root, "never");
  await withDefaultEnv("VM", async () => {
    await assert.rejects(openEngine({ stateDir }), (err: unknown) => err instanceof InvalidArgumentError && /MVM_DEFAULT_BACKEND "VM"/.test(err.message));
  });
  await withDefaultEnv("vm", async () => {
    await assert.rejects(openEngine({ stateDir, backends: ["namespace"] }), /^InvalidArgumentError: Invalid MVM_DEFAULT_BACKEND "vm": this engine offers only "namespace"$/);
  });
  await assert.rejects(openEngine({ stateDir, backends: [] }), InvalidArgumentError);
  await assert.rejects(openEngine({ stateDir, backends: ["namespace", "namespace"] }), /"namespace" is named twice/);
  await assert.rejects(openEngine({ stateDir, backends: ["chroot" as never] }), InvalidArgumentError);
  assert.equal(existsSync(stateDir), false);
});

test("openEngine offers the vm and namespace backends, strongest first, and honours MVM_DEFAULT_BACKEND", async () => {
  const stateDir = join(root, "state");
  const engine = await withDefaultEnv("namespace", () => openEngine({ stateDir, imagesDir: join(root, "images") }));
  try {
    const health = await engine.health();
    assert.deepEqual(
      health.backends.map((b) => b.backend),
      ["vm", "namespace"],
    );
    assert.equal(health.defaultBackend, health.backends[1]!.usable ? "namespace" : null);
    assert.match(health.defaultReason ?? "", /MVM_DEFAULT_BACKEND/);
  } finally {
    await engine.close();
  }
  const only = await withDefaultEnv(undefined, () => openEngine({ stateDir, imagesDir: join(root, "images"), backends: ["namespace"] }));
  try {
    const health = await only.health();
    assert.deepEqual(health.backends.map((b) => b.backend), ["namespace"]);
    if (health.defaultBackend !== null) assert.equal(health.defaultReason, "strongest usable tier: container");
  } finally {
    await only.close();
  }
});

test("MVM_MINIMUM_TIER is the engine's minimum tier unless the option is given; a bad value is InvalidArgumentError naming it", async () => {
  assert.deepEqual(configuredMinimumTier(undefined, { MVM_MINIMUM_TIER: "vm-emulated" }), { tier: "vm-emulated", setting: "MVM_MINIMUM_TIER of the engine" });
  assert.deepEqual(configuredMinimumTier("vm-hardware", { MVM_MINIMUM_TIER: "container" }), { tier: "vm-hardware", setting: "minimumTier" });
  assert.equal(configuredMinimumTier(undefined, { MVM_MINIMUM_TIER: "" }), undefined);
  assert.equal(configuredMinimumTier(undefined, {}), undefined);
  assert.throws(
    () => configuredMinimumTier(undefined, { MVM_MINIMUM_TIER: "kvm" }),
    (err: unknown) => err instanceof InvalidArgumentError && err.message === 'Invalid MVM_MINIMUM_TIER "kvm": expected one of "container", "vm-emulated", "vm-hardware"',
  );
  const stateDir = join(root, "bad-minimum");
  await assert.rejects(openEngine({ stateDir, minimumTier: "fast" as never }), InvalidArgumentError);
  assert.equal(existsSync(stateDir), false, "nothing was created");
});
