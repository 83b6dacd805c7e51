/**
 * The namespace backend for real: bubblewrap sandboxes on a busybox image with the stand-in
 * agent, launched through the production path. Each test checks that nothing is left behind.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { readProcUid } from "../../_internal/proc.js";
import type { LaunchSpec, LaunchedSandbox } from "../types.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { SANDBOX_UID_BASE } from "./uid.js";
import { StandInClient, buildBusyboxRootfs, buildStandInRuntime, footprint, makeSpec, makeTestRoot, removeTestRoot, type SpecInput } from "./_fixtures.js";

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
  const rootfsDir = await buildBusyboxRootfs(join(root, "rootfs"));
  const runtime = await buildStandInRuntime(root);
  base = { root, rootfsDir, agentDir: runtime.dir };
  limits = (await backend.probe()).enforceable;
});
after(async () => {
  if (root !== "") await removeTestRoot(root);
});

interface Running {
  spec: LaunchSpec;
  sandbox: LaunchedSandbox;
  client: StandInClient;
}

/** Launches a sandbox, runs `body`, destroys it, and checks that nothing of it is left. */
async function withSandbox(input: Partial<SpecInput>, body: (s: Running) => Promise<void>): Promise<void> {
  const spec = await makeSpec({ ...base, ...input });
  const sandbox = await backend.launch(spec);
  try {
    const client = new StandInClient(sandbox.channel);
    await client.hello;
    await body({ spec, sandbox, client });
  } finally {
    await sandbox.destroy();
    assert.deepEqual(await footprint(sandbox.reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
  }
}

test("the sandbox starts and the channel carries bytes both ways", { skip, ...TIMEOUT }, async () => {
  await withSandbox({}, async ({ client, sandbox }) => {
    const hello = await client.hello;
    assert.equal(hello.uid, 1000);
    assert.deepEqual(hello.argv, ["--channel", "stdio", "--relay", "/dev/mvm-relay"]);
    const big = "é\u0001x".repeat(100_000);
    assert.equal(await client.echo(big), big);
    assert.equal(await sandbox.oomKills(), 0);
  });
});

test("inside the user is 1000; on the host every sandbox process runs as an unprivileged uid", { skip, ...TIMEOUT }, async () => {
  await withSandbox({}, async ({ client, sandbox, spec }) => {
    const id = await client.sh("id -u; id -g; hostname");
    assert.equal(id.stdout, "1000\n1000\nsandbox\n");
    const pids = (await footprint(sandbox.reapRecord, spec.sandboxId)).processes;
    assert.ok(pids.length >= 3, `sandbox processes: ${pids.join(",")}`);
    const uids = await Promise.all(pids.map((pid) => readProcUid(pid)));
    if (isRoot) {
      const hostUid = Number(sandbox.reapRecord.extra["hostUid"]);
      assert.ok(hostUid >= SANDBOX_UID_BASE);
      assert.deepEqual(new Set(uids), new Set([hostUid]), "no sandbox process runs as host root");
    } else {
      assert.deepEqual(new Set(uids), new Set([process.getuid?.()]));
    }
  });
});

test("host-global knobs stay closed: core_pattern cannot be written", { skip, ...TIMEOUT }, async () => {
  const before = await readFile("/proc/sys/kernel/core_pattern", "utf8");
  await withSandbox({}, async ({ client }) => {
    const r = await client.sh("echo '|/work/evil' > /proc/sys/kernel/core_pattern");
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Read-only|Permission denied/);
    const sysrq = await client.sh("echo 1 > /proc/sys/kernel/sysrq");
    assert.notEqual(sysrq.code, 0);
  });
  assert.equal(await readFile("/proc/sys/kernel/core_pattern", "utf8"), before);
});

test("/ and /.mvm are read-only; /work and /tmp are writable up to their caps", { skip, ...TIMEOUT }, async () => {
  await withSandbox({ workMiB: 4, tmpMiB: 2 }, async ({ client }) => {
    for (const path of ["/x", "/bin/x", "/.mvm/x", "/etc/passwd"]) {
      const r = await client.sh(`echo x > ${path}`);
      assert.notEqual(r.code, 0, path);
      assert.match(r.stderr, /Read-only file system/, path);
    }
    assert.equal((await client.sh("echo a > /work/a && echo b > /tmp/b && cat /work/a /tmp/b && pwd")).stdout, "a\nb\n/work\n");
    const work = await client.sh("dd if=/dev/zero of=/work/big bs=1M count=8");
    assert.notEqual(work.code, 0);
    assert.match(work.stderr, /No space left on device/);
    const tmp = await client.sh("dd if=/dev/zero of=/tmp/big bs=1M count=4");
    assert.match(tmp.stderr, /No space left on device/);
    const sizes = await client.sh("df -k /work /tmp | tail -n 2");
    assert.match(sizes.stdout, /^\S+\s+4096\s.*\n\S+\s+2048\s/);
  });
});

test("the network namespace has only the loopback interface", { skip, ...TIMEOUT }, async () => {
  await withSandbox({}, async ({ client }) => {
    const r = await client.sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert.equal(r.stdout, "lo\n");
  });
});

test("/proc shows only the sandbox's processes", { skip, ...TIMEOUT }, async () => {
  await withSandbox({}, async ({ client }) => {
    const r = await client.sh("for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done");
    const lines = r.stdout.trim().split("\n");
    assert.ok(lines.length <= 6, r.stdout);
    assert.match(lines.find((l) => l.startsWith("1 ")) ?? "", /^1 \S*bwrap /);
    assert.match(lines.find((l) => l.startsWith("2 ")) ?? "", /^2 \/\.mvm\/bin\/ld-linux-x86-64\.so\.2 /);
    assert.ok(!lines.some((l) => l.startsWith(`${process.pid} `)) || process.pid < 10);
  });
});

test("no privileges: NoNewPrivs 1, no capabilities, seccomp filter on, nested namespaces and mounts refused", { skip, ...TIMEOUT }, async () => {
  await withSandbox({}, async ({ client }) => {
    const status = await client.sh("grep -E '^(NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb|Seccomp):' /proc/self/status; grep -E '^Seccomp:' /proc/2/status");
    assert.equal(
      status.stdout.replace(/\t/g, " "),
      "CapInh: 0000000000000000\nCapPrm: 0000000000000000\nCapEff: 0000000000000000\nCapBnd: 0000000000000000\nCapAmb: 0000000000000000\nNoNewPrivs: 1\nSeccomp: 2\nSeccomp: 2\n",
    );
    const userns = await client.sh("unshare -U true");
    assert.notEqual(userns.code, 0);
    const mount = await client.sh("mount -t tmpfs none /work");
    assert.notEqual(mount.code, 0);
  });
});

test("the memory limit OOM-kills a memory hog and oomKills() counts it; the agent survives", { skip, ...TIMEOUT }, async (t) => {
  if (!limits.memory) return t.skip("memory is not enforceable on this host; runs where that cgroup controller is available to the engine (v1, or v2 with delegation), as on CI");
  await withSandbox({ resources: { memoryMiB: 128 } }, async ({ client, sandbox }) => {
    assert.equal(await sandbox.oomKills(), 0);
    const hog = await client.sh("awk 'BEGIN { s = \"x\"; while (1) s = s s }'");
    assert.ok(hog.signal === "SIGKILL" || hog.code === 137, JSON.stringify({ code: hog.code, signal: hog.signal }));
    assert.ok((await sandbox.oomKills()) >= 1);
    assert.equal(await client.echo("still here"), "still here");
  });
});

test("the pids limit stops a fork bomb", { skip, ...TIMEOUT }, async (t) => {
  if (!limits.pids) return t.skip("pids is not enforceable on this host; runs where that cgroup controller is available to the engine (v1, or v2 with delegation), as on CI");
  await withSandbox({ resources: { pids: 64 } }, async ({ client, sandbox }) => {
    const bomb = await client.sh("i=0; while [ $i -lt 300 ]; do sleep 60 >/dev/null 2>&1 & i=$((i + 1)); done; echo done");
    assert.match(bomb.stderr, /fork|Resource temporarily unavailable/i);
    const pidsDir = sandbox.reapRecord.cgroups.find((d) => d.includes("/pids/")) ?? sandbox.reapRecord.cgroups[0] ?? "";
    const current = Number((await readFile(join(pidsDir, "pids.current"), "utf8").catch(() => "0")).trim());
    assert.ok(current <= 64, `pids.current ${current}`);
  });
});

test("agent stderr goes to the agent log, capped at 1 MiB", { skip, ...TIMEOUT }, async () => {
  let logPath = "";
  await withSandbox({}, async ({ client, spec }) => {
    logPath = spec.agentLogPath;
    await client.stderr(3_000_000);
    assert.equal(await client.echo("after"), "after");
  });
  const st = await stat(logPath);
  assert.equal(st.size, 1024 * 1024);
  assert.equal(st.mode & 0o777, 0o600);
});

test("exited settles when the agent exits on its own; destroy afterwards still releases everything", { skip, ...TIMEOUT }, async () => {
  await withSandbox({ resources: limits.pids ? { pids: 100 } : {} }, async ({ sandbox }) => {
    sandbox.channel.end(); // the stand-in agent exits when its stdin closes
    assert.deepEqual(await sandbox.exited, { code: 0, signal: null });
  });
});

test("destroy is idempotent and kills a busy sandbox", { skip, ...TIMEOUT }, async () => {
  const spec = await makeSpec(base);
  const sandbox = await backend.launch(spec);
  const client = new StandInClient(sandbox.channel);
  await client.hello;
  client.sh("while :; do sleep 1 & done").catch(() => undefined);
  await Promise.all([sandbox.destroy(), sandbox.destroy()]);
  await sandbox.destroy();
  assert.ok((await sandbox.exited).signal !== null || (await sandbox.exited).code !== 0);
  assert.deepEqual(await footprint(sandbox.reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
});

test("cpu quota is written for the sandbox", { skip, ...TIMEOUT }, async (t) => {
  if (!limits.cpu) return t.skip("cpu is not enforceable on this host; runs where that cgroup controller is available to the engine (v1, or v2 with delegation), as on CI");
  await withSandbox({ resources: { cpus: 0.5 } }, async ({ sandbox }) => {
    const dir = sandbox.reapRecord.cgroups.find((d) => existsSync(join(d, "cpu.max")) || existsSync(join(d, "cpu.cfs_quota_us"))) ?? "";
    const quota = existsSync(join(dir, "cpu.max"))
      ? (await readFile(join(dir, "cpu.max"), "utf8")).trim()
      : (await readFile(join(dir, "cpu.cfs_quota_us"), "utf8")).trim();
    assert.match(quota, /^50000( 100000)?$/);
  });
});
