/**
 * quiesce against the compiled agent: what it sends (nothing, once it has answered), what the
 * resume and start lines do to its calls, streams and processes, and how it fails closed.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, describe, it } from "node:test";
import { AGENT_READY_LINE, DETACHED_PROC_BASE, FrameKind, MAX_AGENT_LINE_BYTES, encodeControl, encodeFrame } from "@mvm/protocol";
import { AgentDriver } from "./_test/driver.js";
import { blockedInWrite, isAlive, tempDir, waitDead, waitUntil } from "./_test/util.js";
import { AGENT_NAME } from "./hello.js";

after(() => AgentDriver.killAll());

const T = { timeout: 60_000 };

/** Consecutive integers from 0, one a line; the last line may be cut short by a kill. */
function assertCounting(text: string): number {
  const lines = text.split("\n");
  const complete = lines.slice(0, -1);
  complete.forEach((line, i) => {
    if (line !== String(i)) assert.fail(`line ${i} is ${JSON.stringify(line)}`);
  });
  assert.ok(String(complete.length).startsWith(lines.at(-1)!), `last line ${JSON.stringify(lines.at(-1))}`);
  return complete.length;
}

function readCount(path: string): number {
  try {
    return Number(readFileSync(path, "utf8").trim()) || 0;
  } catch {
    return 0;
  }
}

async function expectFailClosed(d: AgentDriver, reason: RegExp): Promise<void> {
  const status = await d.exited;
  assert.equal(status.code, 2, `agent stderr: ${d.stderr}`);
  assert.match(d.stderr, reason);
}

describe("quiesce, then resume", () => {
  it("stops a streaming exec's output and carries on exactly where it was", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); done"]);
    await e.stdout.waitBytes(64 * 1024);
    await d.quiesce();
    // Nothing pumps the pipe any more: the shell fills it and blocks in write(2), and the driver
    // records any frame that arrives while it is quiet as a violation.
    await waitUntil(() => blockedInWrite(e.pid));
    const atQuiet = e.stdout.bytes;
    d.resume();
    await e.stdout.waitBytes(atQuiet + 2 * 1024 * 1024);
    await d.call("signal", { proc: e.proc, signal: "SIGKILL" });
    const exit = await e.exit;
    await e.stdout.finished;
    assert.equal(exit.signal, "SIGKILL");
    assert.equal(exit.stdoutBytes, e.stdout.bytes);
    assert.ok(assertCounting(e.stdout.text()) > 0);
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
  });

  it("holds what calls in flight produce and delivers it after the resume, twice over", T, async () => {
    using dir = tempDir();
    const target = join(dir.path, "upload.txt");
    const flag = join(dir.path, "flag");
    const d = await AgentDriver.start();
    // An upload waiting for the rest of its bytes, and a command that ends while the agent is quiet.
    const stream = d.newStreamId();
    const upload = d.request("writeFile", { path: target, stream, mode: 0o600, createParents: false });
    d.sendData(stream, Buffer.from("before "));
    const e = await d.exec(["/bin/sh", "-c", `while [ ! -e ${flag} ]; do sleep 0.01; done; echo finished`]);

    await d.quiesce();
    writeFileSync(flag, "");
    await waitDead(e.pid);
    d.resume();
    const exit = await e.exit;
    await e.stdout.finished;
    assert.equal(exit.exitCode, 0);
    assert.equal(e.stdout.text(), "finished\n");

    await d.quiesce();
    d.resume();
    d.sendData(stream, Buffer.from("after"));
    d.sendEnd(stream);
    const answer = await upload;
    assert.ok(answer.ok, JSON.stringify(answer));
    assert.deepEqual(answer.result, { bytes: 12 });
    assert.equal(readFileSync(target, "utf8"), "before after");
    assert.deepEqual(await d.call("ping", {}), {});
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
  });

  it("reads a frame right behind the resume line as a frame", T, async () => {
    const d = await AgentDriver.start();
    await d.quiesce();
    // Both go out in the same tick, so the agent usually reads them in one chunk.
    d.resume();
    assert.deepEqual(await d.call("ping", {}), {});
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
  });
});

describe("quiesce, then start (a restored copy with a new host)", () => {
  it("greets the new host and keeps the old processes running, detached", T, async () => {
    using dir = tempDir();
    const counter = join(dir.path, "count");
    const d = await AgentDriver.start();
    // Counts its rounds in a file and writes 64 KiB of output a round.
    const script = `i=0; while :; do i=$((i+1)); echo $i > ${counter}.new; mv ${counter}.new ${counter}; head -c 65536 /dev/zero; done`;
    const old = await d.exec(["/bin/sh", "-c", script], { keep: false });
    // An upload in flight: the new host never hears of it and its temporary file goes.
    const upload = d.newStreamId();
    void d.request("writeFile", { path: join(dir.path, "upload"), stream: upload, mode: 0o600, createParents: false });
    d.sendData(upload, Buffer.from("partial"));
    await waitUntil(() => readdirSync(dir.path).some((n) => n.startsWith(".mvm-upload-")));
    await old.stdout.waitBytes(1);
    await d.quiesce();

    const hello = await d.restartSession();
    assert.equal(hello.agent, AGENT_NAME);
    await waitUntil(() => !readdirSync(dir.path).some((n) => n.startsWith(".mvm-upload-")));
    assert.ok(!existsSync(join(dir.path, "upload")));
    // Its output is read and dropped: 64 rounds are 4 MiB, more than a pipe, the agent's
    // read-ahead and a stream window hold, so it would be blocked if nobody drained it.
    const from = readCount(counter);
    await waitUntil(() => readCount(counter) >= from + 64);
    assert.ok(isAlive(old.pid));

    // Ids start over: the old call's handle is unknown, its stream ids are free again.
    await assert.rejects(d.call("signal", { proc: old.proc, signal: "SIGKILL" }), /NOT_FOUND/);
    const r = await d.run(["/bin/echo", "new session"]);
    assert.equal(r.stdout, "new session\n");
    assert.equal(r.exit.exitCode, 0);

    // The old process is listed under a handle the new host never uses for its own calls.
    const { processes } = await d.call("listProcesses", {});
    const listed = processes.find((p) => p.pid === old.pid);
    assert.ok(listed, JSON.stringify(processes));
    assert.ok(listed.proc >= DETACHED_PROC_BASE, String(listed.proc));
    await d.call("signal", { proc: listed.proc, signal: "SIGKILL" });
    await waitDead(old.pid);
    // It ends without an exit event (the driver counts one it does not wait for as a violation).
    while ((await d.call("listProcesses", {})).processes.some((p) => p.pid === old.pid)) await delay(20);
    await d.run(["/bin/true"]);
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
  });

  it("kills the detached processes too when the new session ends", T, async () => {
    const d = await AgentDriver.start();
    const old = await d.exec(["/bin/sleep", "1000"]);
    await d.quiesce();
    await d.restartSession();
    assert.ok(isAlive(old.pid));
    assert.deepEqual(await d.call("shutdown", {}), {});
    assert.deepEqual(await d.exited, { code: 0, signal: null });
    await waitDead(old.pid);
    assert.deepEqual(d.violations, []);
  });

  it("can be quiesced and restarted again", T, async () => {
    const d = await AgentDriver.start();
    const first = await d.exec(["/bin/sleep", "1000"]);
    await d.quiesce();
    await d.restartSession();
    const second = await d.exec(["/bin/sleep", "1000"]);
    await d.quiesce();
    await d.restartSession();
    const { processes } = await d.call("listProcesses", {});
    const handles = processes.map((p) => [p.pid, p.proc]).sort((a, b) => a[1]! - b[1]!);
    assert.deepEqual(handles, [
      [first.pid, DETACHED_PROC_BASE],
      [second.pid, DETACHED_PROC_BASE + 1],
    ]);
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
    await waitDead(first.pid);
    await waitDead(second.pid);
  });
});

describe("quiesce fails closed", () => {
  const longFrame = encodeFrame(FrameKind.Control, 0, encodeControl({ t: "req", id: 9, op: "stat", path: `/${"a".repeat(100)}` }));
  const cases: Array<[string, Buffer, RegExp]> = [
    ["an unknown line", Buffer.from("mvm-agent bogus\n"), /after quiesce expected "mvm-agent resume\\n" or "mvm-agent start\\n", got "mvm-agent bogus\\n"/],
    ["the ready line", Buffer.from(AGENT_READY_LINE), /after quiesce expected/],
    ["a line with a carriage return", Buffer.from("mvm-agent resume\r\n"), /after quiesce expected/],
    ["a line too long", Buffer.alloc(MAX_AGENT_LINE_BYTES + 1, "x"), /no line end within 64 bytes/],
    ["a frame instead of a line", longFrame, /no line end within 64 bytes/],
  ];
  for (const [name, bytes, reason] of cases) {
    it(`exits 2 on ${name}, killing its commands`, T, async () => {
      const d = await AgentDriver.start();
      const e = await d.exec(["/bin/sleep", "1000"]);
      await d.quiesce();
      d.send(bytes);
      await expectFailClosed(d, reason);
      await waitDead(e.pid);
      assert.deepEqual(d.violations, []);
    });
  }

  it("exits 2 when the host sends a frame right after quiesce", T, async () => {
    const d = await AgentDriver.start();
    const quiesce = encodeFrame(FrameKind.Control, 0, encodeControl({ t: "req", id: 50, op: "quiesce" }));
    const ping = encodeFrame(FrameKind.Control, 0, encodeControl({ t: "req", id: 51, op: "ping" }));
    d.send(Buffer.concat([quiesce, ping]));
    await expectFailClosed(d, /protocol violation by the host: A frame after quiesce/);
  });

  it("exits 2 when the host sends part of a frame right after quiesce", T, async () => {
    const d = await AgentDriver.start();
    const quiesce = encodeFrame(FrameKind.Control, 0, encodeControl({ t: "req", id: 50, op: "quiesce" }));
    const ping = encodeFrame(FrameKind.Control, 0, encodeControl({ t: "req", id: 51, op: "ping" }));
    d.send(Buffer.concat([quiesce, ping.subarray(0, 5)]));
    await expectFailClosed(d, /protocol violation by the host: Truncated frame/);
  });

  it("exits 0 and kills its commands when the host closes the channel while it is quiet", T, async () => {
    const d = await AgentDriver.start();
    const e = await d.exec(["/bin/sleep", "1000"]);
    await d.quiesce();
    assert.deepEqual(await d.close(), { code: 0, signal: null });
    await waitDead(e.pid);
  });
});
