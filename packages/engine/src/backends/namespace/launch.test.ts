/**
 * Launch failures: bad specs, unfit images, bubblewrap failing, an agent that cannot start, and
 * cancellation. None may leave a process or a cgroup behind.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, readdir, rmdir, utimes, watch, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { AbortedError, AdmissionError, InvalidArgumentError } from "@mvm/protocol";
import { NamespaceBackend } from "./namespace-backend.js";
import { detectCgroups } from "./cgroups.js";
import { buildBusyboxRootfs, buildStandInRuntime, footprint, makeSpec, makeTestRoot, removeTestRoot, type SpecInput } from "./_fixtures.js";

const isRoot = process.getuid?.() === 0;
const skip = (!existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")) && "needs bubblewrap and busybox-static";
const TIMEOUT = { timeout: 120_000 };

let root = "";
let base: SpecInput;
const backend = new NamespaceBackend();
let limits = { memory: false, pids: false, cpu: false };

before(async () => {
  if (skip) return;
  root = await makeTestRoot();
  await mkdir(join(root, "rootfs"), { mode: 0o755 });
  base = { root, rootfsDir: await buildBusyboxRootfs(join(root, "rootfs")), agentDir: (await buildStandInRuntime(root)).dir };
  limits = (await backend.probe()).enforceable;
});
after(async () => {
  if (root !== "") await removeTestRoot(root);
});

/** Sandbox cgroup directories and processes that mention `sandboxId` anywhere on the host. */
async function traces(sandboxId: string): Promise<string[]> {
  const found: string[] = [];
  for (const controller of await readdir("/sys/fs/cgroup").catch(() => [])) {
    for (const parent of ["mvm", ""]) {
      if (existsSync(join("/sys/fs/cgroup", controller, parent, sandboxId))) found.push(join(controller, parent, sandboxId));
    }
  }
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    if ((await readFile(`/proc/${name}/cgroup`, "utf8").catch(() => "")).includes(sandboxId)) found.push(`pid ${name}`);
  }
  return found;
}

test("invalid specs are refused before anything is created", { skip, ...TIMEOUT }, async () => {
  const good = await makeSpec(base);
  await assert.rejects(backend.launch({ ...good, sandboxId: "sbx_../../etc" }), InvalidArgumentError);
  await assert.rejects(backend.launch({ ...good, rootfsDir: "rootfs" }), /Invalid rootfsDir "rootfs": must be an absolute path/);
  await assert.rejects(backend.launch({ ...good, workMiB: 0 }), /Invalid workMiB 0/);
  await assert.rejects(backend.launch({ ...good, tmpMiB: 1.5 }), /Invalid tmpMiB 1.5/);
  await assert.rejects(backend.launch({ ...good, resources: { memoryMiB: 1 } }), InvalidArgumentError);
  assert.deepEqual(await traces(good.sandboxId), []);
});

test("an image without the required mount points is refused", { skip, ...TIMEOUT }, async () => {
  const rootfsDir = join(root, "bare-rootfs");
  await mkdir(join(rootfsDir, "proc"), { recursive: true, mode: 0o755 });
  const spec = await makeSpec({ ...base, rootfsDir });
  await assert.rejects(backend.launch(spec), (err: unknown) => err instanceof AdmissionError && /has no directory "\/dev"/.test(err.message));
  assert.deepEqual(await traces(spec.sandboxId), []);
});

test("an image the sandbox uid cannot reach is refused with a hint", { skip: skip || (!isRoot && "only root switches to a sandbox uid"), ...TIMEOUT }, async () => {
  const hidden = join(root, "hidden");
  await mkdir(join(hidden, "rootfs"), { recursive: true, mode: 0o700 });
  await chmod(hidden, 0o700);
  const rootfsDir = await buildBusyboxRootfs(join(hidden, "rootfs"));
  const spec = await makeSpec({ ...base, rootfsDir });
  await assert.rejects(
    backend.launch(spec),
    (err: unknown) => err instanceof AdmissionError && err.message.includes(`"${hidden}" (mode 700) is not searchable`) && /chmod o\+x/.test(err.hint ?? ""),
  );
  await chmod(hidden, 0o755);
  assert.deepEqual(await traces(spec.sandboxId), []);
});

test("bubblewrap failing before the sandbox starts is reported with its message, and nothing is left", { skip, ...TIMEOUT }, async () => {
  const fake = join(root, "failing-bwrap");
  await writeFile(fake, "#!/bin/sh\necho 'bwrap: simulated setup failure' >&2\nexit 1\n", { mode: 0o755 });
  const failing = new NamespaceBackend({ bwrapPath: fake });
  const spec = await makeSpec({ ...base, resources: limits.pids ? { pids: 50 } : {} });
  await assert.rejects(
    failing.launch(spec),
    (err: unknown) => err instanceof AdmissionError && err.message.includes("bwrap: simulated setup failure") && /code 1/.test(err.message),
  );
  assert.deepEqual(await traces(spec.sandboxId), []);
});

test("an agent that cannot start ends the sandbox; exited reports it and the log says why", { skip, ...TIMEOUT }, async () => {
  const broken = join(root, "broken-runtime");
  await mkdir(join(broken, "bin"), { recursive: true, mode: 0o755 });
  await writeFile(join(broken, "bin", "ld-linux-x86-64.so.2"), "not executable\n", { mode: 0o644 });
  const spec = await makeSpec({ ...base, agentDir: broken });
  const sandbox = await backend.launch(spec);
  const status = await sandbox.exited;
  assert.notEqual(status.code, 0);
  await sandbox.destroy();
  assert.match(await readFile(spec.agentLogPath, "utf8"), /bwrap: execvp .*Permission denied/);
  assert.deepEqual(await footprint(sandbox.reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
});

test("an aborted signal stops the launch and releases what it had set up", { skip, ...TIMEOUT }, async () => {
  const early = await makeSpec(base);
  await assert.rejects(backend.launch(early, AbortSignal.abort("stop")), AbortedError);
  assert.deepEqual(await traces(early.sandboxId), []);

  // A bubblewrap stand-in that never reports a child: launch is waiting on it when the abort comes.
  const marks = join(root, "marks");
  await mkdir(marks, { mode: 0o1777 });
  await chmod(marks, 0o1777);
  const hanging = join(root, "hanging-bwrap");
  await writeFile(hanging, `#!/bin/sh\necho $$ > ${marks}/started.tmp && mv ${marks}/started.tmp ${marks}/started\nexec sleep 600\n`, { mode: 0o755 });
  const controller = new AbortController();
  const spec = await makeSpec({ ...base, resources: limits.memory ? { memoryMiB: 128 } : {} });
  const watcher = watch(marks);
  const launching = new NamespaceBackend({ bwrapPath: hanging }).launch(spec, controller.signal);
  for await (const event of watcher) if (event.filename === "started") break;
  const pid = Number((await readFile(join(marks, "started"), "utf8")).trim());
  controller.abort(new Error("caller gave up"));
  await assert.rejects(launching, (err: unknown) => err instanceof AbortedError && /Launch of sandbox "sbx_[a-z2-7]+" was aborted/.test(err.message));
  assert.equal(existsSync(`/proc/${pid}`) && !(await readFile(`/proc/${pid}/stat`, "utf8")).includes(") Z "), false, "the hanging process was killed");
  assert.deepEqual(await traces(spec.sandboxId), []);
});

test("sweep removes an idle sandbox cgroup that no record names, and nothing younger or busy", async (ctx) => {
  const support = await detectCgroups();
  const h = support.hierarchies[0];
  if (!h) {
    ctx.skip("no writable cgroup hierarchy on this host; runs wherever the engine can create cgroups (as root, or in a delegated subtree), as on CI");
    return;
  }
  const old = `${h.parentDir}/sbx_sweepsweepsweepsweep`;
  const young = `${h.parentDir}/sbx_youngyoungyoungyoung`;
  await mkdir(old, { recursive: true });
  await mkdir(young, { recursive: true });
  const past = new Date(Date.now() - 3600_000);
  await utimes(old, past, past);
  try {
    const removed = await new NamespaceBackend().sweep();
    assert.ok(removed.includes(old));
    assert.equal(existsSync(old), false);
    assert.equal(existsSync(young), true);
  } finally {
    await rmdir(old).catch(() => {});
    await rmdir(young).catch(() => {});
  }
});
