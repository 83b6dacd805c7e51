/**
 * Reaping sandboxes from their records: after the launching process was SIGKILLed, for a live
 * sandbox, and with records that must not be trusted blindly.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
import { isSameLiveProcess, readProcStartTime } from "../../_internal/proc.js";
import type { ReapRecord } from "../types.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { StandInClient, buildBusyboxRootfs, buildStandInRuntime, footprint, makeSpec, makeTestRoot, removeTestRoot, type SpecInput } from "./_fixtures.js";

const skip = (!existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")) && "needs bubblewrap and busybox-static";
const TIMEOUT = { timeout: 120_000 };
const LAUNCHER = new URL("./_launcher.js", import.meta.url).pathname;

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

/** Reads one JSON line from a child's stdout. */
async function firstLine(stream: NodeJS.ReadableStream): Promise<unknown> {
  let text = "";
  for await (const chunk of stream) {
    text += String(chunk);
    const nl = text.indexOf("\n");
    if (nl >= 0) return JSON.parse(text.slice(0, nl));
  }
  throw new Error(`no line before end: ${JSON.stringify(text)}`);
}

test("reap after the launching process was SIGKILLed leaves nothing", { skip, ...TIMEOUT }, async () => {
  const resources = { ...(limits.memory ? { memoryMiB: 256 } : {}), ...(limits.pids ? { pids: 128 } : {}) };
  const spec = await makeSpec({ ...base, resources });
  const specPath = join(spec.stateDir, "spec.json");
  await writeFile(specPath, JSON.stringify(spec));
  const launcher = spawn(process.execPath, [LAUNCHER, "hold", specPath], { stdio: ["ignore", "pipe", "inherit"] });
  const { reapRecord } = (await firstLine(launcher.stdout)) as { reapRecord: ReapRecord };
  const running = await footprint(reapRecord, spec.sandboxId);
  assert.ok(running.processes.length >= 3, "the sandbox is running before the crash");
  assert.deepEqual(running.cgroups.sort(), [...reapRecord.cgroups].sort());
  const relayDir = reapRecord.extra["relayDir"] ?? "";
  assert.ok(existsSync(join(relayDir, "relay.sock")), "the stand-in agent never connects: the relay socket waits");

  const died = once(launcher, "exit");
  launcher.kill("SIGKILL");
  await died;
  await backend.reap(reapRecord);
  assert.deepEqual(await footprint(reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
  assert.equal(existsSync(relayDir), false, "the relay socket and its directory are removed");
  await backend.reap(reapRecord); // idempotent
});

test("reap from the record alone stops a live sandbox", { skip, ...TIMEOUT }, async () => {
  const spec = await makeSpec(base);
  const sandbox = await backend.launch(spec);
  await new StandInClient(sandbox.channel).hello;
  await backend.reap(sandbox.reapRecord);
  await sandbox.exited;
  assert.deepEqual(await footprint(sandbox.reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
  await sandbox.destroy(); // nothing left to do, and no error for it
});

test("reap from the record alone stops a paused (frozen) sandbox and removes its freezer group", { skip, ...TIMEOUT }, async () => {
  const spec = await makeSpec(base);
  const sandbox = await backend.launch(spec);
  await new StandInClient(sandbox.channel).hello;
  await sandbox.pause();
  await backend.reap(sandbox.reapRecord);
  await sandbox.exited;
  assert.deepEqual(await footprint(sandbox.reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
  await sandbox.destroy();
});

test("reap does not kill a process whose start time does not match the record", { skip, ...TIMEOUT }, async () => {
  const bystander = spawn("/bin/sleep", ["60"], { stdio: "ignore", detached: true });
  await once(bystander, "spawn");
  const pid = bystander.pid ?? 0;
  const start = (await readProcStartTime(pid)) ?? "";
  try {
    await backend.reap({ backend: "namespace", pid, pidStartTime: `${start}1`, cgroups: [], extra: { initPid: String(pid), initStartTime: "1" } });
    assert.equal(await isSameLiveProcess(pid, start), true);
  } finally {
    bystander.kill("SIGKILL");
  }
});

test("reap refuses records that point outside sandbox resources", { skip, ...TIMEOUT }, async () => {
  const record = (over: Partial<ReapRecord>): ReapRecord => ({ backend: "namespace", pid: 0, pidStartTime: "0", cgroups: [], extra: {}, ...over });
  await assert.rejects(backend.reap(record({ cgroups: ["/etc"] })), InvalidArgumentError);
  await assert.rejects(backend.reap(record({ cgroups: ["/sys/fs/cgroup/pids/../../../etc/sbx_aaaaaaaaaaaaaaaaaaaa"] })), InvalidArgumentError);
  await assert.rejects(backend.reap(record({ cgroups: ["/sys/fs/cgroup/pids/user.slice"] })), InvalidArgumentError);
  await assert.rejects(backend.reap(record({ extra: { hostUid: "0" } })), /host uid "0" is not a sandbox uid/);
  await assert.rejects(backend.reap(record({ backend: "vm" })), /backend "vm"/);
  await assert.rejects(backend.reap(record({ extra: { relayDir: "/etc" } })), /"\/etc" is not a relay directory/);
  await assert.rejects(backend.reap(record({ extra: { relayDir: "/tmp/../etc/mvm-relay-abcdef" } })), InvalidArgumentError);
});
