/**
 * Filesystem snapshots of namespace sandboxes for real: capture of /work and /tmp from a frozen
 * sandbox, restore into a new sandbox by a confined extraction step, hostile archives, and what is
 * left after each failure.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { AbortedError, SnapshotMismatchError, UnsupportedCapabilityError } from "@mvm/protocol";
import type { LaunchSpec, LaunchedSandbox, ReapRecord, RestoreSpec } from "../types.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { archiveLimitBytes } from "./snapshot-capture.js";
import { tarArchive, type TarEntry } from "./_tar.js";
import { StandInClient, buildBusyboxRootfs, buildStandInRuntime, footprint, makeSpec, makeTestRoot, removeTestRoot, type SpecInput } from "./_fixtures.js";

const skip =
  (!existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")) ? "needs bubblewrap and busybox-static"
  : process.getuid?.() !== 0 ? "needs root for a cgroup freezer (the unprivileged case is in unprivileged.test.ts)"
  : false;
const TIMEOUT = { timeout: 180_000 };
const LAUNCHER = new URL("./_launcher.js", import.meta.url).pathname;
const MiB = 1024 * 1024;

let root = "";
let base: SpecInput;
const backend = new NamespaceBackend();
let freezer = false;

before(async () => {
  if (skip) return;
  root = await makeTestRoot("mvm-snap-");
  await mkdir(join(root, "rootfs"), { mode: 0o755 });
  base = { root, rootfsDir: await buildBusyboxRootfs(join(root, "rootfs")), agentDir: (await buildStandInRuntime(root)).dir };
  freezer = (await backend.probe()).pauseUnsupported === undefined;
});
after(async () => {
  if (root !== "") await removeTestRoot(root);
});

/**
 * Capture freezes the sandbox, so these cases need the cgroup freezer (v1 `freezer` or v2
 * `cgroup.freeze`); the probe says whether the host has it. They run on the project's test
 * machine and in CI (cgroup v1 with the freezer); a host without one is covered by
 * snapshot-unprivileged.test.ts (capture refused) instead.
 */
function skippedWithoutFreezer(ctx: { skip(message: string): void }): boolean {
  if (freezer) return false;
  ctx.skip("no cgroup freezer on this host: capture is refused there (snapshot-unprivileged.test.ts covers that)");
  return true;
}

interface Running {
  readonly spec: LaunchSpec;
  readonly sandbox: LaunchedSandbox;
  readonly client: StandInClient;
}

async function start(input: Partial<SpecInput> & { restore?: RestoreSpec } = {}): Promise<Running> {
  const { restore, ...rest } = input;
  const spec = { ...(await makeSpec({ ...base, ...rest })), ...(restore !== undefined ? { restore } : {}) };
  const sandbox = await backend.launch(spec);
  const client = new StandInClient(sandbox.channel);
  await client.hello;
  return { spec, sandbox, client };
}

async function stop(running: Running): Promise<void> {
  await running.sandbox.destroy();
  assert.deepEqual(await footprint(running.sandbox.reapRecord, running.spec.sandboxId), { processes: [], cgroups: [] });
}

/** An empty 0700 directory for a capture, as the engine makes one. */
async function captureDir(): Promise<string> {
  return mkdtemp(join(root, "capture-"));
}

async function sh(client: StandInClient, command: string): Promise<string> {
  const r = await client.sh(command);
  assert.equal(r.code, 0, `${command}: ${r.stderr}`);
  return r.stdout;
}

/** Sandbox cgroups and processes that mention `sandboxId` anywhere on the host. */
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

/** The freezer state of a sandbox, read from its cgroup ("THAWED"/"FROZEN" on v1, "0"/"1" on v2). */
async function freezerState(sandbox: LaunchedSandbox): Promise<string> {
  for (const dir of sandbox.reapRecord.cgroups) {
    for (const file of ["freezer.state", "cgroup.freeze"]) {
      const text = await readFile(join(dir, file), "utf8").catch(() => undefined);
      if (text !== undefined) return text.trim() === "1" ? "FROZEN" : text.trim() === "0" ? "THAWED" : text.trim();
    }
  }
  throw new Error("no freezer file");
}

/**
 * A listing of /work and /tmp that covers names (hex, so newlines and non-UTF-8 bytes count),
 * types, modes, sizes, link counts, link targets and contents (read as root is not possible
 * inside, so unreadable files are listed without content).
 */
const LISTING = [
  "cd / && find work tmp -mindepth 1 | sort | while IFS= read -r p; do",
  "  printf '%s' \"$p\" | od -An -tx1 | tr -d ' \\n'; echo",
  "  stat -c '%A %s %h %Y' \"$p\"",
  "  if [ -L \"$p\" ]; then readlink \"$p\"; elif [ -f \"$p\" ] && [ -r \"$p\" ]; then md5sum < \"$p\"; fi",
  "done",
].join("\n");

/** Open descriptors of the sandbox's processes (bubblewrap included) on a restore tool or archive. */
async function restoreFilesHeld(running: Running): Promise<string[]> {
  const held: string[] = [];
  for (const pid of (await footprint(running.sandbox.reapRecord, running.spec.sandboxId)).processes) {
    for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [])) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
      if (/busybox|bin\/tar$|\.tar$|libacl|libpcre2|libselinux/.test(target)) held.push(`${pid}:${fd} ${target}`);
    }
  }
  return held;
}

/** The environment of the agent (the child of the sandbox's pid 1), read on the host. */
async function agentEnvironment(running: Running): Promise<string[]> {
  const init = Number(running.sandbox.reapRecord.extra["initPid"]);
  const [agent] = (await readFile(`/proc/${init}/task/${init}/children`, "utf8")).trim().split(" ");
  return (await readFile(`/proc/${agent}/environ`, "utf8")).split("\0").filter(Boolean).sort();
}

/** A LISTING without its socket entries (a name line, then a stat line starting with "s"). */
function withoutSockets(listing: string): string {
  const lines = listing.split("\n");
  const kept: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i + 1]?.startsWith("s")) {
      i++;
      continue;
    }
    kept.push(lines[i] ?? "");
  }
  return kept.join("\n");
}

/** The odd names: a newline, a non-UTF-8 byte, spaces and a leading dash. */
const ODD_NAME = "$(printf 'odd\\nname\\377 -x')";

const POPULATE = [
  "set -e",
  "mkdir -p /work/dir/sub /work/empty /tmp/t/deep/er",
  "echo hello > /work/dir/a.txt && chmod 640 /work/dir/a.txt",
  "printf '#!/bin/sh\\necho run\\n' > /work/dir/run.sh && chmod 755 /work/dir/run.sh",
  "echo secret > /work/dir/sub/locked && chmod 000 /work/dir/sub/locked",
  "mkdir /work/closed && echo inside > /work/closed/file && chmod 000 /work/closed",
  "ln -s a.txt /work/dir/rel-link && ln -s /etc/passwd /work/abs-link && ln -s /nowhere/at/all /work/dangling",
  "ln /work/dir/a.txt /work/hard-link",
  "mkfifo /work/fifo",
  // a Unix socket file, left by a process that exits without closing its server
  "/.mvm/bin/ld-linux-x86-64.so.2 --library-path /.mvm/lib /.mvm/bin/node -e \"require('net').createServer().listen('/work/sock', () => process.exit(0))\"",
  `echo odd > "/work/${ODD_NAME}"`,
  // 1 GiB apparent size, a few data pages, in a 16 MiB /work
  "dd if=/dev/zero of=/work/sparse bs=1 count=0 seek=1073741824 2>/dev/null",
  "printf start | dd of=/work/sparse conv=notrunc 2>/dev/null",
  "printf middle | dd of=/work/sparse bs=1 seek=536870912 conv=notrunc 2>/dev/null",
  "head -c 3000000 /dev/urandom > /work/random.bin",
  "echo in-tmp > /tmp/t/deep/er/file && chmod 600 /tmp/t/deep/er/file",
  "chmod 700 /tmp/t",
].join("\n");

test("a snapshot round-trips files, dirs, modes, links, FIFOs, a sparse file and odd names into a new sandbox", { skip, ...TIMEOUT }, async (ctx) => {
  if (skippedWithoutFreezer(ctx)) return;
  const a = await start();
  let listing: string;
  let parts: { work?: string; tmp?: string };
  const dir = await captureDir();
  try {
    await sh(a.client, POPULATE);
    listing = await sh(a.client, LISTING);
    assert.match(listing, /^prw/m, "the listing shows the FIFO");
    assert.match(listing, /^srw/m, "the listing shows the socket");
    const snap = await a.sandbox.snapshot!({ memory: false, dir });
    assert.deepEqual(snap.shape, {});
    parts = snap.parts;
    assert.deepEqual(Object.keys(parts).sort(), ["tmp", "work"]);
    for (const part of [parts.work, parts.tmp]) {
      const st = await stat(part ?? "");
      assert.equal(st.mode & 0o777, 0o600);
      assert.ok(st.size <= archiveLimitBytes(16), `archive of ${st.size} bytes`);
    }
    assert.ok((await stat(parts.work ?? "")).size < 8 * MiB, "the sparse file is stored sparse");
    assert.equal(await freezerState(a.sandbox), "THAWED", "a running sandbox runs again after capture");
    assert.equal(await a.client.echo("still here"), "still here");
  } finally {
    await stop(a);
  }

  const a2 = await start();
  const b = await start({ restore: { memory: false, parts, shape: {} } });
  try {
    assert.equal(await sh(b.client, LISTING), withoutSockets(listing), "the same tree, but sockets (tar skips them)");
    assert.equal(await sh(b.client, "cat /work/dir/rel-link /tmp/t/deep/er/file; /work/dir/run.sh"), "hello\nin-tmp\nrun\n");
    assert.equal(await sh(b.client, "stat -c %i /work/dir/a.txt /work/hard-link | uniq | wc -l"), "1\n", "the hard link is one inode");
    // Holes stay holes: 1 GiB apparent size in a 16 MiB /work.
    assert.equal(await sh(b.client, "stat -c %s /work/sparse; dd if=/work/sparse bs=1 skip=536870912 count=6 2>/dev/null"), "1073741824\nmiddle");
    assert.ok(Number(await sh(b.client, "stat -c %b /work/sparse")) < 64, "the sparse file takes a few blocks");
    assert.equal(await sh(b.client, "chmod 600 /work/dir/sub/locked && cat /work/dir/sub/locked; chmod 700 /work/closed && cat /work/closed/file"), "secret\ninside\n");
    assert.equal(await sh(b.client, "ls -a /tmp | grep -c mvm-restore || true"), "0\n", "the restore step's symlink is gone");
    assert.deepEqual(await restoreFilesHeld(b), [], "no process of the sandbox holds a restore file");
    // Extracted as the sandbox's own user: on the host the files belong to its uid, not to root.
    const hostUid = Number(b.sandbox.reapRecord.extra["hostUid"]);
    const init = Number(b.sandbox.reapRecord.extra["initPid"]);
    for (const path of ["work/dir/a.txt", "work/sparse", "tmp/t/deep/er/file"]) {
      assert.equal((await stat(`/proc/${init}/root/${path}`)).uid, hostUid, path);
    }
    assert.deepEqual(await agentEnvironment(b), await agentEnvironment(a2), "the agent starts with the same environment as in a fresh sandbox");
  } finally {
    await stop(b);
    await stop(a2);
    await rm(dir, { recursive: true, force: true });
  }
});

test("writes after the capture do not reach the snapshot; a paused sandbox stays paused", { skip, ...TIMEOUT }, async (ctx) => {
  if (skippedWithoutFreezer(ctx)) return;
  const a = await start();
  const dir = await captureDir();
  const dir2 = await captureDir();
  let parts: { work?: string; tmp?: string };
  try {
    // A writer that replaces /work/counter as fast as it can, and says when it has begun.
    await sh(a.client, "( i=0; while :; do i=$((i+1)); echo $i > /work/c.new; mv /work/c.new /work/counter; done ) >/dev/null 2>&1 & while [ ! -e /work/counter ]; do :; done");
    parts = (await a.sandbox.snapshot!({ memory: false, dir })).parts;
    await sh(a.client, "echo later > /work/after-capture");
    assert.equal(await freezerState(a.sandbox), "THAWED");

    await a.sandbox.pause();
    const again = await a.sandbox.snapshot!({ memory: false, dir: dir2 });
    assert.equal(await freezerState(a.sandbox), "FROZEN", "a paused sandbox is still paused after capture");
    await a.sandbox.resume();
    assert.ok((await stat(again.parts.work ?? "")).size > 0);
    assert.equal(await a.client.echo("resumed"), "resumed");
  } finally {
    await stop(a);
  }
  const b = await start({ restore: { memory: false, parts, shape: {} } });
  try {
    assert.equal(await sh(b.client, "ls /work | grep -c after-capture || true"), "0\n", "only the state at the capture");
    assert.match(await sh(b.client, "cat /work/counter"), /^\d+\n$/, "a whole value, not a torn write");
  } finally {
    await stop(b);
    await rm(dir, { recursive: true, force: true });
    await rm(dir2, { recursive: true, force: true });
  }
});

test("a memory snapshot or restore is refused with UnsupportedCapabilityError saying why", { skip, ...TIMEOUT }, async () => {
  const a = await start();
  const dir = await captureDir();
  try {
    await assert.rejects(
      a.sandbox.snapshot!({ memory: true, dir }),
      (err: unknown) => err instanceof UnsupportedCapabilityError && /CRIU/.test(err.message) && /vm backend/.test(err.hint ?? ""),
    );
    assert.deepEqual(await readdir(dir), [], "nothing captured in its place");
    assert.equal(await freezerState(a.sandbox).catch(() => "THAWED"), "THAWED");
  } finally {
    await stop(a);
  }
  const spec = { ...(await makeSpec(base)), restore: { memory: true, parts: {}, shape: {} } };
  await assert.rejects(backend.launch(spec), UnsupportedCapabilityError);
  assert.deepEqual(await traces(spec.sandboxId), []);
  await rm(dir, { recursive: true, force: true });
});

test("a tree whose archive would pass its bound fails the capture with a typed error and leaves nothing", { skip, ...TIMEOUT }, async (ctx) => {
  if (skippedWithoutFreezer(ctx)) return;
  const a = await start({ workMiB: 1, tmpMiB: 1 });
  const dir = await captureDir();
  try {
    // Empty files with long names take no tmpfs space but about 1.5 KiB of archive each.
    const limit = archiveLimitBytes(1);
    const count = Math.ceil(limit / 1536) + 1000;
    await sh(a.client, `cd /work && i=0; while [ $i -lt ${count} ]; do : > "$(printf '%0200d' $i)"; i=$((i+1)); done`);
    await assert.rejects(a.sandbox.snapshot!({ memory: false, dir }), SnapshotMismatchError);
    assert.deepEqual(await readdir(dir), [], "the partial archive is removed");
    assert.equal(await freezerState(a.sandbox), "THAWED");
    assert.equal(await a.client.echo("alive"), "alive");
  } finally {
    await stop(a);
    await rm(dir, { recursive: true, force: true });
  }
});

test("an aborted capture fails with AbortedError, removes its files and leaves the sandbox running", { skip, ...TIMEOUT }, async (ctx) => {
  if (skippedWithoutFreezer(ctx)) return;
  const a = await start();
  const dir = await captureDir();
  try {
    await sh(a.client, "echo data > /work/file");
    await assert.rejects(a.sandbox.snapshot!({ memory: false, dir, signal: AbortSignal.abort(new Error("caller gave up")) }), AbortedError);
    assert.deepEqual(await readdir(dir), []);
    assert.equal(await freezerState(a.sandbox), "THAWED");
    assert.equal(await a.client.echo("alive"), "alive");
  } finally {
    await stop(a);
    await rm(dir, { recursive: true, force: true });
  }
});

test("a restore with no archives starts with empty trees", { skip, ...TIMEOUT }, async () => {
  const b = await start({ restore: { memory: false, parts: {}, shape: {} } });
  try {
    assert.equal(await sh(b.client, "ls -A /work /tmp"), "/tmp:\n\n/work:\n");
  } finally {
    await stop(b);
  }
});

/** Restores `entries` as /work into a new sandbox; returns the launch error, or the running sandbox. */
async function restoreHostile(name: string, entries: readonly TarEntry[], input: Partial<SpecInput> = {}): Promise<{ spec: LaunchSpec; result: Running | unknown }> {
  const path = join(root, `${name}.tar`);
  await writeFile(path, tarArchive(entries), { mode: 0o400 });
  const spec = { ...(await makeSpec({ ...base, ...input })), restore: { memory: false, parts: { work: path }, shape: {} } };
  try {
    const sandbox = await backend.launch(spec);
    const client = new StandInClient(sandbox.channel);
    await client.hello;
    return { spec, result: { spec, sandbox, client } };
  } catch (err) {
    return { spec, result: err };
  }
}

test("hostile archives cannot write outside the new sandbox: each fails with a typed error or stays inside", { skip, ...TIMEOUT }, async () => {
  const outside = join(root, "outside");
  await mkdir(outside, { mode: 0o777 });
  await chmod(outside, 0o777);
  const escapeName = `../../../../../../..${outside}/escaped`;
  const cases: Array<{ name: string; entries: TarEntry[]; input?: Partial<SpecInput>; expect: RegExp | "contained" }> = [
    { name: "dotdot", entries: [{ name: escapeName, type: "0", data: Buffer.from("x") }], expect: /extracting the work archive failed/ },
    { name: "absolute", entries: [{ name: `${outside}/absolute`, type: "0", data: Buffer.from("x") }], expect: "contained" },
    {
      name: "symlink-through",
      entries: [
        { name: "out", type: "2", linkname: outside },
        { name: "out/through", type: "0", data: Buffer.from("x") },
        { name: "rel", type: "2", linkname: "../../../../../../..".concat(outside) },
        { name: "rel/through2", type: "0", data: Buffer.from("x") },
      ],
      expect: /extracting the work archive failed/,
    },
    {
      name: "hardlink-out",
      entries: [{ name: "hl", type: "1", linkname: `${outside}/target` }],
      expect: /extracting the work archive failed/,
    },
    { name: "device", entries: [{ name: "null2", type: "3", mode: 0o666, device: [1, 3] }], expect: /extracting the work archive failed/ },
    { name: "too-big", entries: [{ name: "big", type: "0", data: Buffer.alloc(3 * MiB, 1) }], input: { workMiB: 2 }, expect: /does not fit \/work of 2 MiB/ },
    { name: "truncated", entries: [{ name: "cut", type: "0", data: Buffer.alloc(1024, 1), size: 4096 }], expect: /extracting the work archive failed/ },
  ];
  await writeFile(join(outside, "target"), "host file\n", { mode: 0o666 });
  for (const c of cases) {
    const { spec, result } = await restoreHostile(c.name, c.entries, c.input);
    if (c.expect === "contained") {
      assert.ok(!(result instanceof Error), `${c.name}: ${String(result)}`);
      const running = result as Running;
      assert.equal(await sh(running.client, `cat /work${outside}/absolute`), "x", "the leading / is dropped: the file lands inside /work");
      await stop(running);
    } else {
      assert.ok(result instanceof SnapshotMismatchError, `${c.name}: ${String(result)}`);
      assert.match((result as Error).message, c.expect, c.name);
      assert.deepEqual(await traces(spec.sandboxId), [], `${c.name}: nothing left running`);
    }
    assert.deepEqual((await readdir(outside)).sort(), ["target"], `${c.name}: nothing written outside`);
    assert.equal(await readFile(join(outside, "target"), "utf8"), "host file\n");
    assert.deepEqual((await readdir(spec.stateDir)).filter((n) => n !== "agent.log" && n !== "seccomp.bpf"), [], `${c.name}: no temp files`);
  }
});

test("an archive larger than the new sandbox's bound is refused before anything starts", { skip, ...TIMEOUT }, async () => {
  const { spec, result } = await restoreHostile("over-bound", [{ name: "big", type: "0", data: Buffer.alloc(archiveLimitBytes(1) + MiB, 1) }], { workMiB: 1 });
  assert.ok(result instanceof SnapshotMismatchError, String(result));
  assert.match(result.message, /cannot fit \/work of 1 MiB/);
  assert.deepEqual(await traces(spec.sandboxId), []);
});

test("kill -9 of the engine mid-capture orphans nothing: its tar ends, and reaping the record removes the frozen sandbox", { skip, ...TIMEOUT }, async (ctx) => {
  if (skippedWithoutFreezer(ctx)) return;
  const spec = await makeSpec({ ...base, workMiB: 256 });
  const dir = await captureDir();
  const inputPath = join(spec.stateDir, "capture.json");
  await writeFile(inputPath, JSON.stringify({ spec, dir, fillMiB: 200 }));
  const launcher = spawn(process.execPath, [LAUNCHER, "capture", inputPath], { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: launcher.stdout });
  const iterator = lines[Symbol.asyncIterator]();
  const { reapRecord } = JSON.parse(String((await iterator.next()).value)) as { reapRecord: ReapRecord };
  // Killed as soon as the archive has its first bytes (or, on a fast machine, once it is done).
  const started = async (): Promise<boolean> => ((await stat(join(dir, "work.tar")).catch(() => undefined))?.size ?? 0) > 0;
  while (!(await started())) await delay(5);
  launcher.kill("SIGKILL");
  await once(launcher, "exit");
  lines.close();
  // The orphaned tar dies of SIGPIPE at its next write.
  for (;;) {
    const tars = (await readdir("/proc")).filter((n) => /^\d+$/.test(n));
    const left = await Promise.all(tars.map(async (n) => (await readFile(`/proc/${n}/cmdline`, "utf8").catch(() => "")).includes("--directory=/proc/self/fd/3")));
    if (!left.includes(true)) break;
    await delay(20);
  }
  await backend.reap(reapRecord);
  assert.deepEqual(await footprint(reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
  assert.deepEqual(await traces(spec.sandboxId), []);
  await rm(dir, { recursive: true, force: true });
});
