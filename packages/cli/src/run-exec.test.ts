import { test } from "node:test";
import assert from "node:assert/strict";
import { InternalError, TransportError, type CallOptions, type SandboxInfo } from "@mvm/protocol";
import { FakeEngine } from "./_test/fake-engine.js";
import { ScriptedStdin, TestIo, cli, closedStdin } from "./_test/test-io.js";
import { runCli } from "./cli.js";

const quiet = { MVM_ACK_CONTAINER_TIER: "1" };

test("run streams stdout and stderr, exits with the command's code, then kills the sandbox and closes the engine", async () => {
  const engine = new FakeEngine();
  engine.script = async (p) => {
    p.handlers.onStdout?.(Buffer.from("out1 "));
    p.handlers.onStderr?.(Buffer.from("err1 "));
    p.handlers.onStdout?.(Buffer.from([0xff, 0x00, 0x0a]));
    return { exitCode: 7 };
  };
  const r = await cli(["run", "--", "sh", "-c", "exit 7"], { engine, env: quiet });
  assert.equal(r.code, 7);
  assert.deepEqual(Buffer.concat(r.io.stdout.chunks), Buffer.concat([Buffer.from("out1 "), Buffer.from([0xff, 0x00, 0x0a])]));
  const id = [...engine.sandboxes.keys()][0];
  assert.equal(r.stderr, `sandbox ${id} on container (shared host kernel)\nerr1 `, "the engine's choice of tier, then the command's stderr");
  assert.deepEqual(engine.calls, ["createSandbox", "exec", `killSandbox ${id}`, "close"]);
  assert.equal(r.io.listenerCount(), 0);
  // Streamed output is kept nowhere, so the engine's cap is raised to the API's maximum.
  assert.equal(engine.processes[0]?.request.maxOutputBytes, 1024 * 1024 * 1024);
});

test("a stdout that is not read holds the command's output until it drains", async () => {
  const engine = new FakeEngine();
  const io = new TestIo({ engine, env: quiet });
  io.stdout.full = true;
  let first: unknown;
  let firstSettled = false;
  engine.script = async (p) => {
    first = p.handlers.onStdout?.(Buffer.from("a"));
    void (first as Promise<void>).then(() => (firstSettled = true));
    await new Promise((r) => setImmediate(r));
    // mvmctl took the chunk but its reader has not: the engine may hand over nothing more yet.
    assert.equal(firstSettled, false);
    io.stdout.drain();
    await first;
    assert.equal(p.handlers.onStdout?.(Buffer.from("b")), undefined, "a stream with room takes output at once");
    return { exitCode: 0 };
  };
  assert.equal(await runCli(["run", "--", "x"], io), 0);
  assert.ok(first instanceof Promise);
  assert.equal(io.stdout.text(), "ab");
});

test("run maps a signal death to 128+N and a timeout to 124", async () => {
  const engine = new FakeEngine();
  engine.script = async () => ({ exitCode: null, signal: "SIGKILL" });
  assert.equal((await cli(["run", "--", "x"], { engine, env: quiet })).code, 137);
  engine.script = async () => ({ exitCode: null, signal: "SIGKILL", timedOut: true });
  const timedOut = await cli(["run", "--timeout", "2", "--", "x"], { engine, env: quiet });
  assert.equal(timedOut.code, 124);
  assert.equal(engine.processes.at(-1)?.request.timeoutMs, 2000);
  assert.match(timedOut.stderr, /ran past --timeout/);
});

test("run reports output cut by the engine and memory kills on stderr", async () => {
  const engine = new FakeEngine();
  engine.script = async () => ({ exitCode: 0, stdoutTruncated: true, stdoutBytes: 2 * 1024 * 1024, oomKilled: true });
  const r = await cli(["run", "--", "x"], { engine, env: quiet });
  assert.equal(r.code, 0);
  assert.match(r.stderr, /^warning: stdout was cut after 2\.0 MiB by the engine's output cap$/m);
  assert.match(r.stderr, /^warning: the sandbox hit its memory limit/m);
});

test("run kills the sandbox when the command fails to start, and reports the first error", async () => {
  const engine = new FakeEngine();
  engine.exec = async () => {
    throw new TransportError("Agent went away", { hint: "Check the engine log" });
  };
  const r = await cli(["run", "--", "x"], { engine, env: quiet });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^sandbox sbx_[a-z2-7]{20} on container \(shared host kernel\)\nerror: Agent went away\nhint: Check the engine log\n$/);
  assert.ok(engine.calls.some((c) => c.startsWith("killSandbox")));
  assert.ok(engine.closed);
});

test("run fails with a cleanup error when the sandbox cannot be killed", async () => {
  const engine = new FakeEngine();
  engine.killError = new InternalError("backend stuck");
  const r = await cli(["run", "--", "x"], { engine, env: quiet });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^error: Cannot kill sandbox "sbx_[a-z2-7]{20}": backend stuck\nhint: Retry with "mvmctl kill sbx_/m);
  assert.ok(engine.closed);
});

test("when both the command and the cleanup fail, the command's error wins and the cleanup's is a warning", async () => {
  const engine = new FakeEngine();
  engine.killError = new InternalError("backend stuck");
  engine.exec = async () => {
    throw new TransportError("Agent went away");
  };
  const r = await cli(["run", "--", "x"], { engine, env: quiet });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^warning: cleanup also failed: Cannot kill sandbox/m);
  assert.match(r.stderr, /^error: Agent went away$/m);
});

test("stdin is forwarded when it is not a terminal, then closed", async () => {
  const engine = new FakeEngine();
  const stdin = new ScriptedStdin(false);
  engine.script = async (p) => {
    stdin.push("hello ");
    stdin.push(Buffer.alloc(100_000, 0x61));
    stdin.end();
    await p.stdinEnd();
    return { exitCode: 0 };
  };
  const r = await cli(["run", "--", "cat"], { engine, env: quiet, stdin });
  assert.equal(r.code, 0);
  const p = engine.processes[0];
  assert.equal(p?.request.openStdin, true);
  const received = Buffer.concat(p?.stdin ?? []);
  assert.equal(received.byteLength, 6 + 100_000);
  assert.equal(received.subarray(0, 6).toString(), "hello ");
  // Chunks stay within the 64 KiB write size.
  assert.ok((p?.stdin ?? []).every((c) => c.byteLength <= 64 * 1024));
});

test("stdin is not forwarded from a terminal", async () => {
  const engine = new FakeEngine();
  const r = await cli(["run", "--", "cat"], { engine, env: quiet, stdin: closedStdin(true) });
  assert.equal(r.code, 0);
  assert.equal(engine.processes[0]?.request.openStdin, undefined);
});

test("stdin that never ends is released when the command exits", async () => {
  const engine = new FakeEngine();
  const stdin = new ScriptedStdin(false);
  engine.script = async (p) => {
    stdin.push("partial");
    await p.nextEvent();
    return { exitCode: 0 };
  };
  const r = await cli(["run", "--", "head", "-c1"], { engine, env: quiet, stdin });
  assert.equal(r.code, 0);
  assert.ok(stdin.destroyed);
});

test("an interrupt is forwarded to the command; its death by that signal gives 128+N", async () => {
  const engine = new FakeEngine();
  const io = new TestIo({ engine, env: quiet, stdin: closedStdin(true) });
  engine.script = async (p) => {
    io.raise("SIGINT");
    const signal = await p.nextSignal();
    return { exitCode: null, signal };
  };
  const code = await runCli(["run", "--", "sleep", "100"], io);
  assert.equal(code, 130);
  assert.ok(engine.calls.includes("signalProcess SIGINT"));
  assert.ok(engine.calls.some((c) => c.startsWith("killSandbox")));
  assert.equal(io.listenerCount(), 0);
});

test("a second interrupt aborts the call, which kills the command; the sandbox is still killed", async () => {
  const engine = new FakeEngine();
  const io = new TestIo({ engine, env: quiet, stdin: closedStdin(true) });
  engine.script = async (p) => {
    io.raise("SIGTERM");
    await p.nextSignal();
    io.raise("SIGTERM");
    return new Promise(() => {});
  };
  const code = await runCli(["run", "--", "trap '' TERM; sleep 100"], io);
  assert.equal(code, 143);
  assert.match(io.stderr.text(), /SIGTERM: the command was killed/);
  assert.ok(engine.calls.some((c) => c.startsWith("killSandbox")));
  assert.ok(engine.closed);
});

test("stdout's reader going away (SIGPIPE) kills the command at once and exits 141", async () => {
  const engine = new FakeEngine();
  const io = new TestIo({ engine, env: quiet, stdin: closedStdin(true) });
  engine.script = async () => {
    io.raise("SIGPIPE");
    return new Promise(() => {});
  };
  const code = await runCli(["run", "--json", "--", "yes"], io);
  assert.equal(code, 141);
  assert.deepEqual(JSON.parse(io.stdout.text()), { error: { code: "ABORTED", message: "Interrupted by SIGPIPE: the command was killed" } });
  assert.ok(!engine.calls.some((c) => c.startsWith("signalProcess")));
  assert.ok(engine.calls.some((c) => c.startsWith("killSandbox")));
});

test("a third interrupt ends mvmctl at once", async () => {
  const engine = new FakeEngine();
  const io = new TestIo({ engine, env: quiet, stdin: closedStdin(true) });
  let thrown: unknown;
  engine.script = async (p) => {
    io.raise("SIGINT");
    await p.nextSignal();
    io.raise("SIGINT");
    try {
      io.raise("SIGINT");
    } catch (err) {
      thrown = err;
    }
    return { exitCode: 0 };
  };
  await runCli(["run", "--", "x"], io).catch(() => undefined);
  assert.match(String(thrown), /exitNow\(130\)/);
});

test("an interrupt while a command without its own handler runs aborts the engine call and exits 128+N", async () => {
  const engine = new FakeEngine();
  const io = new TestIo({ engine });
  engine.listSandboxes = (options?: CallOptions) =>
    new Promise<SandboxInfo[]>((_, reject) => {
      options?.signal?.addEventListener("abort", () => reject(options.signal?.reason));
      io.raise("SIGINT");
    });
  const code = await runCli(["ls"], io);
  assert.equal(code, 130);
  assert.match(io.stderr.text(), /^mvmctl: interrupted by SIGINT\n$/);
  assert.ok(engine.closed);
});

test("exec runs in an existing sandbox and does not kill it", async () => {
  const engine = new FakeEngine();
  const sb = engine.newSandbox();
  engine.script = async (p) => {
    p.handlers.onStdout?.(Buffer.from(p.request.argv.join(" ")));
    return { exitCode: 5 };
  };
  const r = await cli(["exec", "--env", "A=1", "--cwd", "/work", sb.id, "--", "echo", "x"], { engine, env: quiet });
  assert.equal(r.code, 5);
  assert.equal(r.stdout, "echo x");
  assert.deepEqual(engine.processes[0]?.request.env, { A: "1" });
  assert.equal(engine.processes[0]?.request.cwd, "/work");
  assert.deepEqual(engine.calls, ["getSandbox", "exec", "close"]);
});

test("exec on an unknown sandbox is a not-found error", async () => {
  const r = await cli(["exec", "sbx_zzzzzzzzzzzzzzzzzzzz", "--", "true"], { engine: new FakeEngine(), env: quiet });
  assert.equal(r.code, 1);
  assert.equal(r.stderr, 'error: Sandbox "sbx_zzzzzzzzzzzzzzzzzzzz" not found\n');
});

test("connection policy: run and doctor auto, sandbox commands need a daemon, flags override", async () => {
  const cases: { argv: string[]; request: unknown }[] = [
    { argv: ["doctor"], request: { mode: "auto" } },
    { argv: ["run", "--", "x"], request: { mode: "auto" } },
    { argv: ["run", "--embedded", "--", "x"], request: { mode: "embedded" } },
    { argv: ["--socket", "/s.sock", "run", "--", "x"], request: { mode: "daemon", socketPath: "/s.sock" } },
    { argv: ["ls"], request: { mode: "daemon" } },
    { argv: ["create"], request: { mode: "daemon" } },
    { argv: ["image", "ls", "--embedded"], request: { mode: "embedded" } },
  ];
  for (const c of cases) {
    const r = await cli(c.argv, { engine: new FakeEngine(), env: quiet });
    assert.deepEqual(r.io.connects, [c.request], c.argv.join(" "));
  }
});

test("sandbox commands refuse --embedded before connecting", async () => {
  for (const argv of [["create", "--embedded"], ["ls", "--embedded"], ["kill", "--embedded", "sbx_zzzzzzzzzzzzzzzzzzzz"]]) {
    const r = await cli(argv, { engine: new FakeEngine() });
    assert.equal(r.code, 2, argv.join(" "));
    assert.match(r.stderr, /works on sandboxes kept by a daemon/);
    assert.deepEqual(r.io.connects, []);
  }
});

test("a daemon that cannot be reached gets a hint to start one", async () => {
  const io = new TestIo();
  io.connect = async () => {
    throw new TransportError("Cannot connect to /run/mvm.sock");
  };
  const code = await runCli(["ls"], io);
  assert.equal(code, 1);
  assert.equal(io.stderr.text(), 'error: Cannot connect to /run/mvm.sock\nhint: Start a daemon with "mvmctl daemon" (or pass --socket PATH to the one running)\n');
});

test("daemon serves until SIGTERM, then stops and exits 0", async () => {
  const engine = new FakeEngine();
  let stopSeen = false;
  const io = new TestIo({
    serveDaemon: async (options) => {
      assert.equal(options.socketPath, "/tmp/x.sock");
      await options.onListening({ socketPath: "/tmp/x.sock", engine });
      io.raise("SIGTERM");
      assert.ok(options.signal.aborted);
      stopSeen = true;
    },
  });
  const code = await runCli(["daemon", "--socket", "/tmp/x.sock"], io);
  assert.equal(code, 0);
  assert.ok(stopSeen);
  assert.match(io.stderr.text(), /^mvmctl daemon: listening on \/tmp\/x\.sock \(default backend: namespace, tier container\)$/m);
  assert.match(io.stderr.text(), /^mvmctl daemon: SIGTERM: shutting down, killing sandboxes$/m);
  assert.equal(io.listenerCount(), 0);
});
