/**
 * AgentClient.quiesce and resumeAfterQuiesce: against a scripted fake agent for the host's own
 * rules (what it holds, what it treats as a violation), and against the real bundled agent for
 * the whole exchange, resume and start.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { Duplex, PassThrough } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import {
  AGENT_RESUME_LINE,
  AGENT_START_LINE,
  CONTROL_STREAM,
  DETACHED_PROC_BASE,
  FrameDecoder,
  FrameKind,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  TimeoutError,
  TransportError,
  encodeControl,
  encodeFrame,
  type ExitEvent,
} from "@mvm/protocol";
import { AgentClient } from "./client.js";

const T = { timeout: 60_000 };

// ---- a scripted fake agent that sees raw bytes ----

/** The agent's end of an in-memory channel: records every byte the host writes. */
class RawAgent {
  readonly bytes: Buffer[] = [];
  #waiters: (() => void)[] = [];
  constructor(readonly io: Duplex) {
    io.on("error", () => {});
    io.on("data", (c: Buffer) => {
      this.bytes.push(c);
      for (const w of this.#waiters.splice(0)) w();
    });
  }
  get all(): Buffer {
    return Buffer.concat(this.bytes);
  }
  control(msg: object): void {
    this.io.write(encodeFrame(FrameKind.Control, CONTROL_STREAM, encodeControl(msg)));
  }
  /** Resolves once the host has written at least `n` bytes in all. */
  async waitBytes(n: number): Promise<void> {
    while (this.all.length < n) await new Promise<void>((r) => this.#waiters.push(r));
  }
  /** The control messages in `bytes`, which must be whole frames. */
  static controls(bytes: Buffer): Record<string, unknown>[] {
    return new FrameDecoder().push(bytes).map((f) => JSON.parse(Buffer.from(f.payload).toString("utf8")) as Record<string, unknown>);
  }
}

function duplexPair(): [Duplex, Duplex] {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  return [Duplex.from({ readable: bToA, writable: aToB }), Duplex.from({ readable: aToB, writable: bToA })];
}

/** A client after the handshake, and the fake agent; `agent.all` starts empty. */
async function connected(): Promise<{ client: AgentClient; agent: RawAgent }> {
  const [host, guest] = duplexPair();
  const agent = new RawAgent(guest);
  agent.control({ t: "hello", versions: [1], agent: "fake/1" });
  const client = await AgentClient.connect(host, { helloTimeoutMs: 5000, label: "t" });
  await agent.waitBytes(1);
  agent.bytes.length = 0;
  return { client, agent };
}

/** The quiesce request the client wrote first: its id. */
async function quiesceRequestId(agent: RawAgent): Promise<number> {
  await agent.waitBytes(12);
  const [req] = RawAgent.controls(agent.all);
  assert.equal(req?.["op"], "quiesce");
  return req!["id"] as number;
}

describe("AgentClient.quiesce against a fake agent", () => {
  it("holds every frame from the request on, and sends the resume line before them", T, async () => {
    const { client, agent } = await connected();
    const quiet = client.quiesce(5000);
    const id = await quiesceRequestId(agent);
    const requestBytes = agent.all.length;
    const ping = client.request("ping", {});
    agent.control({ t: "res", id, ok: true, result: {} });
    await quiet;
    assert.equal(client.isQuiesced, true);
    // Nothing after the request: the ping is held.
    assert.equal(agent.all.length, requestBytes);

    await client.resumeAfterQuiesce();
    await agent.waitBytes(requestBytes + AGENT_RESUME_LINE.length + 12);
    const after = agent.all.subarray(requestBytes);
    assert.equal(after.subarray(0, AGENT_RESUME_LINE.length).toString("latin1"), AGENT_RESUME_LINE);
    const [held] = RawAgent.controls(after.subarray(AGENT_RESUME_LINE.length));
    assert.equal(held?.["op"], "ping");
    agent.control({ t: "res", id: held!["id"], ok: true, result: {} });
    assert.deepEqual(await ping, {});
    assert.equal(client.isQuiesced, false);
    client.destroy();
  });

  it("takes what the agent sent before its answer", T, async () => {
    const { client, agent } = await connected();
    const ping = client.request("ping", {});
    await agent.waitBytes(1);
    const [pingReq] = RawAgent.controls(agent.all);
    agent.bytes.length = 0;
    const quiet = client.quiesce(5000);
    const id = await quiesceRequestId(agent);
    agent.control({ t: "res", id: pingReq!["id"], ok: true, result: {} });
    agent.control({ t: "res", id, ok: true, result: {} });
    await quiet;
    assert.deepEqual(await ping, {});
    await client.resumeAfterQuiesce();
    client.destroy();
  });

  it("ends the session when the agent sends a frame after its answer", T, async () => {
    const { client, agent } = await connected();
    const quiet = client.quiesce(5000);
    const id = await quiesceRequestId(agent);
    const ping = client.request("ping", {});
    agent.control({ t: "res", id, ok: true, result: {} });
    await quiet;
    agent.control({ t: "exit", proc: 1, exitCode: 0, signal: null, timedOut: false, durationMs: 1, stdoutBytes: 0, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false });
    const err = await client.closed;
    assert.ok(err instanceof TransportError);
    assert.match(err.message, /sent \d+ bytes while quiesced/);
    await assert.rejects(ping, TransportError);
    await assert.rejects(client.resumeAfterQuiesce(), TransportError);
  });

  it("ends the session when a frame rides behind the answer in the same chunk", T, async () => {
    const { client, agent } = await connected();
    const quiet = client.quiesce(5000);
    const id = await quiesceRequestId(agent);
    const answer = encodeFrame(FrameKind.Control, CONTROL_STREAM, encodeControl({ t: "res", id, ok: true, result: {} }));
    const extra = encodeFrame(FrameKind.Control, CONTROL_STREAM, encodeControl({ t: "abort", stream: 1, error: { code: "ABORTED", message: "x" } }));
    agent.io.write(Buffer.concat([answer, extra.subarray(0, 3)]));
    await quiet.catch(() => {});
    const err = await client.closed;
    assert.match(err.message, /broke the protocol: Truncated frame/);
  });

  it("resumes by itself when the answer comes after the caller gave up", T, async () => {
    const { client, agent } = await connected();
    const quiet = client.quiesce(1);
    const id = await quiesceRequestId(agent);
    await assert.rejects(quiet, TimeoutError);
    assert.equal(client.isQuiesced, true);
    const ping = client.request("ping", {});
    const before = agent.all.length;
    agent.control({ t: "res", id, ok: true, result: {} });
    await agent.waitBytes(before + AGENT_RESUME_LINE.length + 12);
    const after = agent.all.subarray(before);
    assert.equal(after.subarray(0, AGENT_RESUME_LINE.length).toString("latin1"), AGENT_RESUME_LINE);
    const [held] = RawAgent.controls(after.subarray(AGENT_RESUME_LINE.length));
    agent.control({ t: "res", id: held!["id"], ok: true, result: {} });
    assert.deepEqual(await ping, {});
    assert.equal(client.isQuiesced, false);
    client.destroy();
  });

  it("carries on when the agent cannot quiesce, sending what it held without a line", T, async () => {
    const { client, agent } = await connected();
    const quiet = client.quiesce(5000);
    const id = await quiesceRequestId(agent);
    const requestBytes = agent.all.length;
    const ping = client.request("ping", {});
    agent.control({ t: "res", id, ok: false, error: { code: "INTERNAL", message: "no" } });
    await assert.rejects(quiet, InternalError);
    await agent.waitBytes(requestBytes + 12);
    const [held] = RawAgent.controls(agent.all.subarray(requestBytes));
    assert.equal(held?.["op"], "ping");
    agent.control({ t: "res", id: held!["id"], ok: true, result: {} });
    assert.deepEqual(await ping, {});
    assert.equal(client.isQuiesced, false);
    client.destroy();
  });

  it("refuses a second quiesce, and a resume that was not quiesced", T, async () => {
    const { client, agent } = await connected();
    await assert.rejects(client.resumeAfterQuiesce(), InvalidArgumentError);
    const quiet = client.quiesce(5000);
    await assert.rejects(client.quiesce(5000), InvalidArgumentError);
    // Not answered yet: there is nothing to resume.
    await assert.rejects(client.resumeAfterQuiesce(), InvalidArgumentError);
    const id = await quiesceRequestId(agent);
    agent.control({ t: "res", id, ok: true, result: {} });
    await quiet;
    await client.resumeAfterQuiesce();
    await assert.rejects(client.resumeAfterQuiesce(), InvalidArgumentError);
    client.destroy();
  });
});

// ---- the real agent ----

const AGENT_BUNDLE = createRequire(import.meta.url).resolve("@mvm/agent/agent.cjs");
const live = new Set<ChildProcess>();
after(() => {
  for (const child of live) child.kill("SIGKILL");
});

/**
 * The bundled agent on stdio, and a way to give its channel to one client at a time: a host
 * that is cut off no longer reads or writes, as if its VM had been copied away from it.
 */
function spawnAgent(): { child: ChildProcess; channel(): { io: Duplex; cut(): void } } {
  const child = spawn(process.execPath, [AGENT_BUNDLE, "--channel", "stdio"], { stdio: ["pipe", "pipe", "inherit"] });
  live.add(child);
  child.once("exit", () => live.delete(child));
  child.stdin!.on("error", () => {});
  let current: PassThrough | undefined;
  child.stdout!.on("data", (c: Buffer) => current?.write(c));
  return {
    child,
    channel() {
      const fromAgent = new PassThrough();
      const toAgent = new PassThrough();
      let open = true;
      toAgent.on("data", (c: Buffer) => {
        if (open) child.stdin!.write(c);
      });
      current = fromAgent;
      return {
        io: Duplex.from({ readable: fromAgent, writable: toAgent }),
        cut() {
          open = false;
          if (current === fromAgent) current = undefined;
        },
      };
    },
  };
}

/** Consecutive integers from 0, one a line (the last may be cut short by a kill). */
function countingLines(text: string): number {
  const lines = text.split("\n");
  lines.slice(0, -1).forEach((line, i) => assert.equal(line, String(i)));
  return lines.length - 1;
}

async function waitExit(pid: number): Promise<void> {
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await delay(20);
  }
}

describe("AgentClient.quiesce against the real agent", () => {
  it("pauses a streaming exec and, after the resume, its output and exit arrive in full", T, async () => {
    const agent = spawnAgent();
    const { io } = agent.channel();
    const client = await AgentClient.connect(io, { helloTimeoutMs: 10_000, label: "real" });
    const chunks: Buffer[] = [];
    let bytes = 0;
    let waiter: { at: number; resolve: () => void } | undefined;
    const onStdout = (c: Uint8Array): void => {
      chunks.push(Buffer.from(c));
      bytes += c.byteLength;
      if (waiter && bytes >= waiter.at) waiter.resolve();
    };
    const reach = (at: number): Promise<void> => (bytes >= at ? Promise.resolve() : new Promise((resolve) => (waiter = { at, resolve })));
    const proc = await client.exec(
      { argv: ["/bin/sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); done"], env: {}, cwd: "/", timeoutMs: 0, killGraceMs: 1000, maxOutputBytes: 64 * 1024 * 1024 },
      { openStdin: false, output: { onStdout, onStderr: () => {} } },
    );
    await reach(256 * 1024);
    await client.quiesce(10_000);
    // While quiet the client treats any byte from the agent as a violation, so a session that is
    // still open after the resume proves the agent sent nothing meanwhile.
    await client.resumeAfterQuiesce();
    await reach(bytes + 2 * 1024 * 1024);
    await client.request("signal", { proc: proc.proc, signal: "SIGKILL" });
    const exit: ExitEvent = await proc.exit;
    assert.equal(exit.signal, "SIGKILL");
    assert.equal(exit.stdoutBytes, bytes);
    assert.ok(countingLines(Buffer.concat(chunks).toString()) > 0);
    assert.equal(client.isClosed, false);
    client.destroy();
  });

  it("hands the agent to a new host after the start line; the old process runs on", T, async () => {
    const agent = spawnAgent();
    const first = agent.channel();
    const old = await AgentClient.connect(first.io, { helloTimeoutMs: 10_000, label: "old host" });
    const sleeper = await old.exec(
      { argv: ["/bin/sh", "-c", "while :; do head -c 65536 /dev/zero; done"], env: {}, cwd: "/", timeoutMs: 0, killGraceMs: 1000, maxOutputBytes: 1 << 30 },
      { openStdin: false, output: { onStdout: () => {}, onStderr: () => {} } },
    );
    await old.quiesce(10_000);
    first.cut();
    old.destroy();

    const second = agent.channel();
    second.io.write(AGENT_START_LINE);
    const fresh = await AgentClient.connect(second.io, { helloTimeoutMs: 10_000, label: "new host" });
    // Its own ids start at 1 again: the old handle means nothing here.
    await assert.rejects(fresh.request("signal", { proc: sleeper.proc, signal: "SIGKILL" }), NotFoundError);
    const { processes } = await fresh.request("listProcesses", {});
    const listed = processes.find((p) => p.pid === sleeper.pid);
    assert.ok(listed && listed.proc >= DETACHED_PROC_BASE, JSON.stringify(processes));
    const echo = await fresh.exec(
      { argv: ["/bin/echo", "hi"], env: {}, cwd: "/", timeoutMs: 0, killGraceMs: 1000, maxOutputBytes: 1024 },
      { openStdin: false, output: { onStdout: () => {}, onStderr: () => {} } },
    );
    assert.equal((await echo.exit).exitCode, 0);
    await fresh.request("signal", { proc: listed.proc, signal: "SIGKILL" });
    await waitExit(sleeper.pid);
    assert.deepEqual(await fresh.request("shutdown", {}), {});
    await new Promise((resolve) => agent.child.once("exit", resolve));
    assert.equal(agent.child.exitCode, 0);
    fresh.destroy();
  });
});

