import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import {
  AgentHello,
  FrameDecoder,
  FrameKind,
  INITIAL_STREAM_WINDOW,
  encodeCredit,
  encodeFrame,
  parseControl,
} from "@mvm/protocol";
import { AgentDriver } from "./_test/driver.js";
import { isAlive, waitDead } from "./_test/util.js";
import { AGENT_NAME, helloFrame } from "./hello.js";

after(() => AgentDriver.killAll());

const T = { timeout: 30_000 };

async function expectViolation(d: AgentDriver): Promise<void> {
  const status = await d.exited;
  assert.equal(status.code, 2, `agent stderr: ${d.stderr}`);
  assert.match(d.stderr, /protocol violation/);
}

describe("handshake", () => {
  it("encodes the hello as a control frame the protocol codec accepts", () => {
    const frames = new FrameDecoder().push(helloFrame());
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.kind, FrameKind.Control);
    assert.equal(frames[0]!.stream, 0);
    assert.deepEqual(parseControl(AgentHello, frames[0]!.payload), { t: "hello", versions: [1], agent: AGENT_NAME });
  });

  it("sends AgentHello first, then serves requests after HostHello", T, async () => {
    const d = await AgentDriver.start({ handshake: false });
    const hello = await d.hello;
    assert.deepEqual(hello.versions, [1]);
    assert.equal(hello.agent, AGENT_NAME);
    d.sendControl({ t: "hello", version: 1 });
    assert.deepEqual(await d.call("ping", {}), {});
    assert.deepEqual(await d.close(), { code: 0, signal: null });
    assert.deepEqual(d.violations, []);
  });

  it("exits 2 when a request comes before the host hello", T, async () => {
    const d = await AgentDriver.start({ handshake: false });
    await d.hello;
    d.sendControl({ t: "req", id: 1, op: "ping" });
    await expectViolation(d);
  });

  it("exits 2 when the host offers an unknown version", T, async () => {
    const d = await AgentDriver.start({ handshake: false });
    await d.hello;
    d.sendControl({ t: "hello", version: 2 });
    await expectViolation(d);
  });

  it("exits 2 when the first host frame is not a control frame", T, async () => {
    const d = await AgentDriver.start({ handshake: false });
    await d.hello;
    d.sendData(1, Buffer.from("x"));
    await expectViolation(d);
  });
});

describe("protocol violations end the session with exit code 2", () => {
  it("on a frame with a bad header, and kills running commands first", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sleep", "100"]);
    assert.ok(isAlive(e.pid));
    const bad = encodeFrame(FrameKind.Control, 0, Buffer.from("{}"));
    bad.writeUInt8(9, 0);
    d.send(bad);
    await expectViolation(d);
    await waitDead(e.pid);
  });

  it("on a frame whose length exceeds the limit", T, async () => {
    const d = await AgentDriver.start();
    const header = Buffer.alloc(12);
    header.writeUInt8(1, 0);
    header.writeUInt8(FrameKind.Data, 1);
    header.writeUInt32BE(1, 4);
    header.writeUInt32BE(16 * 1024 * 1024, 8);
    d.send(header);
    await expectViolation(d);
  });

  it("on a control payload that is not JSON", T, async () => {
    const d = await AgentDriver.start();
    d.send(encodeFrame(FrameKind.Control, 0, Buffer.from("{nope")));
    await expectViolation(d);
  });

  it("on an unknown op", T, async () => {
    const d = await AgentDriver.start();
    d.sendControl({ t: "req", id: 1, op: "eval", code: "1" });
    await expectViolation(d);
  });

  it("on an unknown field in a request", T, async () => {
    const d = await AgentDriver.start();
    d.sendControl({ t: "req", id: 1, op: "ping", extra: true });
    await expectViolation(d);
  });

  it("on a path that is not normalized", T, async () => {
    const d = await AgentDriver.start();
    d.sendControl({ t: "req", id: 1, op: "stat", path: "/tmp/../etc" });
    await expectViolation(d);
  });

  it("on an exec that uses one stream id twice", T, async () => {
    const d = await AgentDriver.start();
    d.sendControl({ t: "req", id: 1, op: "exec", argv: ["/bin/true"], env: {}, cwd: "/", stdin: null, stdout: 5, stderr: 5, timeoutMs: 0, killGraceMs: 0, maxOutputBytes: 0 });
    await expectViolation(d);
  });

  it("on credit that overflows the u32 range", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sleep", "100"]);
    d.send(encodeCredit(e.stdout.id, 0xffff_ffff));
    await expectViolation(d);
    await waitDead(e.pid);
  });

  it("on a zero credit", T, async () => {
    const d = await AgentDriver.start();
    const frame = encodeCredit(1, 1);
    frame.writeUInt32BE(0, 12);
    d.send(frame);
    await expectViolation(d);
  });

  it("on data past the stream window", T, async () => {
    const d = await AgentDriver.start();
    // sleep never reads stdin, so the agent cannot grant credit for most of it.
    const e = await d.exec(["/bin/sleep", "100"], { stdin: true });
    const chunk = Buffer.alloc(256 * 1024);
    for (let sent = 0; sent <= 3 * INITIAL_STREAM_WINDOW; sent += chunk.length) d.sendData(e.stdin!, chunk);
    await expectViolation(d);
    await waitDead(e.pid);
  });

  it("on data sent on a stream the agent writes", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sleep", "100"]);
    d.sendData(e.stdout.id, Buffer.from("x"));
    await expectViolation(d);
    await waitDead(e.pid);
  });

  it("on credit granted for a stream the host writes", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sleep", "100"], { stdin: true });
    d.send(encodeCredit(e.stdin!, 10));
    await expectViolation(d);
  });
});

describe("session behaviour", () => {
  it("discards frames for streams that are not open", T, async () => {
    const d = await AgentDriver.start();
    d.sendData(77, Buffer.from("stray"));
    d.sendEnd(78);
    d.send(encodeCredit(79, 4096));
    d.sendControl({ t: "abort", stream: 80, error: { code: "ABORTED", message: "gone" } });
    // A finished command's streams are closed too.
    const r = await d.run(["/bin/echo", "x"]);
    d.send(encodeCredit(2, 100));
    d.sendData(3, Buffer.from("late"));
    assert.deepEqual(await d.call("ping", {}), {});
    assert.equal(r.stdout, "x\n");
    assert.deepEqual(await d.close(), { code: 0, signal: null });
    assert.deepEqual(d.violations, []);
  });

  it("answers concurrent requests each exactly once", T, async () => {
    const d = await AgentDriver.start();
    const results = await Promise.all(Array.from({ length: 200 }, () => d.request("ping", {})));
    assert.equal(results.length, 200);
    assert.ok(results.every((r) => r.ok));
    assert.deepEqual(d.violations, []);
    await d.close();
  });

  it("kills every process group and exits when the host closes the channel", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sh", "-c", "sleep 100 & echo $!; sleep 100"]);
    await e.stdout.waitBytes(2);
    const grandchild = Number(e.stdout.text().trim());
    assert.ok(isAlive(e.pid) && isAlive(grandchild));
    assert.deepEqual(await d.close(), { code: 0, signal: null });
    await waitDead(e.pid);
    await waitDead(grandchild);
  });

  it("answers shutdown, kills every process group and exits 0", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sleep", "100"]);
    assert.deepEqual(await d.call("shutdown", {}), {});
    assert.deepEqual(await d.exited, { code: 0, signal: null });
    await waitDead(e.pid);
    assert.deepEqual(d.violations, []);
  });

  it("exits 2 with a usage line on bad arguments", T, async () => {
    const { spawnSync } = await import("node:child_process");
    const { AGENT_ENTRY } = await import("./_test/driver.js");
    const r = spawnSync(process.execPath, [AGENT_ENTRY, "--channel", "relative/path"], { encoding: "utf8" });
    assert.equal(r.status, 2);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /must be "stdio" or an absolute path/);
  });
});
