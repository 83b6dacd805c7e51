/**
 * Conformance suite, part 2: escape attempts. Each runs inside a real sandbox and must be denied.
 * Each test names the claim of docs/SECURITY.md it enforces.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { NotFoundError, PermissionDeniedError, type BackendName } from "@mvm/protocol";
import {
  create,
  hostFootprint,
  probe,
  run,
  runProbeScript,
  sh,
  sharedImagesDir,
  testEngine,
  unavailableReason,
  type TestEngine,
} from "./harness.js";

/** Every address family number up to 63 but the four the seccomp filter allows (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK). */
const DENIED_FAMILIES = Array.from({ length: 64 }, (_, family) => family).filter((family) => ![1, 2, 10, 16].includes(family));

/** Fields of /proc/<pid>/status that the posture probe reports. */
interface ProcStatus {
  readonly pid?: number;
  readonly Name?: string;
  readonly Uid?: string;
  readonly CapInh?: string;
  readonly CapPrm?: string;
  readonly CapEff?: string;
  readonly CapBnd?: string;
  readonly CapAmb?: string;
  readonly NoNewPrivs?: string;
  readonly Seccomp?: string;
}

/**
 * What makes `s` weaker than a confined workload running as `uid`: any capability (bounding,
 * effective, permitted, inheritable, ambient), no no_new_privs, no seccomp filter, or a real,
 * effective, saved or filesystem uid other than `uid`.
 */
function weaknesses(s: ProcStatus, uid: string): string[] {
  const out: string[] = [];
  for (const set of ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] as const) {
    if (!/^0+$/.test(s[set] ?? "")) out.push(`${set} ${s[set]}`);
  }
  if (s.NoNewPrivs !== "1") out.push(`NoNewPrivs ${s.NoNewPrivs}`);
  if (s.Seccomp !== "2") out.push(`Seccomp ${s.Seccomp}`);
  if ((s.Uid ?? "").split(/\s+/).some((u) => u !== uid)) out.push(`Uid ${s.Uid}`);
  return out;
}

export function securitySuite(backend: BackendName): void {
  const skip = unavailableReason();
  describe(`${backend} backend: escape attempts are denied`, { skip }, () => {
    let t: TestEngine;
    let id: string;
    let hostDir: string;
    let secretPath: string;
    let hostSleeper: ChildProcess;
    let server: Server;
    let serverPort: number;
    const marker = `mvm-marker-${randomBytes(6).toString("hex")}`;

    before(async () => {
      t = await testEngine();
      id = (await create(t.engine, backend, { resources: { memoryMiB: 256, pids: 96 } })).id;
      hostDir = await mkdtemp("/var/tmp/mvm-host-secret-");
      secretPath = join(hostDir, "secret.txt");
      await writeFile(secretPath, marker, { mode: 0o644 });
      hostSleeper = spawn("sleep", ["3600"], { stdio: "ignore", argv0: marker });
      server = createServer((s) => {
        s.on("error", () => {});
        s.end("host-service\n");
      });
      await new Promise<void>((r) => server.listen(0, "0.0.0.0", r));
      serverPort = (server.address() as { port: number }).port;
    });
    after(async () => {
      hostSleeper?.kill("SIGKILL");
      server?.close();
      await rm(hostDir, { recursive: true, force: true });
      await t?.close();
    });

    test("claim 1: host files are not visible (a host file, /etc/shadow content, the state directory)", async () => {
      assert.equal((await probe(t.engine, id, "exists", secretPath)).allowed, false);
      assert.equal((await probe(t.engine, id, "exists", `/proc/1/root${secretPath}`)).allowed, false);
      assert.equal((await probe(t.engine, id, "exists", t.stateDir)).allowed, false);
      assert.equal((await probe(t.engine, id, "read", "/etc/shadow")).allowed, false);
      const grep = await sh(t.engine, id, `grep -rs ${marker} /etc /work /tmp /proc/1/root/etc 2>/dev/null | head -1`);
      assert.equal(grep.stdout, "");
    });

    test("claim 1: nothing outside /work and /tmp is writable", async () => {
      for (const p of ["/etc/mvm-evil", "/mvm-evil", "/usr/bin/mvm-evil", "/.mvm/agent.cjs", "/.mvm/mvm-evil", "/dev/mvm-evil"]) {
        assert.equal((await probe(t.engine, id, "write", p)).allowed, false, p);
      }
      assert.equal((await probe(t.engine, id, "write", "/work/ok")).allowed, true, "control: /work is writable");
    });

    test("claim 1: host-global /proc/sys knobs and cgroup limits cannot be opened for writing", async () => {
      for (const p of [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/vm/drop_caches",
        "/proc/sysrq-trigger",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/pids.max",
      ]) {
        assert.equal((await probe(t.engine, id, "open-write", p)).allowed, false, p);
      }
    });

    test("claim 2: no way to uid 0 (setuid, unshare -r, setuid binaries)", async () => {
      assert.equal((await probe(t.engine, id, "setuid0")).allowed, false);
      assert.equal((await probe(t.engine, id, "unshare-user")).allowed, false);
      const r = await sh(t.engine, id, "id -u; unshare -r id -u 2>&1; grep -E '^(NoNewPrivs|CapEff|CapBnd|Seccomp):' /proc/self/status");
      const lines = r.stdout.trim().split("\n");
      assert.notEqual(lines[0], "0");
      assert.doesNotMatch(lines[1] ?? "", /^0$/);
      assert.match(r.stdout, /NoNewPrivs:\s+1/);
      assert.match(r.stdout, /CapEff:\s+0+$/m);
      assert.match(r.stdout, /Seccomp:\s+2/);
      const suid = await sh(t.engine, id, "find / -xdev -perm /6000 -type f 2>/dev/null | head -5");
      assert.equal(suid.stdout, "", "setuid/setgid bits must be dropped from images");
    });

    test("claim 2: the workload has no capabilities, no_new_privs and seccomp, and sees only the sandbox's own unprivileged processes", async () => {
      const { self, processes } = JSON.parse(await runProbeScript(t.engine, id, ["posture"])) as { self: ProcStatus; processes: ProcStatus[] };
      const uid = (self.Uid ?? "").split(/\s+/)[0] ?? "";
      assert.notEqual(uid, "0");
      assert.deepEqual(weaknesses(self, uid), [], "the workload itself");
      // Its own pid namespace: pid 1 is the sandbox's, and no process of the host or the guest's
      // init (root processes, kernel threads) is visible.
      assert.ok(processes.some((p) => p.pid === 1), "pid 1 is visible");
      const seen = processes.flatMap((p) => weaknesses(p, uid).map((w) => `pid ${p.pid} (${p.Name}): ${w}`));
      assert.deepEqual(seen, [], "every visible process is confined like the workload");
    });

    test("mount, pivot_root and the new mount API are denied", async () => {
      for (const p of ["mount", "umount", "pivot_root", "fsopen"]) assert.equal((await probe(t.engine, id, p)).allowed, false, p);
      const r = await sh(t.engine, id, "mount -t tmpfs none /work 2>&1; echo rc=$?");
      assert.match(r.stdout, /rc=[1-9]/);
    });

    test("ptrace and cross-process memory access are denied, and the agent is not dumpable", async () => {
      assert.equal((await probe(t.engine, id, "ptrace-attach", "1")).allowed, false);
      assert.equal((await probe(t.engine, id, "process_vm_readv", "1")).allowed, false);
      const r = await probe(t.engine, id, "agent-mem");
      assert.equal(r.allowed, false, r.detail);
      assert.doesNotMatch(r.detail, /agent process not found/);
    });

    test("kernel modules, kexec, bpf, keyrings, perf, userfaultfd, io_uring, open_by_handle_at, personality are denied", async () => {
      for (const p of [
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "bpf",
        "keyctl",
        "add_key",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "open_by_handle_at",
        "personality",
      ]) {
        assert.equal((await probe(t.engine, id, p)).allowed, false, p);
      }
    });

    test("sockets: only the Unix, IP and netlink address families; raw, packet and NETLINK_AUDIT sockets are denied", async () => {
      // Control: the allowed families still make sockets.
      const allowed = await run(t.engine, id, ["python3", "-c", "import socket\nfor f, k, p in ((1, 1, 0), (2, 1, 0), (10, 2, 0), (16, 3, 0)): socket.socket(f, k, p).close()\nprint('ok')"]);
      assert.equal(allowed.stdout, "ok\n", allowed.stderr);
      // AF_VSOCK (40) first of all: vsock is not confined by a network namespace or the guest's loopback.
      const families = await probe(t.engine, id, "socket-families", DENIED_FAMILIES.join(","));
      assert.deepEqual(families, { probe: "socket-families", allowed: false, detail: "" }, "every other family fails with EAFNOSUPPORT");
      for (const p of ["raw-socket", "packet-socket", "netlink-audit-socket"]) {
        assert.equal((await probe(t.engine, id, p)).allowed, false, p);
      }
    });

    test("no network: only loopback exists, and the host's services are unreachable", async () => {
      const links = await sh(t.engine, id, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '");
      assert.deepEqual(links.stdout.trim().split("\n"), ["lo"]);
      // Control: the host itself reaches its own service, so the test can fail.
      const hostReach = await new Promise<boolean>((resolve) => {
        const c = connect(serverPort, "127.0.0.1", () => (c.destroy(), resolve(true)));
        c.on("error", () => resolve(false));
      });
      assert.equal(hostReach, true);
      assert.equal((await probe(t.engine, id, "connect", `127.0.0.1:${serverPort}`)).allowed, false);
      for (const addr of hostAddresses()) {
        assert.equal((await probe(t.engine, id, "connect", `${addr}:${serverPort}`)).allowed, false, addr);
      }
    });

    test("no host path is readable under /proc: command lines, environments, mount tables, status, links", async () => {
      const relayDir = (await hostFootprint(t.stateDir, id)).relayDir;
      const control = "/work/.probe.py";
      const needles = [
        control,
        t.stateDir,
        join(t.stateDir, "runtime"),
        sharedImagesDir(),
        "/var/lib/mvm",
        join(tmpdir(), "mvm-conf-"),
        ...(relayDir !== undefined ? [relayDir] : []),
        // The engine's working directory, unless it is too short to tell apart from sandbox paths.
        ...(process.cwd().split("/").filter(Boolean).length >= 2 ? [process.cwd()] : []),
      ];
      const r = await probe(t.engine, id, "host-strings", Buffer.from(JSON.stringify(needles)).toString("hex"));
      const { read, hits } = JSON.parse(r.detail) as { read: number; hits: string[] };
      assert.ok(read > 20, `only ${read} entries under /proc were readable`);
      assert.ok(hits.includes("0 /proc/self/cmdline"), "control: the probe finds its own path in its command line");
      // Documented limit of the container tier (docs/SECURITY.md): the root field of a bind
      // mount's mountinfo line is the bound directory's path within its host filesystem.
      const documented = backend === "namespace" ? /^\d+ \/proc\/[\w-]+\/mountinfo root-of (\/|\/\.mvm|\/dev\/mvm-relay|\/etc\/passwd|\/etc\/group)$/ : /^$/;
      const leaks = hits.filter((h) => !h.startsWith("0 ") && !documented.test(h)).map((h) => `${needles[Number(h.split(" ")[0])]} in ${h.slice(h.indexOf(" ") + 1)}`);
      assert.deepEqual(leaks, []);
    });

    test("host processes are invisible", async () => {
      // Kernel threads (a VM guest's own, with an empty cmdline) are not counted.
      const r = await sh(t.engine, id, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo; for c in /proc/[0-9]*/cmdline; do if [ -n \"$(tr -d '\\0' < \"$c\" 2>/dev/null)\" ]; then echo; fi; done | wc -l");
      assert.doesNotMatch(r.stdout, new RegExp(marker));
      const count = Number(r.stdout.trim().split("\n").pop());
      assert.ok(count > 0 && count < 20, `sandbox sees ${count} processes`);
    });

    test("the files API cannot escape through symlinks or /proc/*/root", async () => {
      await sh(t.engine, id, `ln -sf ${secretPath} /work/link-out; ln -sf /proc/1/root${hostDir} /work/link-proc`);
      await assert.rejects(t.engine.readFile(id, "/work/link-out"), NotFoundError);
      // Through /proc/1/root: absent (namespace: the sandbox's own pid 1) or refused (vm: the guest's root-owned init).
      const notReached = (err: unknown) => err instanceof NotFoundError || err instanceof PermissionDeniedError;
      await assert.rejects(t.engine.listDir(id, "/work/link-proc"), notReached);
      await assert.rejects(t.engine.readFile(id, `/proc/1/root${secretPath}`), notReached);
      await assert.rejects(t.engine.writeFile(id, `/proc/1/root${hostDir}/planted`, Buffer.from("x")));
    });

    test("a fork bomb is stopped by the pids limit and the host is unaffected", async () => {
      const r = await run(t.engine, id, ["python3", "-c", "import os\nn=0\ntry:\n  while True:\n    if os.fork()==0:\n      import time; time.sleep(30); os._exit(0)\n    n+=1\nexcept OSError as e:\n  print('stopped', n, e.errno)\n"], { timeoutMs: 60_000, killGraceMs: 500 });
      assert.match(r.stdout, /^stopped \d+ 11$/m);
      const n = Number(r.stdout.split(" ")[1]);
      assert.ok(n < 96, `forked ${n} processes under a pids limit of 96`);
      const host = spawn("true");
      assert.equal(await new Promise((res) => host.on("exit", res)), 0);
      await sh(t.engine, id, "true", { timeoutMs: 30_000 }).catch(() => {});
    });

    test("a memory bomb is OOM-killed under the memory limit and the result says so", async () => {
      const r = await run(t.engine, id, ["python3", "-c", "b=[]\nwhile True: b.append(bytearray(16*1024*1024))"], { timeoutMs: 60_000 });
      assert.equal(r.exit.signal, "SIGKILL");
      assert.equal(r.exit.oomKilled, true);
      const again = await sh(t.engine, id, "echo alive");
      assert.equal(again.stdout, "alive\n");
    });
  });
}


function hostAddresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) out.push(a.address);
  }
  return out;
}
