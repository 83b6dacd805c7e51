import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import { AgentDriver } from "./_test/driver.js";
import { tempDir } from "./_test/util.js";

after(() => AgentDriver.killAll());

const BUNDLE_SCRIPT = fileURLToPath(new URL("../scripts/bundle.mjs", import.meta.url));

describe("bundled agent", () => {
  it("builds into one file that serves the protocol on its own", { timeout: 60_000 }, async () => {
    using dir = tempDir();
    const outfile = join(dir.path, "agent.cjs");
    const build = spawnSync(process.execPath, [BUNDLE_SCRIPT, "--outfile", outfile], { encoding: "utf8" });
    assert.equal(build.status, 0, build.stderr);
    assert.ok(statSync(outfile).size > 0);

    // Run it from a directory with no node_modules around it: everything must be inlined.
    const d = await AgentDriver.start({ entry: outfile });
    const hello = await d.hello;
    assert.equal(hello.agent, "mvm-agent/0.1.0");
    const r = await d.run(["/bin/echo", "from the bundle"]);
    assert.equal(r.stdout, "from the bundle\n");
    assert.equal(r.exit.exitCode, 0);
    const listing = await d.call("listDir", { path: dir.path });
    // The function-call wrapper (docs/FUNCTIONS.md) is bundled beside the agent.
    assert.deepEqual(listing.entries.map((e) => e.name).sort(), ["agent.cjs", "fn-wrapper.cjs"]);

    // Quiesced mid-session, it carries on after the resume line and starts over after the start line.
    const sleeper = await d.exec(["/bin/sleep", "1000"]);
    await d.quiesce();
    d.resume();
    assert.deepEqual(await d.call("ping", {}), {});
    await d.quiesce();
    assert.equal((await d.restartSession()).agent, "mvm-agent/0.1.0");
    const again = await d.run(["/bin/echo", "new host"]);
    assert.equal(again.stdout, "new host\n");
    const { processes } = await d.call("listProcesses", {});
    assert.deepEqual(processes.map((p) => p.pid), [sleeper.pid]);
    assert.deepEqual(d.violations, []);
    assert.deepEqual(await d.close(), { code: 0, signal: null });
  });
});
