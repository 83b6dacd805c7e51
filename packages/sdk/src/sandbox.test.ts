import { test } from "node:test";
import assert from "node:assert/strict";
import { ReadableStream } from "node:stream/web";
import {
  AbortedError,
  CommandExitError,
  InvalidArgumentError,
  NotFoundError,
  SandboxPausedError,
  TimeoutError,
} from "@mvm/protocol";
import { Sandbox } from "./sandbox.js";
import type { CommandResult } from "./commands.js";
import { resetSharedEngines } from "./connect.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { nextEvent, startFakeDaemon, VIAS, engineVia } from "./_test/harness.js";

for (const via of VIAS) {
  test(`[${via}] pause and resume: the state and TTL mode round-trip, a paused sandbox refuses exec with SandboxPausedError`, async (t) => {
    const { engine } = await engineVia(t, via);
    await using sb = await Sandbox.create({ engine, ttlSeconds: 600, onTtl: "pause" });
    const paused = await sb.pause({ ttl: "frozen" });
    assert.equal(paused.state, "paused");
    assert.equal(paused.pause?.ttl, "frozen");
    assert.equal(sb.info.state, "paused");
    await assert.rejects(sb.commands.run(["true"]), (err: unknown) => err instanceof SandboxPausedError && err.code === "SANDBOX_PAUSED");
    const resumed = await sb.resume();
    assert.equal(resumed.state, "running");
    assert.equal(resumed.pause, undefined);
    assert.equal((await sb.commands.run(["echo", "on"])).stdout, "on\n");
  });

  test(`[${via}] create, run, files, connect, list and dispose`, async (t) => {
    const { engine, fake } = await engineVia(t, via);
    let id: string;
    {
      await using sb = await Sandbox.create({
        engine,
        image: "debian:bookworm+python3",
        ttlSeconds: 600,
        resources: { memoryMiB: 512, pids: 256, cpus: 1 },
      });
      id = sb.id;
      assert.equal(sb.info.state, "running");
      assert.deepEqual(sb.info.resources, { memoryMiB: 512, pids: 256, cpus: 1 });

      const r = await sb.commands.run(["echo", "2+2"], { timeoutSeconds: 30 });
      assert.deepEqual([r.exitCode, r.signal, r.stdout, r.stderr, r.timedOut], [0, null, "2+2\n", "", false]);
      assert.equal(r.receipt.sandboxId, sb.id);
      assert.equal((await sb.commands.run("ls | wc -l")).stdout, "sh:ls | wc -l\n");

      await sb.files.write("/work/a.txt", "hi");
      assert.equal(await sb.files.read("/work/a.txt"), "hi");

      const again = await Sandbox.connect(sb.id, { engine });
      assert.equal(again.id, sb.id);
      assert.deepEqual((await Sandbox.list({ engine })).map((s) => s.id), [sb.id]);
    }
    assert.equal(fake.sandboxes.get(id)?.info.state, "stopped");
  });

  test(`[${via}] failures throw CommandExitError carrying the result, unless check is off`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    await assert.rejects(sb.commands.run(["exit", "3"]), (err: unknown) => {
      assert.ok(err instanceof CommandExitError);
      assert.equal(err.message, 'Command "exit 3" exited with code 3: exiting 3');
      const result = err.result as CommandResult;
      assert.equal(result.exitCode, 3);
      assert.equal(result.stderr, "exiting 3\n");
      return true;
    });
    const r = await sb.commands.run(["exit", "4"], { check: false });
    assert.equal(r.exitCode, 4);
    await assert.rejects(sb.commands.run(["timeout"]), (err: unknown) => err instanceof CommandExitError && /timed out/.test(err.message));
    await assert.rejects(sb.commands.run(["missing-tool"]), /exited with code 127: missing-tool: not found/);
  });

  test(`[${via}] output: callbacks get whole characters, caps truncate`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    const seen: string[] = [];
    const r = await sb.commands.run(["utf8split"], { onStdout: (s) => seen.push(s) });
    assert.deepEqual(seen, ["é"]);
    assert.equal(r.stdout, "é");
    const capped = await sb.commands.run(["flood", "100000"], { maxOutputBytes: 1000 });
    assert.equal(capped.stdout.length, 1000);
    assert.equal(capped.stdoutTruncated, true);
  });

  test(`[${via}] output: a callback's promise holds the stream until it settles`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let entered!: () => void;
    const firstCall = new Promise<void>((resolve) => (entered = resolve));
    let calls = 0;
    let chars = 0;
    let exited = false;
    const run = sb.commands.run(["flood", String(1024 * 1024)], {
      onStdout: async (s) => {
        calls += 1;
        chars += s.length;
        if (calls === 1) {
          entered();
          await held;
        }
      },
    });
    void run.then(() => (exited = true), () => (exited = true));
    await firstCall;
    // However long it is held, no second piece is handed over and the command does not end.
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(calls, 1);
    assert.equal(exited, false);
    release();
    const r = await run;
    assert.equal(r.stdout.length, 1024 * 1024);
    assert.equal(chars, 1024 * 1024);
    assert.ok(calls > 1);
  });

  test(`[${via}] stdin: inline, streamed when large, and interactive`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    assert.equal((await sb.commands.run(["cat"], { stdin: "to stdin" })).stdout, "to stdin");
    const big = "b".repeat(9 * 1024 * 1024);
    const r = await sb.commands.run(["cat"], { stdin: big, maxOutputBytes: 16 * 1024 * 1024 });
    assert.equal(r.stdout.length, big.length);

    const p = await sb.commands.start(["cat"], { openStdin: true });
    await p.sendStdin("hello ");
    await p.sendStdin(new TextEncoder().encode("world"));
    await p.closeStdin();
    assert.equal((await p.wait()).stdout, "hello world");
    const closed = await sb.commands.start(["sleep"]);
    await assert.rejects(closed.sendStdin("x"), InvalidArgumentError);
    await closed.kill();
  });

  test(`[${via}] start, iterate output, list and kill`, async (t) => {
    const { engine, fake } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    const flood = await sb.commands.start(["flood", String(300 * 1024)]);
    let streamed = "";
    for await (const chunk of flood.stdout) streamed += chunk;
    const done = await flood.wait();
    assert.equal(streamed.length, 300 * 1024);
    assert.equal(streamed, done.stdout);

    const p = await sb.commands.start(["sleep", "100"]);
    assert.deepEqual((await sb.commands.list()).map((x) => x.proc), [p.proc]);
    const killed = nextEvent<{ proc: number; signal: string }>(fake, "signal", (e) => e.proc === p.proc);
    assert.equal(await p.kill(), true);
    assert.equal((await killed).signal, "SIGKILL");
    await assert.rejects(p.wait(), (err: unknown) => err instanceof CommandExitError && /killed by SIGKILL/.test(err.message));
    assert.equal(await p.kill(), false);
    const soft = await sb.commands.start(["sleep"], { check: false });
    await soft.kill("SIGTERM");
    assert.equal((await soft.wait()).signal, "SIGTERM");
  });

  test(`[${via}] aborting a run kills the process; a throwing callback does too`, async (t) => {
    const { engine, fake } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    const controller = new AbortController();
    const started = nextEvent<{ request: { argv: string[] } }>(fake, "exec", (e) => e.request.argv[0] === "sleep");
    const killed = nextEvent<{ signal: string }>(fake, "signal");
    const run = sb.commands.run(["sleep"], { signal: controller.signal });
    await started;
    controller.abort();
    await assert.rejects(run, AbortedError);
    assert.equal((await killed).signal, "SIGKILL");

    const killedOnDeadline = nextEvent<{ signal: string }>(fake, "signal");
    await assert.rejects(sb.commands.run(["sleep"], { timeoutMs: 50 }), (err: unknown) => {
      assert.ok(err instanceof TimeoutError);
      assert.equal(err.message, 'Command "sleep" timed out after 50 ms');
      return true;
    });
    assert.equal((await killedOnDeadline).signal, "SIGKILL");

    const boom = new Error("callback failed");
    const killedAgain = nextEvent<{ signal: string }>(fake, "signal");
    await assert.rejects(
      sb.commands.run(["flood", String(4 * 1024 * 1024)], {
        onStdout: () => {
          throw boom;
        },
      }),
      (err: unknown) => err === boom,
    );
    await killedAgain;
  });

  test(`[${via}] files: formats, sources and management`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    const f = sb.files;
    assert.deepEqual(await f.write("/work/d/bin", new Uint8Array([1, 2, 3])), { path: "/work/d/bin", bytes: 3 });
    assert.deepEqual(await f.read("/work/d/bin", { format: "bytes" }), new Uint8Array([1, 2, 3]));
    async function* parts(): AsyncGenerator<Uint8Array> {
      yield new TextEncoder().encode("it");
      yield new TextEncoder().encode("erable");
    }
    await f.write("/work/d/iter.txt", parts());
    assert.equal(await f.read("/work/d/iter.txt"), "iterable");
    const web = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode("web "));
        c.enqueue(new TextEncoder().encode("stream"));
        c.close();
      },
    });
    await f.write("/work/d/web.txt", web);
    const stream = await f.read("/work/d/web.txt", { format: "stream" });
    const chunks: Uint8Array[] = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(Buffer.concat(chunks).toString(), "web stream");

    await assert.rejects(f.read("/work/d/web.txt", { maxBytes: 3 }), InvalidArgumentError);
    assert.equal(await f.exists("/work/d/web.txt"), true);
    assert.equal(await f.exists("/work/none"), false);
    assert.equal((await f.stat("/work/d/bin")).size, 3);
    await f.mkdir("/work/e/f");
    assert.equal((await f.stat("/work/e/f")).type, "dir");
    await f.rename("/work/d/bin", "/work/e/bin");
    assert.deepEqual((await f.list("/work/e")).entries.map((e) => e.name).sort(), ["bin", "f"]);
    await assert.rejects(f.remove("/work/e"), InvalidArgumentError);
    await f.remove("/work/e", { recursive: true });
    await assert.rejects(f.read("/work/e/bin"), NotFoundError);
  });

  test(`[${via}] kill is idempotent and info follows refresh`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    await sb.kill();
    assert.equal(sb.info.state, "stopped");
    await sb.kill();
    await sb[Symbol.asyncDispose]();
    assert.equal((await sb.refresh()).endReason, "killed");
    await assert.rejects(Sandbox.connect("sbx_aaaaaaaaaaaaaaaaaaaa", { engine }), NotFoundError);
  });
}

test("bad create options are refused before any engine is contacted", async () => {
  const engine = new FakeEngine();
  await assert.rejects(Sandbox.create({ engine, ttlSeconds: -1 }), (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError);
    assert.match(err.message, /"ttlSeconds"/);
    return true;
  });
  await assert.rejects(Sandbox.create({ engine, resources: { memoryMiB: 1 } }), /"resources\.memoryMiB"/);
  assert.equal(engine.sandboxes.size, 0);
});

test("without an engine, the statics share one connection per socket", async (t) => {
  const { socketPath, engine } = await startFakeDaemon(t);
  resetSharedEngines();
  t.after(() => resetSharedEngines());
  const progress: string[] = [];
  const sb = await Sandbox.create({ socketPath, onProgress: (e) => progress.push(e.phase) });
  assert.deepEqual(progress, ["resolve", "boot"]);
  assert.ok(engine.sandboxes.has(sb.id));
  const again = await Sandbox.connect(sb.id, { socketPath });
  assert.equal(again.engine, sb.engine);
  assert.deepEqual((await Sandbox.list({ socketPath })).map((s) => s.id), [sb.id]);
  await sb.kill();
});
