import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { after, describe, it } from "node:test";
import { AgentDriver } from "./_test/driver.js";
import { waitDead } from "./_test/util.js";
import { PassThrough } from "node:stream";
import { START_LINE, awaitStartLine, parseArgs } from "./channel.js";

after(() => AgentDriver.killAll());

/**
 * Relays its stdin/stdout to a raw pty and starts the agent (the remaining argv, whose last
 * element is replaced by the pty's path) with `--channel <pty>`. The agent then talks over a
 * character device, as it does over /dev/vport0p1 in a VM.
 */
const PTY_RELAY = `
import os, pty, subprocess, sys, threading, tty
master, slave = pty.openpty()
tty.setraw(slave)
agent = subprocess.Popen(sys.argv[1:-1] + [os.ttyname(slave)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def pump(src, dst):
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                return
            os.write(dst, data)
    except OSError:
        return
threading.Thread(target=pump, args=(master, 1), daemon=True).start()
pump(0, master)
agent.terminate()
agent.wait()
`;

const hasPython = spawnSync("python3", ["-c", "import pty"]).status === 0;

describe("channel", () => {
  it("parses the command line", () => {
    assert.deepEqual(parseArgs(["--channel", "stdio"]), { channel: "stdio", awaitStart: false });
    assert.deepEqual(parseArgs(["--channel=/dev/vport0p1"]), { channel: "/dev/vport0p1", awaitStart: false });
    assert.deepEqual(parseArgs(["--channel", "/dev/vport0p1", "--await-start"]), { channel: "/dev/vport0p1", awaitStart: true });
    assert.throws(() => parseArgs([]), /Missing --channel/);
    assert.throws(() => parseArgs(["--channel"]), /Missing value/);
    assert.throws(() => parseArgs(["--channel", "vport"]), /must be "stdio" or an absolute path/);
    assert.throws(() => parseArgs(["--channel", "stdio", "--verbose"]), /Unknown argument "--verbose"/);
  });

  it("waits for the start line, split anywhere, and hands back what follows it", async () => {
    const input = new PassThrough();
    const started = awaitStartLine(input);
    const bytes = Buffer.from(`${START_LINE}rest`);
    for (const b of bytes) input.write(Buffer.from([b]));
    await started;
    assert.equal(input.read()?.toString(), "rest");
  });

  it("refuses other bytes or an early end before the start line", async () => {
    const wrong = new PassThrough();
    const a = awaitStartLine(wrong);
    wrong.write("mvm-agent stop\n");
    await assert.rejects(a, /unexpected bytes/);
    const ended = new PassThrough();
    const b = awaitStartLine(ended);
    ended.end("mvm-agent");
    await assert.rejects(b, /closed before the start line/);
  });

  it(
    "serves the protocol over a character device and exits when the host goes away",
    { timeout: 60_000, skip: hasPython ? false : "needs python3 to create a pty" },
    async () => {
      const d = await AgentDriver.start({ wrap: ["python3", "-c", PTY_RELAY] });
      assert.deepEqual(await d.call("ping", {}), {});
      const parent = await d.run(["/bin/sh", "-c", "echo $PPID"]);
      const agentPid = Number(parent.stdout.trim());
      const input = randomBytes(3 * 1024 * 1024);
      const e = await d.exec(["/bin/cat"], { stdin: true, keep: false });
      await d.writeStream(e.stdin!, input);
      assert.equal((await e.exit).exitCode, 0);
      assert.equal(e.stdout.hash.digest("hex"), createHash("sha256").update(input).digest("hex"));
      assert.deepEqual(d.violations, []);
      await d.close();
      await waitDead(agentPid);
    },
  );
});
