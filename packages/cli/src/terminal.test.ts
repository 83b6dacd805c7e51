/**
 * `exec -it` / `run -it` and ps/attach/pkill against the fake engine, with a fake terminal:
 * what is asked of the engine, raw mode entered and always restored, resizes, exit codes.
 * (The real terminal is tested in terminal.e2e.test.ts with tmux.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { InternalError } from "@mvm/protocol";
import { FakeEngine } from "./_test/fake-engine.js";
import { ScriptedStdin, TestIo, type TestIoOptions } from "./_test/test-io.js";
import { runCli } from "./cli.js";
import type { TerminalIo } from "./io.js";

const quiet = { MVM_ACK_CONTAINER_TIER: "1" };
const ID = "sbx_abcdefghijklmnopqrst";

class FakeTerminal implements TerminalIo {
  cols = 100;
  rows = 30;
  raw = 0;
  restored = 0;
  readonly #resize = new Set<() => void>();
  size() {
    return { cols: this.cols, rows: this.rows };
  }
  enterRaw() {
    this.raw += 1;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.restored += 1;
    };
  }
  onResize(handler: () => void) {
    this.#resize.add(handler);
    return () => void this.#resize.delete(handler);
  }
  resizeTo(cols: number, rows: number): void {
    this.cols = cols;
    this.rows = rows;
    for (const h of this.#resize) h();
  }
  get listeners(): number {
    return this.#resize.size;
  }
}

class TerminalTestIo extends TestIo {
  constructor(
    options: TestIoOptions,
    readonly terminal: FakeTerminal,
  ) {
    super(options);
  }
}

async function run(argv: string[], engine: FakeEngine, terminal: FakeTerminal, stdin = new ScriptedStdin(true)) {
  const io = new TerminalTestIo({ engine, env: quiet, stdin }, terminal);
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout.text(), stderr: io.stderr.text(), io };
}

test("run -it: the terminal's size, raw keys in, resizes, the exit code out; raw mode restored", async () => {
  const engine = new FakeEngine();
  const terminal = new FakeTerminal();
  const stdin = new ScriptedStdin(true);
  engine.script = async (p) => {
    assert.deepEqual(p.request.pty, { cols: 100, rows: 30 });
    assert.equal(p.request.openStdin, true);
    assert.equal(terminal.raw, 1, "raw mode while the command runs");
    p.handlers.onStdout?.(Buffer.from("$ "));
    stdin.push("exit 3\r");
    while (!Buffer.concat(p.stdin).toString().includes("\r")) await p.nextEvent();
    terminal.resizeTo(120, 40);
    terminal.resizeTo(120, 40);
    await new Promise((resolve) => setImmediate(resolve));
    return { exitCode: 3 };
  };
  const r = await run(["run", "-it", "--", "sh"], engine, terminal, stdin);
  assert.equal(r.code, 3);
  assert.equal(r.stdout, "$ ");
  assert.equal(terminal.restored, 1);
  assert.equal(terminal.listeners, 0);
  assert.equal(stdin.destroyed, true);
  // One resize for one change of size, and stdin never closed (a terminal has no end of input).
  assert.deepEqual(engine.calls.filter((c) => c.startsWith("resizePty")), ["resizePty 120x40"]);
  assert.equal(engine.processes[0]?.stdinClosed, false);
});

test("exec -it: raw mode is restored when the command fails to start", async () => {
  const engine = new FakeEngine();
  const terminal = new FakeTerminal();
  engine.sandboxes.set(ID, { ...(await engine.createSandbox({})), id: ID });
  engine.script = async () => {
    throw new InternalError("the agent went away");
  };
  const r = await run(["exec", "-it", ID, "--", "sh"], engine, terminal);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /the agent went away/);
  assert.equal(terminal.raw, 1);
  assert.equal(terminal.restored, 1);
});

test("-it needs a terminal on stdin; -t does not combine with --json", async () => {
  const engine = new FakeEngine();
  const piped = await run(["run", "-it", "--", "sh"], engine, new FakeTerminal(), new ScriptedStdin(false));
  assert.equal(piped.code, 2);
  assert.match(piped.stderr, /^error: -it needs a terminal on stdin/);
  const json = await run(["--json", "run", "-t", "--", "sh"], engine, new FakeTerminal());
  assert.equal(json.code, 2);
  assert.match(json.stderr, /--tty cannot be combined with --json/);
  assert.deepEqual(engine.calls, []);
});

test("ps lists, attach prints the backlog and live output and exits with the code, pkill signals by pid", async () => {
  const engine = new FakeEngine();
  engine.listed = [{ proc: 5, pid: 42, argv: ["sleep", "100"], startedAtMs: Date.UTC(2026, 0, 1) }];
  engine.attachScript = async (handlers) => {
    await handlers.onStdout?.(Buffer.from("earlier\n"));
    await handlers.onStderr?.(Buffer.from("live\n"));
    return { exitCode: 4 };
  };
  const terminal = new FakeTerminal();
  const ps = await run(["ps", ID], engine, terminal);
  assert.equal(ps.code, 0);
  assert.match(ps.stdout, /^PID\s+STARTED\s+COMMAND\n42\s+2026-01-01T00:00:00.000Z\s+sleep 100\n$/);
  const attach = await run(["attach", ID, "42"], engine, terminal);
  assert.equal(attach.code, 4);
  assert.equal(attach.stdout, "earlier\n");
  assert.equal(attach.stderr, "live\n");
  assert.ok(engine.calls.includes("connectProcess 5"));
  const kill = await run(["pkill", "--signal", "SIGTERM", ID, "42"], engine, terminal);
  assert.equal(kill.code, 0);
  assert.ok(engine.calls.includes("signalProcess SIGTERM"));
  const missing = await run(["attach", ID, "43"], engine, terminal);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /No running process with pid 43/);
  assert.equal(terminal.raw, 0, "attach does not touch the terminal's mode");
});
