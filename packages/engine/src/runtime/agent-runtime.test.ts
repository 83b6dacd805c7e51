import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { chmod, lstat, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AGENT_MOUNT_POINT, agentRuntimeCommand, assembleAgentRuntime } from "./agent-runtime.js";
import { listSharedLibraries } from "./shared-libs.js";
import { STAND_IN_AGENT_SOURCE } from "./_stand-in-agent.js";

const isRoot = process.getuid?.() === 0;
/** An unprivileged uid for the dumpability test (root can read any process's memory). */
const TEST_UID = 0x6f10_0000 + (process.pid % 1000);

let root = "";
let agentPath = "";
before(async () => {
  root = await mkdtemp(join(tmpdir(), "mvm-runtime-"));
  await chmod(root, 0o755);
  agentPath = join(root, "agent.cjs");
  await writeFile(agentPath, STAND_IN_AGENT_SOURCE, { mode: 0o644 });
});
after(async () => {
  execFileSync("chmod", ["-R", "u+w", root]);
  await rm(root, { recursive: true, force: true });
});

/** The runtime command with /.mvm replaced by the host directory, to run it outside a sandbox. */
function hostCommand(dir: string): string[] {
  return agentRuntimeCommand().map((arg) => arg.replace(AGENT_MOUNT_POINT, dir));
}

test("agentRuntimeCommand starts node through the shipped loader", () => {
  assert.deepEqual(agentRuntimeCommand(), [
    "/.mvm/bin/ld-linux-x86-64.so.2", "--library-path", "/.mvm/lib", "/.mvm/bin/node", "/.mvm/agent.cjs", "--channel", "stdio",
  ]);
  assert.deepEqual(agentRuntimeCommand({ relayPath: "/dev/mvm-relay" }).slice(-4), ["--channel", "stdio", "--relay", "/dev/mvm-relay"]);
});

test("the runtime holds the loader (0111), node (0555), every library (0444) and the agent (0444), named by its manifest digest", async () => {
  const outRoot = join(root, "layout");
  const runtime = await assembleAgentRuntime({ agentBundlePath: agentPath, outRoot });
  const manifest = await readFile(join(runtime.dir, "manifest.txt"));
  const hex = createHash("sha256").update(manifest).digest("hex");
  assert.equal(runtime.digest, `sha256:${hex}`);
  assert.equal(runtime.dir, join(outRoot, hex));

  const mode = async (p: string): Promise<number> => (await lstat(join(runtime.dir, p))).mode & 0o7777;
  assert.equal(await mode("bin/ld-linux-x86-64.so.2"), 0o111);
  assert.equal(await mode("bin/node"), 0o555);
  assert.equal(await mode("agent.cjs"), 0o444);
  assert.equal(await mode("manifest.txt"), 0o444);
  for (const dir of [".", "bin", "lib"]) assert.equal(await mode(dir), 0o555, dir);
  const libs = await listSharedLibraries(process.execPath);
  assert.deepEqual((await readdir(join(runtime.dir, "lib"))).sort(), libs.libraries.map((l) => l.name).sort());
  for (const lib of libs.libraries) assert.equal(await mode(`lib/${lib.name}`), 0o444, lib.name);
  assert.equal(await readFile(join(runtime.dir, "agent.cjs"), "utf8"), STAND_IN_AGENT_SOURCE);
  if (isRoot) assert.equal((await stat(join(runtime.dir, "bin/node"))).uid, 0);
  assert.ok(manifest.toString().startsWith("mvm-agent-runtime v1\n"));
  assert.match(manifest.toString(), /^0111 \d+ sha256:[0-9a-f]{64} bin\/ld-linux-x86-64\.so\.2$/m);
});

test("a second assembly reuses the directory; another agent gets another one; damage is repaired", async () => {
  const outRoot = join(root, "reuse");
  const first = await assembleAgentRuntime({ agentBundlePath: agentPath, outRoot });
  const inode = (await stat(join(first.dir, "bin/node"))).ino;
  const again = await assembleAgentRuntime({ agentBundlePath: agentPath, outRoot });
  assert.deepEqual(again, first);
  assert.equal((await stat(join(again.dir, "bin/node"))).ino, inode, "reused, not rebuilt");

  const otherAgent = join(root, "other.mjs");
  await writeFile(otherAgent, "// another agent\n");
  const other = await assembleAgentRuntime({ agentBundlePath: otherAgent, outRoot });
  assert.notEqual(other.digest, first.digest);
  assert.deepEqual((await readdir(outRoot)).sort(), [first.dir, other.dir].map((d) => d.slice(outRoot.length + 1)).sort());

  await chmod(join(first.dir, "bin/ld-linux-x86-64.so.2"), 0o755);
  const repaired = await assembleAgentRuntime({ agentBundlePath: agentPath, outRoot });
  assert.equal(repaired.dir, first.dir);
  assert.equal((await lstat(join(repaired.dir, "bin/ld-linux-x86-64.so.2"))).mode & 0o7777, 0o111);
  assert.ok(!(await readdir(outRoot)).some((n) => n.startsWith(".")), "no temporary or stale directories left");
});

test("concurrent assemblies agree on one directory", async () => {
  const outRoot = join(root, "race");
  const results = await Promise.all([1, 2, 3].map(() => assembleAgentRuntime({ agentBundlePath: agentPath, outRoot })));
  assert.equal(new Set(results.map((r) => r.dir)).size, 1);
  assert.equal((await readdir(outRoot)).length, 1);
});

test("relative paths are rejected", async () => {
  await assert.rejects(assembleAgentRuntime({ agentBundlePath: "agent.cjs", outRoot: root }), /Invalid agentBundlePath "agent.cjs"/);
});

/** Runs `argv` (as TEST_UID when root) and returns its stdout. */
async function runAs(argv: string[], input = ""): Promise<string> {
  const full = isRoot ? ["/usr/bin/setpriv", `--reuid=${TEST_UID}`, `--regid=${TEST_UID}`, "--clear-groups", ...argv] : argv;
  const child = spawn(full[0] ?? "", full.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
  child.stdin.on("error", () => undefined); // a program that exits without reading its input
  child.stdin.end(input);
  const [code] = (await once(child, "close")) as [number | null];
  assert.equal(code, 0, `${argv.join(" ")} exited ${code}`);
  return out;
}

test("the runtime command runs the agent with the shipped loader and libraries", async () => {
  const runtime = await assembleAgentRuntime({ agentBundlePath: agentPath, outRoot: join(root, "run") });
  const out = await runAs(hostCommand(runtime.dir), `${JSON.stringify({ echo: "ping" })}\n`);
  const [hello, echo] = out.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(hello?.["hello"], true);
  assert.deepEqual(hello?.["argv"], ["--channel", "stdio"]);
  assert.deepEqual(echo, { echo: "ping" });
});

/**
 * Whether this kernel marks a process started from an unreadable executable non-dumpable (what
 * fs/exec.c's would_dump does; not every kernel does it): a static busybox copied with mode 0111
 * reports the owner of its own /proc/self/environ, which is root for a non-dumpable process.
 */
async function kernelHonorsUnreadableExec(): Promise<boolean> {
  const dir = join(root, "dumpable-control");
  execFileSync("mkdir", ["-m", "755", dir]);
  const copy = join(dir, "stat"); // busybox picks the applet from its name
  execFileSync("cp", ["/bin/busybox", copy]);
  await chmod(copy, 0o111);
  return (await runAs([copy, "-c", "%u", "/proc/self/environ"])).trim() === "0";
}

test("a process started through the execute-only loader is not dumpable: a same-uid process cannot open its memory", async (t) => {
  if (!(await kernelHonorsUnreadableExec())) {
    t.skip(
      "the host-side control (a 0111 static busybox run directly) stays dumpable on this kernel; the claim is checked inside a real sandbox by conformance/security.ts (agent-mem probe), where it holds",
    );
    return;
  }
  const runtime = await assembleAgentRuntime({ agentBundlePath: agentPath, outRoot: join(root, "dump") });
  // The node process starts a shell (same uid, its child) that tries to open the parent's /proc/PID/mem.
  const script = `process.stdout.write(require("child_process").spawnSync("/bin/sh", ["-c",
    "(exec 3</proc/$PPID/mem) 2>/dev/null && echo opened || echo denied"]).stdout)`;
  const viaLoader = [...hostCommand(runtime.dir).slice(0, 4), "-e", script];
  const direct = [join(runtime.dir, "bin/node"), "-e", script];
  assert.equal((await runAs(direct)).trim(), "opened", "control: node started directly is dumpable");
  assert.equal((await runAs(viaLoader)).trim(), "denied");
});
