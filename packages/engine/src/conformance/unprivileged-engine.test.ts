/**
 * The whole engine as an ordinary user (unprivileged user namespaces, no cgroup delegation):
 * sandboxes start with the real agent, stay isolated, and limits the host cannot give this user
 * are refused. CI runs as root, so the test drops to an unprivileged uid itself.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { chmod, chown, copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { buildBusyboxRootfs, makeTestRoot, removeTestRoot } from "../backends/namespace/_fixtures.js";
import { defaultAgentBundlePath } from "../open.js";
import { listProcessesWithId, readProcStat } from "../_internal/proc.js";
import { waitFor } from "./harness.js";

const isRoot = process.getuid?.() === 0;
const skip = !isRoot
  ? "needs root to start the engine as another uid"
  : !existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")
    ? "needs bubblewrap and busybox-static"
    : false;
const USER = 0x6f40_0000 + (process.pid % 1000);

test("an ordinary user runs the engine: real agent, isolation holds, unenforceable limits refused", { skip, timeout: 180_000 }, async () => {
  const root = await makeTestRoot("mvm-user-engine-");
  try {
    const launcher = join(root, "engine-as-user.mjs");
    await build({
      entryPoints: [new URL("./_unprivileged-engine.js", import.meta.url).pathname],
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      outfile: launcher,
      logLevel: "error",
      banner: { js: 'import { createRequire as __cr } from "node:module"; const require = __cr(import.meta.url);' },
    });
    const agent = join(root, "agent.cjs");
    await copyFile(defaultAgentBundlePath(), agent);
    await chmod(agent, 0o644);
    await chmod(launcher, 0o644);
    const rootfs = await buildBusyboxRootfs(join(root, "rootfs"));
    const stateDir = join(root, "state");
    await mkdir(stateDir, { mode: 0o700 });
    await chown(stateDir, USER, USER);
    const child = spawn(
      "/usr/bin/setpriv",
      [`--reuid=${USER}`, `--regid=${USER}`, "--clear-groups", process.execPath, launcher, stateDir, rootfs, agent],
      { stdio: ["ignore", "pipe", "pipe"], cwd: "/", env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: stateDir } },
    );
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (err += s));
    const [code] = (await once(child, "close")) as [number | null];
    assert.equal(code, 0, err);
    const seen = JSON.parse(out) as Record<string, unknown>;
    assert.equal(seen["uid"], USER);
    assert.equal(seen["id"], "1000");
    assert.match(String(seen["corePattern"]), /^denied/);
    assert.doesNotMatch(String(seen["corePattern"]), /written/);
    assert.match(String(seen["status"]), /NoNewPrivs:\s+1/);
    assert.match(String(seen["status"]), /CapEff:\s+0+\n/);
    assert.match(String(seen["status"]), /Seccomp:\s+2/);
    assert.equal(seen["net"], "lo");
    assert.equal(seen["file"], "round trip");
    const enforceable = seen["enforceable"] as { memory: boolean };
    assert.equal(seen["limitRefused"], enforceable.memory ? "created" : "UNSUPPORTED_CAPABILITY");
    // Processes killed at close may still be exiting; zombies whose parent is gone are not leaks.
    const live = async () => {
      const pids = await listProcessesWithId(USER);
      const stats = await Promise.all(pids.map((pid) => readProcStat(pid)));
      return stats.filter((st) => st !== undefined && st.state !== "Z").map((st) => st!.pid);
    };
    assert.ok(await waitFor(async () => (await live()).length === 0), `processes left: ${(await live()).join(",")}`);
  } finally {
    execFileSync("chmod", ["-R", "u+w", root]);
    await removeTestRoot(root);
  }
});
