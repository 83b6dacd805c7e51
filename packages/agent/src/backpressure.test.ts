import assert from "node:assert/strict";
import { setTimeout as delay } from "node:timers/promises";
import { after, describe, it } from "node:test";
import { INITIAL_STREAM_WINDOW } from "@mvm/protocol";
import { AgentDriver } from "./_test/driver.js";
import { blockedInWrite, writtenBytes } from "./_test/util.js";

after(() => AgentDriver.killAll());

const MiB = 1024 * 1024;
const TOTAL = 200 * MiB;

/**
 * Resolves once `pid` has been asleep in write(2) with an unchanged byte count for `polls`
 * consecutive polls: a writer a live reader keeps draining never passes this check for long.
 * Rejects if the writer finishes first (it wrote everything: nothing held it back).
 */
async function waitWriterStalled(pid: number, polls = 5): Promise<number> {
  let stable = 0;
  let last = -1;
  for (;;) {
    const written = writtenBytes(pid);
    if (written === undefined) throw new Error(`Writer ${pid} exited: nothing held it back`);
    stable = blockedInWrite(pid) && written === last ? stable + 1 : 0;
    last = written;
    if (stable >= polls) return written;
    await delay(50);
  }
}

describe("back-pressure", () => {
  it("pauses a child's output while the host withholds credit, and resumes when it comes", { timeout: 120_000 }, async () => {
    const d = await AgentDriver.start();
    const baseKiB = await d.memoryKiB("VmRSS");
    const e = await d.exec(["/usr/bin/head", "-c", String(TOTAL), "/dev/zero"], { autoCredit: false, keep: false, maxOutputBytes: TOTAL });
    await e.stdout.waitBytes(INITIAL_STREAM_WINDOW);
    const written = await waitWriterStalled(e.pid);

    // The agent sent exactly the window, no more, and holds only a bounded read-ahead.
    assert.equal(e.stdout.bytes, INITIAL_STREAM_WINDOW);
    assert.ok(written < 8 * MiB, `writer got ${written} bytes out while credit was withheld`);
    const stalledKiB = await d.memoryKiB("VmRSS");
    assert.ok(stalledKiB - baseKiB < 48 * 1024, `agent RSS grew from ${baseKiB} KiB to ${stalledKiB} KiB`);

    // Credit flows again: everything arrives, nothing is lost or duplicated.
    e.stdout.autoCredit = true;
    e.stdout.grant(INITIAL_STREAM_WINDOW);
    const exit = await e.exit;
    await e.stdout.finished;
    assert.equal(exit.exitCode, 0);
    assert.equal(exit.stdoutBytes, TOTAL);
    assert.equal(e.stdout.bytes, TOTAL);
    const peakKiB = await d.memoryKiB("VmHWM");
    assert.ok(peakKiB - baseKiB < 64 * 1024, `agent peak RSS ${peakKiB} KiB (started at ${baseKiB} KiB)`);
    assert.deepEqual(d.violations, []);
    await d.close();
  });

  it("keeps forwarding other streams while one is stalled", { timeout: 60_000 }, async () => {
    const d = await AgentDriver.start();
    const stalled = await d.exec(["/usr/bin/head", "-c", String(16 * MiB), "/dev/zero"], { autoCredit: false, keep: false });
    await stalled.stdout.waitBytes(INITIAL_STREAM_WINDOW);
    const r = await d.run(["/bin/echo", "still here"]);
    assert.equal(r.stdout, "still here\n");
    assert.equal(stalled.stdout.bytes, INITIAL_STREAM_WINDOW);
    await d.call("signal", { proc: stalled.proc, signal: "SIGKILL" });
    stalled.stdout.autoCredit = true;
    stalled.stdout.grant(INITIAL_STREAM_WINDOW);
    const exit = await stalled.exit;
    assert.equal(exit.signal, "SIGKILL");
    assert.deepEqual(d.violations, []);
    await d.close();
  });
});
