/**
 * Engine logic (backend choice, limits, records, reaping, crash handling) with a fake backend
 * that runs the real agent as a plain host process. It isolates nothing: it exists only to test
 * the engine's own decisions quickly. Isolation is tested by the conformance suite on real backends.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  CONTAINER_TIER_CAVEATS,
  InvalidArgumentError,
  MAX_EXEC_COMMAND_BYTES,
  MAX_SANDBOX_ENV_BYTES,
  NotFoundError,
  PolicyDeniedError,
  SandboxCrashedError,
  SandboxPausedError,
  UnsupportedCapabilityError,
  requestFromPlan,
  type BackendName,
  type Tier,
} from "@mvm/protocol";
import { Engine, type EngineOptions } from "./engine.js";
import type { ImageStore } from "./images/store.js";
import type { Backend } from "./backends/types.js";
import { HostProcessBackend, tinyImageStore, unusable, usable } from "./_host-process-backend.js";
import { readProcStartTime } from "./_internal/proc.js";

let root: string;
let images: ImageStore;

before(async () => {
  ({ root, images } = await tinyImageStore("mvm-engine-test-"));
});
after(async () => rm(root, { recursive: true, force: true }));

/** Creates here name no backend and test something else than the tier: they accept the container tier. */
const ACK = { acknowledgeContainerTier: true } as const;

async function engineWith(
  backends: Backend[],
  extra: Pick<EngineOptions, "defaultTtlSeconds" | "defaultBackend" | "heartbeat" | "minimumTier" | "strictSecrets"> = {},
): Promise<Engine> {
  const stateDir = await mkdtemp(join(root, "state-"));
  return Engine.open({ stateDir, backends, images, agentDir: "/nonexistent", defaultImage: "tiny", ...extra });
}

test("an explicitly requested backend that is not usable is refused, never replaced", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const vm = new HostProcessBackend("vm", unusable);
  const engine = await engineWith([vm, ns]);
  await assert.rejects(engine.createSandbox({ backend: "vm" }), (err: unknown) => {
    assert.ok(err instanceof UnsupportedCapabilityError);
    assert.match(err.message, /qemu: not installed/);
    return true;
  });
  assert.equal(ns.children.length, 0);
  const info = await engine.createSandbox(ACK);
  assert.equal(info.backend, "namespace", "the default is the strongest usable backend");
  await engine.close();
});

test("the default is the strongest usable tier, and SandboxInfo and health say which and why", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const emu = new HostProcessBackend("vm", usable("vm-emulated"));
  const engine = await engineWith([ns, emu]);
  const info = await engine.createSandbox(ACK);
  assert.deepEqual([info.backend, info.tier], ["vm", "vm-emulated"], "vm-emulated beats namespace");
  assert.equal(emu.children.length, 1);
  assert.equal(ns.children.length, 0);
  const health = await engine.health();
  assert.equal(health.defaultBackend, "vm");
  assert.equal(health.defaultReason, "strongest usable tier: vm-emulated");
  await engine.close();

  const hw = new HostProcessBackend("vm", usable("vm-hardware"));
  const second = await engineWith([new HostProcessBackend("namespace", usable("container")), hw]);
  assert.equal((await second.createSandbox(ACK)).tier, "vm-hardware");
  await second.close();
});

test("an unusable vm falls to namespace only for the default; asked for by name it is refused", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const vm = new HostProcessBackend("vm", unusable);
  const engine = await engineWith([vm, ns]);
  const info = await engine.createSandbox(ACK);
  assert.deepEqual([info.backend, info.tier], ["namespace", "container"]);
  const health = await engine.health();
  assert.equal(health.defaultBackend, "namespace");
  assert.equal(health.defaultReason, 'strongest usable tier: container; "vm" is not usable: qemu: not installed');
  await assert.rejects(engine.createSandbox({ backend: "vm" }), (err: unknown) => {
    assert.ok(err instanceof UnsupportedCapabilityError);
    assert.equal(err.message, 'Backend "vm" is not usable on this host: qemu: not installed');
    return true;
  });
  assert.equal(vm.children.length, 0);
  assert.equal(ns.children.length, 1, "the refused create started nothing");
  await engine.close();
});

test("a configured default backend is honoured, and while unusable it fails instead of falling back", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const vm = new HostProcessBackend("vm", usable("vm-emulated"));
  const engine = await engineWith([vm, ns], { defaultBackend: { backend: "namespace", setting: "MVM_DEFAULT_BACKEND" } });
  assert.equal((await engine.createSandbox(ACK)).backend, "namespace");
  assert.equal((await engine.createSandbox({ backend: "vm" })).backend, "vm");
  const health = await engine.health();
  assert.deepEqual([health.defaultBackend, health.defaultReason], ["namespace", "set by MVM_DEFAULT_BACKEND"]);
  await engine.close();

  const broken = new HostProcessBackend("namespace", usable("container"));
  const pinned = await engineWith([new HostProcessBackend("vm", unusable), broken], { defaultBackend: "vm" });
  await assert.rejects(pinned.createSandbox(ACK), (err: unknown) => {
    assert.ok(err instanceof UnsupportedCapabilityError);
    assert.match(err.message, /^No default backend can start sandboxes: defaultBackend names "vm", which is not usable here: qemu: not installed$/);
    return true;
  });
  assert.equal(broken.children.length, 0);
  assert.equal((await pinned.health()).defaultBackend, null);
  await pinned.close();
});

test("a default backend the engine does not offer, or no backend name at all, is InvalidArgumentError at open", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  await assert.rejects(engineWith([ns], { defaultBackend: "vm" }), (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError);
    assert.equal(err.message, 'Invalid defaultBackend "vm": this engine offers only "namespace"');
    return true;
  });
  await assert.rejects(engineWith([ns], { defaultBackend: "chroot" as never }), InvalidArgumentError);
});

test("a default that cannot enforce a requested limit is refused, and the hint names a backend that can", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const vm = new HostProcessBackend("vm", { ...usable("vm-emulated"), enforceable: { memory: true, pids: false, cpu: false } });
  const engine = await engineWith([vm, ns]);
  await assert.rejects(engine.createSandbox({ ...ACK, resources: { pids: 64 } }), (err: unknown) => {
    assert.ok(err instanceof UnsupportedCapabilityError);
    assert.equal(err.message, 'Backend "vm" cannot enforce "pids" on this host');
    assert.equal(err.hint, 'drop the limit, or name a backend that can enforce it: "namespace" (container)');
    return true;
  });
  assert.equal(ns.children.length + vm.children.length, 0);
  assert.equal((await engine.createSandbox({ ...ACK, resources: { memoryMiB: 256 } })).backend, "vm");
  await engine.close();
});

test("a limit the backend cannot enforce is an UnsupportedCapabilityError at create", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container", false))]);
  for (const resources of [{ memoryMiB: 256 }, { pids: 64 }, { cpus: 1 }]) {
    await assert.rejects(engine.createSandbox({ ...ACK, resources }), UnsupportedCapabilityError);
  }
  const info = await engine.createSandbox(ACK);
  assert.deepEqual(info.resources, {}, "no defaults are claimed when they cannot be enforced");
  await engine.close();
});

test("default limits are applied and reported when enforceable", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  const info = await engine.createSandbox(ACK);
  assert.equal(info.resources.memoryMiB, 1024);
  assert.equal(info.resources.pids, 1024);
  await engine.close();
});

test("bad requests are InvalidArgumentError; unknown ids NotFoundError", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  await assert.rejects(engine.createSandbox({ ...ACK, ttlSeconds: -1 }), InvalidArgumentError);
  await assert.rejects(engine.createSandbox({ ...ACK, bogus: 1 } as never), InvalidArgumentError);
  await assert.rejects(engine.createSandbox({ ...ACK, image: "nope:missing" }), NotFoundError);
  await assert.rejects(engine.exec("sbx_aaaaaaaaaaaaaaaaaaaa", { argv: ["true"] }, {}), NotFoundError);
  const { id } = await engine.createSandbox(ACK);
  await assert.rejects(engine.exec(id, { argv: [] }, {}), InvalidArgumentError);
  await assert.rejects(engine.readFile(id, "../etc/passwd"), InvalidArgumentError);
  await engine.close();
});

test("an agent that dies marks the sandbox crashed and releases it", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const engine = await engineWith([backend]);
  const { id } = await engine.createSandbox(ACK);
  backend.children[0]!.kill("SIGKILL");
  for (let i = 0; i < 200 && (await engine.getSandbox(id)).state !== "stopped"; i++) await new Promise((r) => setTimeout(r, 10));
  const info = await engine.getSandbox(id);
  assert.equal(info.state, "stopped");
  assert.equal(info.endReason, "crashed");
  assert.equal((await engine.listSandboxes()).length, 0);
  await engine.close();
});

test("a call cut off by the crash fails with SandboxCrashedError, and a silent agent is found by the heartbeat", async (t) => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const engine = await engineWith([backend], { heartbeat: { intervalMs: 100, timeoutMs: 500 } });
  const crashed = await engine.createSandbox(ACK);
  const started = await engine.exec(crashed.id, { argv: ["/bin/sleep", "30"] }, {});
  // This test backend runs the agent on the host, unsandboxed: what the killed agent leaves behind
  // (the sleep, in its own process group, and its TMPDIR under the host's /tmp) is cleaned up here.
  const environ = await readFile(`/proc/${started.pid}/environ`, "utf8");
  const tmpDir = environ.split("\0").find((v) => v.startsWith("TMPDIR="))?.slice("TMPDIR=".length);
  t.after(async () => {
    try {
      process.kill(-started.pid, "SIGKILL");
    } catch {
      // already gone
    }
    if (tmpDir?.startsWith("/tmp/mvm-exec-")) await rm(tmpDir, { recursive: true, force: true });
  });
  backend.children[0]!.kill("SIGKILL");
  await assert.rejects(started.exit, SandboxCrashedError);
  await assert.rejects(engine.exec(crashed.id, { argv: ["/bin/true"] }, {}), NotFoundError);
  const hung = await engine.createSandbox(ACK);
  backend.children[1]!.kill("SIGSTOP");
  await assert.rejects(
    (async () => {
      for (;;) {
        await engine.exec(hung.id, { argv: ["/bin/true"] }, {}).then((e) => e.exit);
        await new Promise((r) => setTimeout(r, 50));
      }
    })(),
    (err: unknown) => err instanceof SandboxCrashedError && /did not answer a ping/.test(err.message),
  );
  assert.equal((await engine.getSandbox(hung.id)).endReason, "crashed");
  await engine.close();
});

test("TTL expiry stops the sandbox with reason expired", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  const { id } = await engine.createSandbox({ ...ACK, ttlSeconds: 1 });
  for (let i = 0; i < 300 && (await engine.getSandbox(id)).state !== "stopped"; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal((await engine.getSandbox(id)).endReason, "expired");
  await engine.close();
});

test("open reaps records of dead engines and leaves live owners alone", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const stateDir = await mkdtemp(join(root, "state-"));
  const dead = spawn("true");
  await new Promise((r) => dead.once("exit", r));
  const info = (id: string) => ({
    id,
    state: "running",
    backend: "namespace",
    tier: "container",
    image: { ref: "tiny", digest: `sha256:${"0".repeat(64)}` },
    createdAt: new Date().toISOString(),
    expiresAt: new Date().toISOString(),
    resources: {},
    workMiB: 1,
    labels: {},
  });
  const reap = { backend: "namespace", pid: 1, pidStartTime: "1", cgroups: ["/sys/fs/cgroup/pids/mvm/x"], extra: {} };
  const orphan = "sbx_orphanorphanorphanaa";
  const owned = "sbx_ownedownedownedowned";
  for (const [id, owner] of [
    [orphan, { pid: dead.pid!, startTime: "1" }],
    [owned, { pid: process.pid, startTime: (await readProcStartTime(process.pid))! }],
  ] as const) {
    await mkdir(join(stateDir, "sandboxes", id), { recursive: true });
    await writeFile(join(stateDir, "sandboxes", id, "record.json"), JSON.stringify({ version: 1, owner, info: info(id), reap }));
  }
  const stale = join(stateDir, "sandboxes", "sbx_norecordnorecordnor");
  await mkdir(stale);
  const old = new Date(Date.now() - 3600_000);
  await (await import("node:fs/promises")).utimes(stale, old, old);
  // Owned by this very process: a second engine in the same process treats it as alive.
  const engine = await Engine.open({ stateDir, backends: [backend], images, agentDir: "/nonexistent" });
  const left = await readdir(join(stateDir, "sandboxes"));
  assert.deepEqual(left.sort(), [owned]);
  assert.deepEqual(backend.reaped.map((r) => r.cgroups), [reap.cgroups]);
  assert.equal(existsSync(join(stateDir, "sandboxes", orphan)), false);
  await engine.close();
});

test("importImage stores a host directory or tarball under a name; bad paths are typed errors", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  const tree = join(root, "import-tree");
  await mkdir(join(tree, "etc"), { recursive: true });
  await writeFile(join(tree, "etc", "motd"), "imported\n");
  const fromDir = await engine.importImage(tree, "local/imported");
  assert.match(fromDir.digest, /^sha256:[0-9a-f]{64}$/);
  assert.ok(fromDir.refs.includes("local/imported"));
  const tarPath = join(root, "import.tar");
  const { execFileSync } = await import("node:child_process");
  execFileSync("tar", ["-cf", tarPath, "-C", tree, "."]);
  const fromTar = await engine.importImage(tarPath, "local/imported-tar");
  assert.equal(fromTar.digest, fromDir.digest, "same tree, same digest, whatever the source");
  const info = await engine.createSandbox({ ...ACK, image: "local/imported" });
  assert.equal(info.image.digest, fromDir.digest);
  await assert.rejects(engine.importImage("relative/path", "local/x"), InvalidArgumentError);
  await assert.rejects(engine.importImage(join(root, "missing"), "local/x"), NotFoundError);
  await engine.close();
});

test("close stops every sandbox with reason engine-exit and refuses new work", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const engine = await engineWith([backend]);
  const a = await engine.createSandbox(ACK);
  const b = await engine.createSandbox(ACK);
  await engine.close();
  for (const id of [a.id, b.id]) assert.equal((await engine.getSandbox(id)).endReason, "engine-exit");
  assert.ok(backend.children.every((c) => c.exitCode !== null || c.signalCode !== null));
  await assert.rejects(engine.createSandbox(ACK), { code: "TRANSPORT" });
});

test("a create that names no backend and lands on the container tier is refused unless acknowledged, before anything is resolved or started", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const engine = await engineWith([new HostProcessBackend("vm", unusable), ns]);
  const refused = (err: unknown): boolean => {
    assert.ok(err instanceof UnsupportedCapabilityError, String(err));
    assert.match(err.message, /^Refusing the container tier for a create that names no backend \(backend "namespace", strongest usable tier: container; "vm" is not usable: qemu: not installed\) without acknowledgment: /);
    for (const caveat of CONTAINER_TIER_CAVEATS) assert.ok(err.message.includes(caveat), caveat);
    return true;
  };
  await assert.rejects(engine.createSandbox({}), refused);
  await assert.rejects(engine.createSandbox({ acknowledgeContainerTier: false }), refused);
  // Refused before the image is looked up (a missing image would be NotFoundError) and before planning.
  await assert.rejects(engine.createSandbox({ image: "nope:missing" }), refused);
  await assert.rejects(engine.planSandbox({}), refused);
  assert.equal(ns.children.length, 0, "nothing started");
  assert.deepEqual(await readdir(join(engine.stateDir, "sandboxes")).catch(() => []), []);
  // Acknowledged, or the backend named by the caller: it runs.
  assert.equal((await engine.createSandbox({ acknowledgeContainerTier: true })).tier, "container");
  assert.equal((await engine.createSandbox({ backend: "namespace" })).tier, "container");
  await engine.close();

  // A configured default on the container tier is the engine's choice too: the caller must acknowledge it.
  const pinned = await engineWith([new HostProcessBackend("vm", usable("vm-emulated")), new HostProcessBackend("namespace", usable("container"))], {
    defaultBackend: { backend: "namespace", setting: "MVM_DEFAULT_BACKEND" },
  });
  await assert.rejects(pinned.createSandbox({}), /^UnsupportedCapabilityError: Refusing the container tier .*\(backend "namespace", set by MVM_DEFAULT_BACKEND\)/);
  await pinned.close();
});

test("minimumTier refuses a weaker backend, named or chosen, before anything starts; the engine's minimum applies too and the stronger wins", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const emu = new HostProcessBackend("vm", usable("vm-emulated"));
  const engine = await engineWith([emu, ns]);
  await assert.rejects(engine.createSandbox({ backend: "namespace", minimumTier: "vm-emulated" }), (err: unknown) => {
    assert.ok(err instanceof UnsupportedCapabilityError);
    assert.equal(err.message, 'Backend "namespace" gives the container tier, below the minimum "vm-emulated" set by minimumTier (it was named)');
    return true;
  });
  await assert.rejects(engine.createSandbox({ minimumTier: "vm-hardware" }), /below the minimum "vm-hardware"/);
  await assert.rejects(engine.planSandbox({ backend: "namespace", minimumTier: "vm-hardware" }), UnsupportedCapabilityError);
  assert.equal(ns.children.length + emu.children.length, 0, "nothing started");
  // At the minimum: it runs, and its plan records the tier it got.
  const plan = await engine.planSandbox({ minimumTier: "vm-emulated" });
  assert.equal(plan.plan.ir.requiredTier, "vm-emulated");
  assert.equal((await engine.createSandbox({ minimumTier: "vm-emulated" })).tier, "vm-emulated");
  await engine.close();

  const strict = await engineWith([new HostProcessBackend("vm", usable("vm-emulated")), new HostProcessBackend("namespace", usable("container"))], {
    minimumTier: { tier: "vm-emulated", setting: "MVM_MINIMUM_TIER of the engine" },
  });
  await assert.rejects(
    strict.createSandbox({ backend: "namespace", minimumTier: "container" }),
    /below the minimum "vm-emulated" set by MVM_MINIMUM_TIER of the engine/,
    "a request cannot lower the engine's minimum",
  );
  assert.equal((await strict.createSandbox({})).tier, "vm-emulated");
  await strict.close();
});

test("strictSecrets in a request refuses plain-text secrets at create and exec; a request cannot turn the engine's strict mode off", async () => {
  const saved = process.env["MVM_STRICT_SECRETS"];
  delete process.env["MVM_STRICT_SECRETS"];
  try {
    const ns = new HostProcessBackend("namespace", usable("container"));
    const engine = await engineWith([ns]);
    const env = { GH_TOKEN: "ghp_abcdef123456" };
    await assert.rejects(engine.createSandbox({ backend: "namespace", env, strictSecrets: true }), (err: unknown) => {
      assert.ok(err instanceof PolicyDeniedError);
      assert.match(err.message, /^Refusing a plain-text secret in env var "GH_TOKEN": strict secret mode is on$/);
      return true;
    });
    assert.equal(ns.children.length, 0, "refused before anything started");
    const info = await engine.createSandbox({ backend: "namespace", env });
    assert.equal(info.warnings?.length, 1, "without strict mode it warns");
    const argv = ["/bin/echo", "--api-key", "sk-abcdef123456"];
    await assert.rejects(engine.exec(info.id, { argv, strictSecrets: true }, {}), PolicyDeniedError);
    const started = await engine.exec(info.id, { argv }, {});
    assert.equal((await started.exit).warnings?.length, 1);
    await engine.close();

    const strictEngine = await engineWith([new HostProcessBackend("namespace", usable("container"))], { strictSecrets: true });
    await assert.rejects(strictEngine.createSandbox({ backend: "namespace", env, strictSecrets: false }), PolicyDeniedError);
    await strictEngine.close();
  } finally {
    if (saved !== undefined) process.env["MVM_STRICT_SECRETS"] = saved;
  }
});

test("a sandbox environment that outgrows the agent's frame with its secrets is refused at create; one at the limits runs", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  process.env["MVM_TEST_BIG_SECRET_A"] = "a".repeat(14 * 1024);
  process.env["MVM_TEST_BIG_SECRET_B"] = "b".repeat(14 * 1024);
  try {
    const secret = (name: string) => ({ kind: "secret-ref" as const, source: "env" as const, name, posture: "env" as const });
    // Each part passes the request schema; together they exceed MAX_SANDBOX_ENV_BYTES.
    await assert.rejects(
      engine.createSandbox({ ...ACK, env: { SMALL: "x" }, secrets: { A: secret("MVM_TEST_BIG_SECRET_A"), B: secret("MVM_TEST_BIG_SECRET_B") } }),
      (err: unknown) => err instanceof InvalidArgumentError && /field "env" is invalid: .*more than the limit of 24576 bytes/.test(err.message),
    );
    assert.deepEqual(await engine.listSandboxes(), []);
    // A sandbox env near its limit and an exec near its own: the agent takes the frame and runs it.
    const { id } = await engine.createSandbox({ ...ACK, env: { FILL: "f".repeat(MAX_SANDBOX_ENV_BYTES - 2048) } });
    const started = await engine.exec(id, { argv: ["true"], env: { MORE: "m".repeat(MAX_EXEC_COMMAND_BYTES - 100) } }, {});
    assert.equal((await started.exit).exitCode, 0);
  } finally {
    delete process.env["MVM_TEST_BIG_SECRET_A"];
    delete process.env["MVM_TEST_BIG_SECRET_B"];
    await engine.close();
  }
});

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`timed out waiting until ${what}`);
}

test("a paused sandbox is not declared crashed by the heartbeat, refuses calls with SandboxPausedError, and resumes", async () => {
  const backend = new HostProcessBackend("namespace", usable("container"));
  const engine = await engineWith([backend], { heartbeat: { intervalMs: 20, timeoutMs: 100 } });
  try {
    const sb = await engine.createSandbox({ ...ACK });
    const paused = await engine.pauseSandbox(sb.id);
    assert.equal(paused.state, "paused");
    assert.equal(paused.pause?.by, "caller");
    assert.equal(paused.pause?.ttl, "running");
    assert.deepEqual(await engine.pauseSandbox(sb.id), paused, "pausing a paused sandbox changes nothing");
    // Many heartbeat deadlines pass while paused: the sandbox must still be there afterwards.
    await new Promise((r) => setTimeout(r, 600));
    assert.equal((await engine.getSandbox(sb.id)).state, "paused");
    await assert.rejects(engine.exec(sb.id, { argv: ["/bin/true"] }, {}), (err: unknown) => err instanceof SandboxPausedError && /is paused/.test(err.message));
    await assert.rejects(engine.readFile(sb.id, "/etc/hostname"), SandboxPausedError);
    await assert.rejects(engine.stat(sb.id, "/"), SandboxPausedError);
    await assert.rejects(engine.listProcesses(sb.id), SandboxPausedError);
    const resumed = await engine.resumeSandbox(sb.id);
    assert.equal(resumed.state, "running");
    assert.equal(resumed.pause, undefined);
    const exit = await (await engine.exec(sb.id, { argv: ["/bin/true"] }, {})).exit;
    assert.equal(exit.exitCode, 0);
    // The heartbeat runs again after resume: a hang now is found.
    backend.children[0]!.kill("SIGSTOP");
    await until("the hung sandbox is declared crashed", async () => (await engine.getSandbox(sb.id)).state === "stopped");
    assert.equal((await engine.getSandbox(sb.id)).endReason, "crashed");
  } finally {
    await engine.close();
  }
});

test("the TTL runs on while paused; { ttl: frozen } keeps the remaining time until resume", async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  try {
    const running = await engine.createSandbox({ ...ACK, ttlSeconds: 1 });
    await engine.pauseSandbox(running.id);
    await until("the paused sandbox expires", async () => (await engine.getSandbox(running.id)).state === "stopped");
    assert.equal((await engine.getSandbox(running.id)).endReason, "expired");

    const frozen = await engine.createSandbox({ ...ACK, ttlSeconds: 1 });
    const info = await engine.pauseSandbox(frozen.id, { ttl: "frozen" });
    assert.equal(info.pause?.ttl, "frozen");
    assert.ok(info.pause?.remainingSeconds !== undefined && info.pause.remainingSeconds <= 1);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await engine.getSandbox(frozen.id)).state, "paused", "past its TTL, still paused");
    const resumed = await engine.resumeSandbox(frozen.id);
    assert.equal(resumed.state, "running");
    assert.ok(Date.parse(resumed.expiresAt) > Date.now(), "the remaining time restarts at resume");
    await until("the resumed sandbox expires", async () => (await engine.getSandbox(frozen.id)).state === "stopped");
    assert.equal((await engine.getSandbox(frozen.id)).endReason, "expired");
  } finally {
    await engine.close();
  }
});

test(`onTtl "pause" pauses at expiry with a spent TTL; a resume grants the full TTL again; kill ends it`, async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  try {
    const sb = await engine.createSandbox({ ...ACK, ttlSeconds: 1, onTtl: "pause" });
    assert.equal(sb.onTtl, "pause");
    await until("the TTL pauses it", async () => (await engine.getSandbox(sb.id)).state === "paused");
    const info = await engine.getSandbox(sb.id);
    assert.equal(info.pause?.by, "ttl");
    assert.equal(info.pause?.ttl, "spent");
    const killAt = Date.parse(info.pause?.killAt ?? "");
    assert.ok(killAt > Date.now() + 6 * 24 * 3600_000 && killAt <= Date.now() + 7 * 24 * 3600_000, "bounded by MAX_PAUSED_SECONDS");
    const resumed = await engine.resumeSandbox(sb.id);
    assert.equal(resumed.state, "running");
    assert.ok(Date.parse(resumed.expiresAt) > Date.now());
    await until("the TTL pauses it again", async () => (await engine.getSandbox(sb.id)).state === "paused");
    const killed = await engine.killSandbox(sb.id);
    assert.equal(killed.state, "stopped");
    assert.equal(killed.endReason, "killed");
  } finally {
    await engine.close();
  }
});

test("a backend that cannot pause refuses pause and onTtl pause with UnsupportedCapabilityError, and keeps running", async () => {
  const cannot = { ...usable("container"), pauseUnsupported: { reason: "no freezer", hint: "mount the freezer" } };
  const engine = await engineWith([new HostProcessBackend("namespace", cannot)]);
  try {
    await assert.rejects(engine.createSandbox({ ...ACK, onTtl: "pause" }), (err: unknown) => err instanceof UnsupportedCapabilityError && /no freezer/.test(err.message));
    const sb = await engine.createSandbox({ ...ACK });
    await assert.rejects(engine.pauseSandbox(sb.id), UnsupportedCapabilityError);
    assert.equal((await engine.getSandbox(sb.id)).state, "running");
    assert.equal((await (await engine.exec(sb.id, { argv: ["/bin/true"] }, {})).exit).exitCode, 0);
    await assert.rejects(engine.pauseSandbox(sb.id, { ttl: "sometimes" } as never), InvalidArgumentError);
  } finally {
    await engine.close();
  }
});

test(`onTtl "pause" is part of the signed plan: a plan-admitted create cannot add it, and one planned with it keeps it`, async () => {
  const engine = await engineWith([new HostProcessBackend("namespace", usable("container"))]);
  try {
    const plain = await engine.planSandbox({ ...ACK, ttlSeconds: 60 });
    await assert.rejects(engine.createSandbox({ ...requestFromPlan(plain), onTtl: "pause" }), /does not describe the plan's workload/);
    const pausing = await engine.planSandbox({ ...ACK, ttlSeconds: 60, onTtl: "pause" });
    assert.equal(pausing.plan.ir.onTtl, "pause");
    const sb = await engine.createSandbox(requestFromPlan(pausing));
    assert.equal(sb.onTtl, "pause");
  } finally {
    await engine.close();
  }
});

test("a create that names its backend probes that backend alone; one that names none probes all; health probes again", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const vm = new HostProcessBackend("vm", usable("vm-emulated"));
  const engine = await engineWith([vm, ns]);
  try {
    assert.deepEqual([vm.probes, ns.probes], [0, 0], "opening the engine probes nothing");
    const a = await engine.createSandbox({ backend: "namespace" });
    assert.deepEqual([vm.probes, ns.probes], [0, 1]);
    await engine.createSandbox({ backend: "namespace" });
    assert.deepEqual([vm.probes, ns.probes], [0, 1], "a probe is kept for the engine's life");
    const b = await engine.createSandbox({});
    assert.equal(b.backend, "vm", "the default is still the strongest usable backend");
    assert.deepEqual([vm.probes, ns.probes], [1, 1]);
    await engine.health();
    assert.deepEqual([vm.probes, ns.probes], [2, 2]);
    await engine.killSandbox(a.id);
  } finally {
    await engine.close();
  }
});

test("a named backend below a minimum tier is refused naming the stronger backends, which takes their probes", async () => {
  const ns = new HostProcessBackend("namespace", usable("container"));
  const vm = new HostProcessBackend("vm", usable("vm-emulated"));
  const engine = await engineWith([vm, ns]);
  try {
    await assert.rejects(engine.createSandbox({ backend: "namespace", minimumTier: "vm-emulated" }), (err: unknown) => {
      assert.ok(err instanceof UnsupportedCapabilityError);
      assert.match(err.message, /below the minimum/);
      assert.match(err.hint ?? "", /"vm" \(vm-emulated\)/);
      return true;
    });
    assert.equal(vm.probes, 1);
  } finally {
    await engine.close();
  }
});
