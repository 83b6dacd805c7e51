import { test } from "node:test";
import assert from "node:assert/strict";
import { Duplex, PassThrough } from "node:stream";
import {
  CONTROL_STREAM,
  FrameDecoder,
  FrameKind,
  INITIAL_STREAM_WINDOW,
  MAX_CONTROL_PAYLOAD,
  TimeoutError,
  TransportError,
  NotFoundError,
  encodeControl,
  encodeCredit,
  encodeFrame,
  type Frame,
} from "@mvm/protocol";
import { AgentClient } from "./client.js";

/** Two connected in-memory duplexes: what one writes, the other reads. */
function duplexPair(): [Duplex, Duplex] {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  const a = Duplex.from({ readable: bToA, writable: aToB });
  const b = Duplex.from({ readable: aToB, writable: bToA });
  return [a, b];
}

/** A scripted fake agent: the hostile peer. Only for testing the host's session logic. */
class FakeAgent {
  readonly decoder = new FrameDecoder();
  readonly frames: Frame[] = [];
  #waiters: (() => void)[] = [];
  constructor(readonly io: Duplex) {
    io.on("error", () => {});
    io.on("data", (c: Buffer) => {
      for (const f of this.decoder.push(c)) this.frames.push(f);
      for (const w of this.#waiters.splice(0)) w();
    });
  }
  send(buf: Uint8Array): void {
    this.io.write(buf);
  }
  /** Sends `text` as a control frame verbatim (JSON.stringify cannot write a key twice). */
  sendText(text: string): void {
    this.send(encodeFrame(FrameKind.Control, CONTROL_STREAM, new TextEncoder().encode(text)));
  }
  control(msg: object): void {
    this.send(encodeFrame(FrameKind.Control, CONTROL_STREAM, encodeControl(msg)));
  }
  hello(): void {
    this.control({ t: "hello", versions: [1], agent: "fake/1" });
  }
  async nextControl(): Promise<Record<string, unknown>> {
    for (;;) {
      const i = this.frames.findIndex((f) => f.kind === FrameKind.Control);
      if (i >= 0) {
        const [f] = this.frames.splice(i, 1);
        return JSON.parse(new TextDecoder().decode(f!.payload)) as Record<string, unknown>;
      }
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }
}

async function connected(): Promise<{ client: AgentClient; agent: FakeAgent }> {
  const [host, guest] = duplexPair();
  const agent = new FakeAgent(guest);
  agent.hello();
  const client = await AgentClient.connect(host, { helloTimeoutMs: 5000, label: "t" });
  assert.deepEqual(await agent.nextControl(), { t: "hello", version: 1 });
  return { client, agent };
}

test("handshake succeeds and a request gets its typed result", async () => {
  const { client, agent } = await connected();
  const p = client.request("ping", {});
  const req = await agent.nextControl();
  assert.equal(req["op"], "ping");
  agent.control({ t: "res", id: req["id"], ok: true, result: {} });
  assert.deepEqual(await p, {});
  client.destroy();
});

test("an agent error response becomes the typed error", async () => {
  const { client, agent } = await connected();
  const p = client.request("stat", { path: "/nope" });
  const req = await agent.nextControl();
  agent.control({ t: "res", id: req["id"], ok: false, error: { code: "NOT_FOUND", message: "no such file" } });
  await assert.rejects(p, NotFoundError);
  client.destroy();
});

test("no hello in time is a TimeoutError", async () => {
  const [host, guest] = duplexPair();
  guest.on("error", () => {});
  await assert.rejects(AgentClient.connect(host, { helloTimeoutMs: 50, label: "t" }), TimeoutError);
});

test("an unsupported protocol version is refused", async () => {
  const [host, guest] = duplexPair();
  const agent = new FakeAgent(guest);
  agent.control({ t: "hello", versions: [7], agent: "fake/1" });
  await assert.rejects(AgentClient.connect(host, { helloTimeoutMs: 5000, label: "t" }), TransportError);
});

const violations: [string, (agent: FakeAgent, reqId: unknown) => void][] = [
  ["an oversized control frame", (a) => {
    const h = Buffer.alloc(12);
    h.writeUInt8(1, 0);
    h.writeUInt8(FrameKind.Control, 1);
    h.writeUInt32BE(0, 4);
    h.writeUInt32BE(MAX_CONTROL_PAYLOAD + 1, 8);
    a.send(h);
  }],
  ["a frame of unknown kind", (a) => a.send(Buffer.from([1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))],
  ["invalid JSON", (a) => a.send(encodeFrame(FrameKind.Control, 0, Buffer.from("{not json")))],
  ["an unknown field", (a, id) => a.control({ t: "res", id, ok: true, result: {}, extra: 1 })],
  ["a result of the wrong shape", (a, id) => a.control({ t: "res", id, ok: true, result: { surprise: true } })],
  ["a response to an unknown request", (a) => a.control({ t: "res", id: 999999, ok: true, result: {} })],
  ["an exit for an unknown process", (a) =>
    a.control({ t: "exit", proc: 4242, exitCode: 0, signal: null, timedOut: false, durationMs: 1, stdoutBytes: 0, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false })],
  ["a second hello", (a) => a.hello()],
  // Under JSON.parse the last key would win: a valid answer to the pending ping.
  ["a key twice in a control message", (a, id) => a.sendText(`{"t":"res","id":999999,"ok":true,"result":{},"id":${String(id)}}`)],
  ["truncated frame then end of stream", (a) => {
    a.send(Buffer.from([1, 1, 0, 0]));
    a.io.end();
  }],
];

for (const [name, misbehave] of violations) {
  test(`${name} ends the session with a TransportError`, async () => {
    const { client, agent } = await connected();
    const p = client.request("ping", {});
    const req = await agent.nextControl();
    misbehave(agent, req["id"]);
    await assert.rejects(p, TransportError);
    assert.ok((await client.closed) instanceof TransportError);
    assert.ok(client.isClosed);
  });
}

test("a key written twice, at any depth or in the hello, ends the session with a TransportError naming it", async () => {
  // Each would be a valid message, and the last key would win, under JSON.parse.
  const { client, agent } = await connected();
  const stat = client.request("stat", { path: "/f" });
  const req = await agent.nextControl();
  agent.sendText(`{"t":"res","id":${String(req["id"])},"ok":true,"result":{"name":"f","type":"file","size":1,"mode":420,"mtimeMs":0,"size":2}}`);
  await assert.rejects(stat, TransportError);
  const closed = await client.closed;
  assert.ok(closed instanceof TransportError);
  assert.match(closed.message, /broke the protocol: Bad control message: duplicate key "size"/);

  const [host, guest] = duplexPair();
  new FakeAgent(guest).sendText('{"t":"hello","versions":[2],"versions":[1],"agent":"fake/1"}');
  await assert.rejects(AgentClient.connect(host, { helloTimeoutMs: 5000, label: "t" }), (err: unknown) => {
    return err instanceof TransportError && /duplicate key "versions"/.test(err.message);
  });
});

test("exec output beyond the agreed cap is a violation, not a buffer", async () => {
  const { client, agent } = await connected();
  const chunks: Uint8Array[] = [];
  const started = client.exec(
    { argv: ["x"], env: {}, cwd: "/work", timeoutMs: 0, killGraceMs: 0, maxOutputBytes: 10 },
    { openStdin: false, output: { onStdout: (c) => chunks.push(c), onStderr: () => {} } },
  );
  const req = await agent.nextControl();
  agent.control({ t: "res", id: req["id"], ok: true, result: { pid: 5 } });
  const proc = await started;
  agent.send(encodeFrame(FrameKind.Data, req["stdout"] as number, Buffer.alloc(11)));
  await assert.rejects(proc.exit, TransportError);
  assert.equal(chunks.length, 0);
});

test("data beyond the credit window is a violation", async () => {
  const { client, agent } = await connected();
  const reading = client.readFile("/big");
  const req = await agent.nextControl();
  agent.control({ t: "res", id: req["id"], ok: true, result: { size: 10 * INITIAL_STREAM_WINDOW } });
  const { body } = await reading;
  const chunk = Buffer.alloc(256 * 1024);
  // The host has not consumed anything, so only one window may arrive.
  for (let sent = 0; sent <= INITIAL_STREAM_WINDOW; sent += chunk.length) agent.send(encodeFrame(FrameKind.Data, req["stream"] as number, chunk));
  await assert.rejects(async () => {
    for await (const _ of body) {
      await new Promise((r) => setTimeout(r, 5));
    }
  }, TransportError);
});

test("a file body longer than announced is refused", async () => {
  const { client, agent } = await connected();
  const reading = client.readFile("/f");
  const req = await agent.nextControl();
  agent.control({ t: "res", id: req["id"], ok: true, result: { size: 3 } });
  const { body } = await reading;
  agent.send(encodeFrame(FrameKind.Data, req["stream"] as number, Buffer.from("abcd")));
  agent.send(encodeFrame(FrameKind.End, req["stream"] as number));
  await assert.rejects(async () => {
    for await (const _ of body);
  }, TransportError);
  client.destroy();
});

test("writeFile waits for credit and never sends past the window", async () => {
  const { client, agent } = await connected();
  const total = 3 * INITIAL_STREAM_WINDOW;
  async function* data() {
    for (let i = 0; i < total / 65536; i++) yield Buffer.alloc(65536, i & 0xff);
  }
  const done = client.writeFile("/work/f", data(), { mode: 0o644, createParents: true });
  const req = await agent.nextControl();
  const stream = req["stream"] as number;
  const sum = () => agent.frames.filter((f) => f.kind === FrameKind.Data && f.stream === stream).reduce((n, f) => n + f.payload.byteLength, 0);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(sum(), INITIAL_STREAM_WINDOW);
  agent.send(encodeCredit(stream, total - INITIAL_STREAM_WINDOW));
  while (!agent.frames.some((f) => f.kind === FrameKind.End && f.stream === stream)) await new Promise((r) => setTimeout(r, 10));
  assert.equal(sum(), total);
  agent.control({ t: "res", id: req["id"], ok: true, result: { bytes: total } });
  assert.equal(await done, total);
  client.destroy();
});

test("exec output credit goes back only once the handler's promise settles, and the exit waits for it", async () => {
  const { client, agent } = await connected();
  const chunk = Buffer.alloc(64 * 1024, 1);
  const releases: (() => void)[] = [];
  let calls = 0;
  const started = client.exec(
    { argv: ["x"], env: {}, cwd: "/work", timeoutMs: 0, killGraceMs: 0, maxOutputBytes: 1 << 30 },
    {
      openStdin: false,
      output: {
        onStdout: () => {
          calls += 1;
          return new Promise<void>((resolve) => releases.push(resolve));
        },
        onStderr: () => {},
      },
    },
  );
  const req = await agent.nextControl();
  const stdout = req["stdout"] as number;
  agent.control({ t: "res", id: req["id"], ok: true, result: { pid: 5 } });
  const proc = await started;
  let exited = false;
  void proc.exit.then(() => (exited = true));
  const credited = () => agent.frames.filter((f) => f.kind === FrameKind.Credit && f.stream === stdout).length;
  /** A ping both ways: frames the host wrote before it answered have reached the agent. */
  const roundTrip = async (): Promise<void> => {
    const p = client.request("ping", {});
    const ping = await agent.nextControl();
    agent.control({ t: "res", id: ping["id"], ok: true, result: {} });
    await p;
    const again = client.request("ping", {});
    const ping2 = await agent.nextControl();
    agent.control({ t: "res", id: ping2["id"], ok: true, result: {} });
    await again;
  };

  agent.send(encodeFrame(FrameKind.Data, stdout, chunk));
  agent.send(encodeFrame(FrameKind.Data, stdout, chunk));
  await roundTrip();
  // One chunk handed over and held: the second waits, and no credit went back.
  assert.equal(calls, 1);
  assert.equal(credited(), 0);

  releases[0]!();
  await roundTrip();
  assert.equal(calls, 2);
  assert.equal(credited(), 1);

  // The process ends while the second chunk is still held: the exit waits for the consumer.
  agent.send(encodeFrame(FrameKind.End, stdout));
  agent.send(encodeFrame(FrameKind.End, req["stderr"] as number));
  agent.control({
    t: "exit", proc: proc.proc, exitCode: 0, signal: null, timedOut: false, durationMs: 1,
    stdoutBytes: 2 * chunk.length, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false,
  });
  await roundTrip();
  assert.equal(exited, false);
  releases[1]!();
  assert.equal((await proc.exit).stdoutBytes, 2 * chunk.length);
  client.destroy();
});
