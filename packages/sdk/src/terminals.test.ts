/**
 * The SDK's terminal and reattach surface over the daemon (full transport) and in-process:
 * `commands.start(argv, { pty })`, `handle.resize`, `commands.connect(pid)`, `commands.kill(pid)`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CommandExitError, InvalidArgumentError, NotFoundError, type ExecApiRequest } from "@mvm/protocol";
import { Sandbox } from "./sandbox.js";
import { nextEvent, VIAS, engineVia } from "./_test/harness.js";

for (const via of VIAS) {
  test(`[${via}] a pty start asks for the size with stdin open; resize reaches the engine; a pipe process cannot be resized`, async (t) => {
    const { engine, fake } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    const seen = nextEvent<{ request: ExecApiRequest }>(fake, "exec");
    const p = await sb.commands.start(["cat"], { pty: { cols: 100, rows: 30 } });
    const { request } = await seen;
    assert.deepEqual(request.pty, { cols: 100, rows: 30 });
    assert.equal(request.openStdin, true);
    await p.resize({ cols: 120, rows: 40 });
    assert.deepEqual(fake.resizes, [{ proc: p.proc, cols: 120, rows: 40 }]);
    await p.sendStdin("typed");
    await p.closeStdin();
    assert.equal((await p.wait()).stdout, "typed");

    const plain = await sb.commands.start(["sleep"]);
    await assert.rejects(plain.resize({ cols: 80, rows: 24 }), InvalidArgumentError);
    await plain.kill();
    if (via === "daemon") {
      // The daemon checks the size before the engine sees it.
      const other = await sb.commands.start(["sleep"], { pty: { cols: 80, rows: 24 } });
      await assert.rejects(other.resize({ cols: 0, rows: 24 }), InvalidArgumentError);
      await other.kill();
    }
  });

  test(`[${via}] a second client connects by pid, sees live output and the exit; kill by pid from any client`, async (t) => {
    const { engine } = await engineVia(t, via);
    const sb = await Sandbox.create({ engine });
    const p = await sb.commands.start(["cat"], { openStdin: true, check: false });
    const other = await Sandbox.connect(sb.id, { engine });
    const live: string[] = [];
    const attached = await other.commands.connect(p.pid, { onStdout: (s) => void live.push(s), check: false });
    assert.equal(attached.pid, p.pid);
    assert.deepEqual(attached.argv, ["cat"]);
    await p.sendStdin("one");
    assert.equal(await other.commands.kill(p.pid), true);
    const [mine, theirs] = await Promise.all([p.wait(), attached.wait()]);
    assert.equal(mine.signal, "SIGKILL");
    assert.equal(theirs.signal, "SIGKILL");
    assert.equal(live.join(""), "one");
    assert.equal(await other.commands.kill(p.pid), false);
    await assert.rejects(other.commands.connect(p.pid), NotFoundError);
    await assert.rejects(other.commands.connect(0), InvalidArgumentError);
    const checked = await sb.commands.start(["sleep"]);
    const follower = await other.commands.connect(checked.pid);
    await checked.kill();
    await assert.rejects(follower.wait(), CommandExitError);
    await assert.rejects(checked.wait(), CommandExitError);
  });
}
