/**
 * Conformance suite, part 1: lifecycle, exec, streaming, files, timeouts, limits and cleanup.
 * Every backend runs it unchanged (see namespace.conformance.test.ts).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { InvalidArgumentError, NotFoundError, PermissionDeniedError, type BackendName } from "@mvm/protocol";
import {
  create,
  hostFootprint,
  processesInSandboxCgroups,
  run,
  sh,
  testEngine,
  unavailableReason,
  waitFor,
  type TestEngine,
} from "./harness.js";

export function lifecycleSuite(backend: BackendName): void {
  const skip = unavailableReason();
  describe(`${backend} backend: lifecycle and exec`, { skip }, () => {
    let t: TestEngine;
    let id: string;
    before(async () => {
      t = await testEngine();
      id = (await create(t.engine, backend)).id;
    });
    after(async () => t?.close());

    test("create reports a running sandbox with its image digest, tier and TTL", async () => {
      const info = await t.engine.getSandbox(id);
      assert.equal(info.state, "running");
      assert.equal(info.backend, backend);
      assert.match(info.image.digest, /^sha256:[0-9a-f]{64}$/);
      assert.ok(Date.parse(info.expiresAt) > Date.parse(info.createdAt));
      assert.ok((await t.engine.listSandboxes()).some((s) => s.id === id));
    });

    test("exec runs argv without a shell, with exit code and separate streams", async () => {
      const r = await run(t.engine, id, ["/bin/echo", "a;b", "$HOME"]);
      assert.equal(r.stdout, "a;b $HOME\n");
      assert.equal(r.exit.exitCode, 0);
      const e = await sh(t.engine, id, "echo out; echo err >&2; exit 7");
      assert.equal(e.exit.exitCode, 7);
      assert.equal(e.stdout, "out\n");
      assert.equal(e.stderr, "err\n");
      assert.equal(e.exit.receipt.sandboxId, id);
    });

    test("a signal death is reported as the signal", async () => {
      const r = await sh(t.engine, id, "kill -TERM $$");
      assert.equal(r.exit.exitCode, null);
      assert.equal(r.exit.signal, "SIGTERM");
    });

    test("a missing program is a NotFoundError", async () => {
      await assert.rejects(run(t.engine, id, ["/no/such/program"]), NotFoundError);
    });

    test("env baseline: host variables do not leak, caller variables arrive, cwd is /work", async () => {
      process.env["MVM_TEST_HOST_ONLY"] = "leak";
      const r = await sh(t.engine, id, "env; pwd", { env: { GREETING: "hi there" } });
      delete process.env["MVM_TEST_HOST_ONLY"];
      assert.doesNotMatch(r.stdout, /MVM_TEST_HOST_ONLY/);
      assert.match(r.stdout, /^GREETING=hi there$/m);
      // Every backend gives the sandbox user a home (docs/FILES.md).
      assert.match(r.stdout, /^HOME=\/home\/user$/m);
      assert.match(r.stdout, /^\/work$/m);
    });

    test("each call gets a fresh private TMPDIR and only fds 0-2", async () => {
      const a = await sh(t.engine, id, 'echo "$TMPDIR"; stat -c %a "$TMPDIR"; ls /proc/self/fd');
      const b = await sh(t.engine, id, 'echo "$TMPDIR"');
      const [tmpA, mode, ...fds] = a.stdout.trim().split("\n");
      assert.notEqual(tmpA, b.stdout.trim());
      assert.equal(mode, "700");
      // ls itself holds one extra fd for the directory it lists.
      assert.ok(fds.length <= 4, `unexpected fds: ${fds.join(",")}`);
      assert.deepEqual(fds.slice(0, 3), ["0", "1", "2"]);
      const gone = await sh(t.engine, id, `test -e "${tmpA}" && echo present || echo gone`);
      assert.equal(gone.stdout.trim(), "gone");
    });

    test("core dumps are off (hard RLIMIT_CORE=0)", async () => {
      const r = await sh(t.engine, id, "ulimit -H -c; ulimit -c");
      assert.deepEqual(r.stdout.trim().split("\n"), ["0", "0"]);
    });

    test("stdin is delivered and closed", async () => {
      const r = await run(t.engine, id, ["/bin/cat"], { stdinBase64: Buffer.from("line1\nline2\n").toString("base64") });
      assert.equal(r.stdout, "line1\nline2\n");
    });

    test("output is streamed in order and capped per stream", async () => {
      const r = await sh(t.engine, id, "head -c 300000 /dev/zero; echo done >&2", { maxOutputBytes: 100_000 });
      assert.equal(r.stdout.length, 100_000);
      assert.equal(r.exit.stdoutTruncated, true);
      assert.equal(r.exit.stdoutBytes, 300_000);
      assert.equal(r.stderr, "done\n");
    });

    test("a per-call timeout kills the whole process group", async () => {
      const r = await sh(t.engine, id, "sleep 300 & sleep 300; echo never", { timeoutMs: 300, killGraceMs: 200 });
      assert.equal(r.exit.timedOut, true);
      assert.equal(r.stdout, "");
      const ps = await sh(t.engine, id, "ps -eo comm= 2>/dev/null || ls /proc");
      assert.doesNotMatch(ps.stdout, /^sleep$/m);
    });

    test("background processes: list, signal, stdin", async () => {
      const chunks: string[] = [];
      const started = await t.engine.exec(id, { argv: ["/bin/cat"], openStdin: true }, { onStdout: (c) => chunks.push(Buffer.from(c).toString()) });
      await t.engine.writeStdin(id, started.proc, Buffer.from("ping\n"));
      assert.ok(await waitFor(() => chunks.join("") === "ping\n"));
      const list = await t.engine.listProcesses(id);
      assert.ok(list.some((p) => p.proc === started.proc && p.argv[0] === "/bin/cat"));
      await t.engine.signalProcess(id, started.proc, "SIGKILL");
      const exit = await started.exit;
      assert.equal(exit.signal, "SIGKILL");
      await assert.rejects(t.engine.signalProcess(id, started.proc, "SIGTERM"), NotFoundError);
    });

    test("files: write, read, stat, list, mkdir, rename, remove", async () => {
      const { bytes } = await t.engine.writeFile(id, "/work/dir/a.txt", Buffer.from("hello"));
      assert.equal(bytes, 5);
      const st = await t.engine.stat(id, "/work/dir/a.txt");
      assert.equal(st.type, "file");
      assert.equal(st.size, 5);
      await t.engine.mkdir(id, "/work/dir/sub", true);
      await t.engine.rename(id, "/work/dir/a.txt", "/work/dir/sub/b.txt");
      const list = await t.engine.listDir(id, "/work/dir/sub");
      assert.deepEqual(list.entries.map((e) => e.name), ["b.txt"]);
      const rd = await t.engine.readFile(id, "/work/dir/sub/b.txt");
      const parts: Uint8Array[] = [];
      for await (const c of rd.body) parts.push(c);
      assert.equal(Buffer.concat(parts).toString(), "hello");
      const seen = await sh(t.engine, id, "cat /work/dir/sub/b.txt");
      assert.equal(seen.stdout, "hello");
      await t.engine.remove(id, "/work/dir", true);
      await assert.rejects(t.engine.stat(id, "/work/dir"), NotFoundError);
    });

    test("files: a directory larger than one answer is listed whole, sorted", async () => {
      await run(t.engine, id, ["python3", "-c", "import os\nos.makedirs('/work/many')\nfor i in range(3000): open('/work/many/entry-%05d-with-a-longish-name' % i, 'w').close()"]);
      const list = await t.engine.listDir(id, "/work/many");
      assert.equal(list.truncated, false);
      assert.equal(list.entries.length, 3000);
      assert.equal(list.entries[0]!.name, "entry-00000-with-a-longish-name");
      assert.equal(list.entries[2999]!.name, "entry-02999-with-a-longish-name");
      await t.engine.remove(id, "/work/many", true);
    });

    test("files: a 64 MiB file round-trips intact", async () => {
      const size = 64 * 1024 * 1024;
      const hashIn = createHash("sha256");
      async function* body() {
        for (let i = 0; i < size / (1 << 20); i++) {
          const c = randomBytes(1 << 20);
          hashIn.update(c);
          yield c;
        }
      }
      assert.equal((await t.engine.writeFile(id, "/work/big.bin", body())).bytes, size);
      const rd = await t.engine.readFile(id, "/work/big.bin");
      assert.equal(rd.size, size);
      const hashOut = createHash("sha256");
      for await (const c of rd.body) hashOut.update(c);
      assert.equal(hashOut.digest("hex"), hashIn.digest("hex"));
      await t.engine.remove(id, "/work/big.bin", false);
    });

    test("files: bad paths are InvalidArgumentError; the read-only root refuses writes", async () => {
      await assert.rejects(t.engine.readFile(id, "relative/path"), InvalidArgumentError);
      await assert.rejects(t.engine.readFile(id, "/work/../etc/passwd"), InvalidArgumentError);
      await assert.rejects(t.engine.writeFile(id, "/etc/evil", Buffer.from("x")), PermissionDeniedError);
      await assert.rejects(t.engine.readFile(id, "/dev/zero"), InvalidArgumentError);
    });
  });

  describe(`${backend} backend: large files`, { skip }, () => {
    test("a 1 GiB file round-trips with bounded memory on both sides", async () => {
      const t = await testEngine();
      try {
        // namespace: 256 MiB for the sandbox's processes, and the memory limit adds the tmpfs
        // caps, which the file fills: an agent that buffered the stream would be OOM-killed, and
        // the transfer would fail. vm: /work is a disk, and the guest keeps 1184 MiB: with 256 MiB
        // the transfer outlasted the sandbox's 600 s TTL under TCG. The case checks memory, not
        // time: an hour's TTL keeps a slow, busy host from ending the sandbox mid-transfer.
        const memoryMiB = backend === "namespace" ? 256 : 1024 + 160;
        const { id } = await create(t.engine, backend, { workMiB: 1100, resources: { memoryMiB }, ttlSeconds: 3600 });
        const size = 1024 * 1024 * 1024;
        const chunk = randomBytes(1 << 20);
        const rssBefore = process.memoryUsage().rss;
        let peakRss = rssBefore;
        const sample = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
        try {
          async function* body() {
            for (let i = 0; i < size / chunk.length; i++) yield chunk;
          }
          assert.equal((await t.engine.writeFile(id, "/work/huge.bin", body())).bytes, size);
          const rd = await t.engine.readFile(id, "/work/huge.bin");
          assert.equal(rd.size, size);
          const expected = createHash("sha256");
          for (let i = 0; i < size / chunk.length; i++) expected.update(chunk);
          const got = createHash("sha256");
          for await (const c of rd.body) got.update(c);
          assert.equal(got.digest("hex"), expected.digest("hex"));
        } finally {
          clearInterval(sample);
        }
        const growthMiB = (peakRss - rssBefore) / 2 ** 20;
        assert.ok(growthMiB < 256, `host RSS grew by ${growthMiB.toFixed(0)} MiB while moving 1 GiB`);
      } finally {
        await t.close();
      }
    });
  });

  describe(`${backend} backend: a full /work`, { skip }, () => {
    let t: TestEngine;
    before(async () => {
      t = await testEngine();
    });
    after(async () => t?.close());

    test("filling /work with default resources fails the writer with ENOSPC and the sandbox stays usable", async () => {
      const info = await create(t.engine, backend);
      const bytes = (info.workMiB + 64) * 1024 * 1024;
      const r = await sh(t.engine, info.id, `head -c ${bytes} /dev/zero > /work/big`, { timeoutMs: 600_000 });
      assert.notEqual(r.exit.exitCode, 0);
      assert.match(r.stderr, /No space left on device/);
      assert.equal(r.exit.oomKilled, false);
      const again = await sh(t.engine, info.id, "echo alive; rm /work/big");
      assert.equal(again.stdout, "alive\n");
      assert.equal(again.exit.exitCode, 0);
      assert.equal((await t.engine.getSandbox(info.id)).state, "running");
    });
  });

  describe(`${backend} backend: end of life`, { skip }, () => {
    let t: TestEngine;
    before(async () => {
      t = await testEngine();
    });
    after(async () => t?.close());

    test("kill releases processes, cgroups and the state directory", async () => {
      const { id } = await create(t.engine, backend, { resources: { memoryMiB: 256, pids: 128 } });
      await sh(t.engine, id, "sleep 1000 >/dev/null 2>&1 &");
      const fp = await hostFootprint(t.stateDir, id);
      assert.ok(fp.pid > 0);
      assert.ok(existsSync(`/proc/${fp.pid}`));
      const info = await t.engine.killSandbox(id);
      assert.equal(info.state, "stopped");
      assert.equal(info.endReason, "killed");
      assert.equal(existsSync(`/proc/${fp.pid}`), false);
      assert.deepEqual(await processesInSandboxCgroups(id), []);
      for (const cg of fp.cgroups) assert.equal(existsSync(cg), false, `cgroup left behind: ${cg}`);
      assert.ok(await waitFor(() => !existsSync(`${t.stateDir}/sandboxes/${id}`)));
      await assert.rejects(sh(t.engine, id, "true"), NotFoundError);
    });

    test("TTL expiry kills the sandbox and releases it", async () => {
      // The TTL runs from before the launch: an emulated VM's launch may take most of a second
      // on a busy host, and its footprint must be read before the TTL ends.
      const { id } = await create(t.engine, backend, { ttlSeconds: backend === "vm" ? 5 : 1 });
      const fp = await hostFootprint(t.stateDir, id);
      assert.ok(await waitFor(async () => (await t.engine.getSandbox(id)).state === "stopped", 15_000));
      assert.equal((await t.engine.getSandbox(id)).endReason, "expired");
      assert.ok(await waitFor(() => !existsSync(`/proc/${fp.pid}`)));
      for (const cg of fp.cgroups) assert.ok(await waitFor(() => !existsSync(cg)), `cgroup left behind: ${cg}`);
      assert.ok(await waitFor(() => !existsSync(`${t.stateDir}/sandboxes/${id}`)));
    });

    test("a limit the host cannot enforce is refused at create, never dropped", async (ctx) => {
      const h = await t.engine.health();
      const b = h.backends.find((x) => x.backend === backend)!;
      if (b.enforceable.cpu && b.enforceable.memory && b.enforceable.pids) {
        ctx.skip("this host enforces every limit; engine.test.ts covers the refusal with a backend that cannot");
        return;
      }
      const field = !b.enforceable.memory ? { memoryMiB: 128 } : !b.enforceable.pids ? { pids: 64 } : { cpus: 1 };
      await assert.rejects(create(t.engine, backend, { resources: field }), { code: "UNSUPPORTED_CAPABILITY" });
    });
  });
}
