/**
 * QmpClient against a real QEMU (a paused microvm with no guest) and against a scripted peer
 * over an in-process duplex pair for hostile input.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { type Duplex, duplexPair } from "node:stream";
import { after, before, describe, it } from "node:test";
import { AbortedError, InternalError, TimeoutError, TransportError } from "@mvm/protocol";
import fc from "fast-check";
import { QMP_MAX_DEPTH, QmpClient, QmpCommandError } from "./qmp.js";

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: "test" }, capabilities: ["oob"] } };
const T = { timeoutMs: 20_000 };

/** A scripted QMP peer: the test reads the client's commands and writes whatever it likes. */
class FakePeer {
  readonly client: Duplex;
  readonly peer: Duplex;
  private buffered = "";
  private waiters: ((line: string) => void)[] = [];
  private lines: string[] = [];

  constructor() {
    [this.client, this.peer] = duplexPair();
    this.peer.setEncoding("utf8");
    this.peer.on("data", (text: string) => {
      this.buffered += text;
      for (let end = this.buffered.indexOf("\n"); end >= 0; end = this.buffered.indexOf("\n")) {
        const line = this.buffered.slice(0, end);
        this.buffered = this.buffered.slice(end + 1);
        const waiter = this.waiters.shift();
        if (waiter) waiter(line);
        else this.lines.push(line);
      }
    });
  }

  /** The next command the client sent. */
  async command(): Promise<{ execute: string; id: string; arguments?: unknown }> {
    const line = this.lines.shift() ?? (await new Promise<string>((resolve) => this.waiters.push(resolve)));
    return JSON.parse(line) as { execute: string; id: string };
  }

  send(value: unknown): void {
    this.peer.write(`${typeof value === "string" ? value : JSON.stringify(value)}\r\n`);
  }

  /** Greets and acknowledges qmp_capabilities; resolves with the connected client. */
  async connect(options: { maxLineBytes?: number } = {}): Promise<QmpClient> {
    this.send(GREETING);
    const connecting = QmpClient.connect(this.client, { ...T, ...options, label: "fake" });
    const caps = await this.command();
    assert.equal(caps.execute, "qmp_capabilities");
    this.send({ return: {}, id: caps.id });
    return connecting;
  }
}

/** Every plain object in `value` that has a key, at any depth. */
function objectsWithKeys(value: unknown): Record<string, unknown>[] {
  if (typeof value !== "object" || value === null) return [];
  const nested = Object.values(value).flatMap(objectsWithKeys);
  return Array.isArray(value) || Object.keys(value).length === 0 ? nested : [value as Record<string, unknown>, ...nested];
}

/**
 * `message` (which has a key) as one JSON line in which one object, picked by index, holds one of
 * its keys twice: last, with `other` or (when undefined) the key's own value.
 */
function withRepeatedKey(message: object, pickObject: number, pickKey: number, other: unknown): { text: string; key: string } {
  const objects = objectsWithKeys(JSON.parse(JSON.stringify(message)));
  const target = objects[pickObject % objects.length]!;
  const keys = Object.keys(target);
  const key = keys[pickKey % keys.length]!;
  const mark = "\u0000dup\u0000";
  Object.defineProperty(target, mark, { value: other === undefined ? target[key] : other, enumerable: true });
  const text = JSON.stringify(objects[0]);
  assert.equal(text.split(JSON.stringify(mark)).length, 2);
  return { text: text.replace(JSON.stringify(mark), () => JSON.stringify(key)), key };
}

describe("QmpClient with QEMU", { timeout: 60_000 }, () => {
  it("greets, runs commands in order, reports QEMU errors and events, and closes", async () => {
    const child = spawn(
      "qemu-system-x86_64",
      ["-M", "microvm,x-option-roms=off", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-m", "128",
        "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"],
      { stdio: ["ignore", "ignore", "pipe", "pipe"] },
    );
    const exited = once(child, "exit");
    try {
      const qmp = await QmpClient.connect(child.stdio[3] as Duplex, { timeoutMs: 20_000, label: "qemu" });
      assert.equal(qmp.greeting.version.qemu.major >= 7, true);
      assert.deepEqual(await qmp.execute("query-status", undefined, T), { status: "prelaunch", singlestep: false, running: false });

      const unknown = await qmp.execute("no-such-command", undefined, T).then(() => undefined, (err: unknown) => err);
      assert.ok(unknown instanceof QmpCommandError);
      assert.ok(unknown instanceof InternalError);
      assert.equal(unknown.errorClass, "CommandNotFound");
      assert.equal(unknown.command, "no-such-command");
      assert.match(unknown.desc, /no-such-command/);

      // Several commands at once are queued and each gets its own reply.
      const resumed = qmp.waitForEvent("RESUME", T);
      const [name, cont, status] = await Promise.all([
        qmp.execute("query-name", undefined, T),
        qmp.execute("cont", undefined, T),
        qmp.execute("query-status", undefined, T),
      ]);
      assert.deepEqual([name, cont], [{}, {}]);
      assert.equal((status as { running: boolean }).running, true);
      assert.equal((await resumed).event, "RESUME");

      qmp.close();
      await qmp.closed;
      await assert.rejects(qmp.execute("query-status", undefined, T), TransportError);
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
  });

  it("fails pending commands with TransportError when QEMU dies", async () => {
    const child = spawn(
      "qemu-system-x86_64",
      ["-M", "microvm,x-option-roms=off", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-m", "128",
        "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"],
      { stdio: ["ignore", "ignore", "pipe", "pipe"] },
    );
    const exited = once(child, "exit");
    try {
      const qmp = await QmpClient.connect(child.stdio[3] as Duplex, { timeoutMs: 20_000 });
      const waiting = qmp.waitForEvent("NEVER_SENT", T);
      await qmp.execute("quit", undefined, T);
      await assert.rejects(waiting, TransportError);
      await qmp.closed;
      await assert.rejects(qmp.execute("query-status", undefined, T), TransportError);
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
  });
});

describe("QmpClient with a hostile peer", () => {
  // An in-process duplex pair holds no handle, and AbortSignal.timeout's timer is unref'd.
  let keepAlive: NodeJS.Timeout;
  before(() => (keepAlive = setInterval(() => undefined, 60_000)));
  after(() => clearInterval(keepAlive));

  it("delivers events and returns", async () => {
    const fake = new FakePeer();
    const qmp = await fake.connect();
    const seen: string[] = [];
    const off = qmp.onEvent((event) => seen.push(event.event));
    const stopped = qmp.waitForEvent("STOP", { ...T, predicate: (event) => event.data?.["reason"] === "x" });
    fake.send({ event: "STOP", data: { reason: "y" }, timestamp: { seconds: 1, microseconds: 2 } });
    fake.send({ event: "STOP", data: { reason: "x" }, timestamp: { seconds: 1, microseconds: 3 } });
    assert.deepEqual((await stopped).timestamp, { seconds: 1, microseconds: 3 });
    off();
    const reply = qmp.execute("query-x", { a: 1 }, T);
    const cmd = await fake.command();
    assert.deepEqual(cmd, { execute: "query-x", arguments: { a: 1 }, id: cmd.id });
    fake.send({ return: [1, 2], id: cmd.id });
    assert.deepEqual(await reply, [1, 2]);
    assert.deepEqual(seen, ["STOP", "STOP"]);
    qmp.close();
  });

  it("rejects a line over the limit without buffering it", async () => {
    const fake = new FakePeer();
    const qmp = await fake.connect({ maxLineBytes: 1024 });
    const reply = qmp.execute("query-status", undefined, T);
    await fake.command();
    fake.peer.write(`{"return": "${"a".repeat(700)}`);
    fake.peer.write("b".repeat(700));
    await assert.rejects(reply, (err: unknown) => err instanceof TransportError && /over 1024 bytes/.test(err.message));
    await qmp.closed;
  });

  for (const [label, line] of [
    ["bad JSON", "{not json"],
    ["invalid UTF-8", Buffer.from([0x22, 0xff, 0x22])],
    ["an unknown field", { return: {}, id: "ID", extra: 1 }],
    ["an error without desc", { error: { class: "GenericError" }, id: "ID" }],
    ["a bare value", 42],
    ["a reply to another id", { return: {}, id: "mvm-999" }],
    ["a malformed event", { event: "lower case", timestamp: { seconds: 1, microseconds: 1 } }],
    // Under JSON.parse the last key would win and each of these would be a valid reply.
    ["a key twice", '{"return":{"status":"running"},"return":{"status":"paused"},"id":"ID"}'],
    ["a key twice deep in a return value", '{"return":[{"a":{"b":1,"c":[],"b":2}}],"id":"ID"}'],
    ["an id twice", '{"return":{},"id":"mvm-999","id":"ID"}'],
    ["a __proto__ key", '{"return":{"__proto__":{"polluted":true}},"id":"ID"}'],
    ["nesting past the bound", `{"return":${"[".repeat(QMP_MAX_DEPTH)}${"]".repeat(QMP_MAX_DEPTH)},"id":"ID"}`],
  ] as const) {
    it(`fails with TransportError on ${label}`, async () => {
      const fake = new FakePeer();
      const qmp = await fake.connect();
      const reply = qmp.execute("query-status", undefined, T);
      const cmd = await fake.command();
      if (Buffer.isBuffer(line)) fake.peer.write(Buffer.concat([line, Buffer.from("\n")]));
      else fake.send((typeof line === "string" ? line : JSON.stringify(line)).replace('"ID"', JSON.stringify(cmd.id)));
      await assert.rejects(reply, TransportError);
      await qmp.closed;
      await assert.rejects(qmp.execute("query-status", undefined, T), TransportError);
    });
  }

  it("fails with a TransportError naming the key when any reply or event holds a key twice", async () => {
    const reply = (value: unknown, id: string) => ({ return: value, id });
    const event = (value: unknown) => ({ event: "X", data: { value }, timestamp: { seconds: 1, microseconds: 2 } });
    await fc.assert(
      fc.asyncProperty(fc.jsonValue({ maxDepth: 3 }), fc.boolean(), fc.nat(), fc.nat(), fc.option(fc.jsonValue({ maxDepth: 1 }), { nil: undefined }), async (value, asEvent, pickObject, pickKey, other) => {
        const fake = new FakePeer();
        const qmp = await fake.connect();
        const pending = qmp.execute("query-x", undefined, T);
        const cmd = await fake.command();
        // A reply's keys and the event's own keys are candidates, as well as any key inside the value.
        const edited = withRepeatedKey(asEvent ? event(value) : reply(value, cmd.id), pickObject, pickKey, other);
        fake.send(edited.text);
        const err = await pending.then(() => undefined, (e: unknown) => e);
        assert.ok(err instanceof TransportError, `accepted ${edited.text}`);
        // A "__proto__" key (which fc.jsonValue may make) is refused for that reason if it comes first.
        if (edited.text.includes('"__proto__":')) assert.match(err.message, /not strict JSON: (duplicate key |key "__proto__")/);
        else assert.ok(err.message.includes(`not strict JSON: duplicate key ${JSON.stringify(edited.key).slice(0, 60)}`), err.message);
        await qmp.closed;
      }),
      { numRuns: 100 },
    );
  });

  it("refuses a peer that sends no greeting", async () => {
    const fake = new FakePeer();
    fake.send({ return: {} });
    await assert.rejects(QmpClient.connect(fake.client, T), TransportError);
  });

  it("times out a silent peer and a command without reply", async () => {
    const silent = new FakePeer();
    await assert.rejects(QmpClient.connect(silent.client, { timeoutMs: 50 }), TimeoutError);

    const fake = new FakePeer();
    const qmp = await fake.connect();
    const slow = qmp.execute("slow", undefined, { timeoutMs: 50 });
    const queued = qmp.execute("next", undefined, T);
    const first = await fake.command();
    await assert.rejects(slow, TimeoutError);
    // The late reply is consumed; the queued command goes out only after it.
    fake.send({ return: "late", id: first.id });
    const second = await fake.command();
    assert.equal(second.execute, "next");
    fake.send({ return: "ok", id: second.id });
    assert.equal(await queued, "ok");

    const controller = new AbortController();
    const aborted = qmp.execute("other", undefined, { timeoutMs: 20_000, signal: controller.signal });
    controller.abort();
    await assert.rejects(aborted, AbortedError);
    qmp.close();
  });

  it("fails commands in flight and queued when the peer hangs up", async () => {
    const fake = new FakePeer();
    const qmp = await fake.connect();
    const replies = [qmp.execute("a", undefined, T), qmp.execute("b", undefined, T)];
    await fake.command();
    fake.peer.end();
    for (const reply of replies) await assert.rejects(reply, TransportError);
    await qmp.closed;
  });

  it("parses replies however the bytes are split", async () => {
    // Without "__proto__" keys (fc.jsonValue makes one now and then), which are refused.
    const values = fc.jsonValue({ maxDepth: 3 }).filter((v) => !JSON.stringify(v).includes('"__proto__":'));
    await fc.assert(
      fc.asyncProperty(values, fc.array(fc.nat(), { maxLength: 8 }), async (value, cuts) => {
        const fake = new FakePeer();
        const qmp = await fake.connect();
        const reply = qmp.execute("echo", undefined, T);
        const cmd = await fake.command();
        const bytes = Buffer.from(`${JSON.stringify({ return: value, id: cmd.id })}\r\n`);
        const points = [...new Set(cuts.map((c) => c % bytes.length))].sort((a, b) => a - b);
        let from = 0;
        for (const at of [...points, bytes.length]) {
          if (at > from) fake.peer.write(bytes.subarray(from, at));
          from = at;
        }
        assert.deepEqual(await reply, JSON.parse(JSON.stringify(value)));
        qmp.close();
      }),
      { numRuns: 100 },
    );
  });
});
