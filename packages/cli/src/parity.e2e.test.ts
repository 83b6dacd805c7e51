/**
 * End-to-end: the parity commands through the built mvmctl and a real daemon (`mvmctl daemon`,
 * namespace backend, its own state directory), each as a separate mvmctl process.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, readdirSync } from "node:fs";
import { spawn, spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_IMAGE } from "@mvm/engine";
import { MVMCTL, cliEnv, run, skipWithoutImages, startDaemon, type Ran, type TestDaemon } from "./_test/e2e-env.js";

describe("parity commands through a real daemon", { skip: skipWithoutImages, timeout: 300_000 }, () => {
  let dir = "";
  let env: NodeJS.ProcessEnv = {};
  let socketPath = "";
  let daemon: TestDaemon | undefined;
  let id = "";
  const mvmctl = (...args: string[]): Promise<Ran> => run(env, ["--socket", socketPath, ...args]);
  const ok = async (...args: string[]): Promise<string> => {
    const r = await mvmctl(...args);
    assert.equal(r.code, 0, `mvmctl ${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    // The sandbox's uid must be able to pass through the state directory's parents.
    dir = mkdtempSync(join(tmpdir(), "mvm-parity-e2e-"));
    chmodSync(dir, 0o711);
    env = cliEnv(dir);
    socketPath = join(dir, "run", "d.sock");
    daemon = await startDaemon(env, socketPath);
    id = (await ok("create", "--image", DEFAULT_IMAGE, "--ttl", "300")).trim();
  });
  after(async () => {
    if (id !== "") await mvmctl("kill", id);
    await daemon?.stop();
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  it("cp -r copies a directory in and out; symlinks are skipped", async () => {
    const src = join(dir, "src");
    mkdirSync(join(src, "a", "b"), { recursive: true });
    writeFileSync(join(src, "a", "b", "c.txt"), "deep");
    writeFileSync(join(src, "top.txt"), "top");
    symlinkSync("/etc/passwd", join(src, "link"));
    const up = JSON.parse(await ok("--json", "cp", "-r", src, `${id}:/work/tree`)) as Record<string, unknown>;
    assert.deepEqual({ files: up["files"], dirs: up["dirs"], skipped: up["skipped"] }, { files: 2, dirs: 2, skipped: 1 });
    assert.equal(await ok("exec", id, "--", "cat", "/work/tree/a/b/c.txt", "/work/tree/top.txt"), "deeptop");

    const dest = join(dir, "dest");
    await ok("cp", "--recursive", `${id}:/work/tree`, dest);
    assert.equal(readFileSync(join(dest, "a", "b", "c.txt"), "utf8"), "deep");
    assert.deepEqual(readdirSync(dest).sort(), ["a", "top.txt"]);

    const missing = await mvmctl("cp", "-r", `${id}:/work/nothing`, join(dir, "x"));
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /nothing/);
  });

  it("port --publish publishes a guest port on the live sandbox; port shows where it is reached", async () => {
    const unpublished = await mvmctl("port", id, "9000");
    assert.notEqual(unpublished.code, 0);
    assert.match(unpublished.stderr, /not published/);
    assert.match(unpublished.stderr, /--publish/);
    const address = (await ok("port", "--publish", id, "9000")).trim();
    assert.match(address, /^127\.0\.0\.1:[0-9]+$/);
    assert.equal((await ok("port", id, "9000")).trim(), address);
    const json = JSON.parse(await ok("--json", "port", id, "9000")) as { guest: number; host: number; address: string };
    assert.deepEqual(json, { guest: 9000, host: Number(address.split(":")[1]), address });
    assert.equal((await mvmctl("port", id, "70000")).code, 2);
  });

  it("logs shows the workload's output and the agent's log", async () => {
    await ok("exec", id, "--", "sh", "-c", "echo hello-logs; echo oops >&2");
    const human = await ok("logs", id);
    assert.match(human, /^stdout\[[0-9]+\]: hello-logs$/m);
    assert.match(human, /^stderr\[[0-9]+\]: oops$/m);
    const last = (await ok("--json", "logs", "--source", "workload", "-n", "1", id)).trim().split("\n");
    assert.equal(last.length, 1);
    assert.deepEqual({ ...JSON.parse(last[0]!), time: undefined, proc: undefined }, { source: "workload", stream: "stderr", text: "oops", time: undefined, proc: undefined });
    const bad = await mvmctl("logs", "--source", "kernel", id);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /agent or workload/);
  });

  it("logs -f prints new workload lines once each as they come, secret values replaced; it ends with the sandbox, or at Ctrl-C", async () => {
    const secret = spawnSync(process.execPath, [MVMCTL, "--socket", socketPath, "secret", "set", "follow-key", "--host", "follow.test"], { env, input: "f0ll0w-s3cr3t-value", encoding: "utf8" });
    assert.equal(secret.status, 0, secret.stderr);
    const sbx = (await ok("create", "--image", DEFAULT_IMAGE, "--ttl", "300", "--secret-env", "KEY=follow-key")).trim();
    await ok("exec", sbx, "--", "sh", "-c", "echo before-follow");
    const follow = (...args: string[]) => {
      const child = spawn(process.execPath, [MVMCTL, "--socket", socketPath, "logs", "-f", ...args, sbx], { env, stdio: ["ignore", "pipe", "pipe"] });
      const state = { out: "", err: "", exit: new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code))) };
      child.stdout.on("data", (c: Buffer) => (state.out += c.toString()));
      child.stderr.on("data", (c: Buffer) => (state.err += c.toString()));
      return { child, state };
    };
    const until = async (cond: () => boolean, what: string): Promise<void> => {
      const deadline = Date.now() + 30_000;
      while (!cond()) {
        if (Date.now() > deadline) assert.fail(`never: ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    const a = follow("--source", "workload");
    const b = follow();
    // What was there before the follow started, then each new line once.
    await until(() => a.state.out.includes("before-follow") && b.state.out.includes("before-follow"), "the earlier output");
    await ok("exec", sbx, "--", "sh", "-c", 'echo "live-one $KEY"; echo live-two >&2');
    await until(() => a.state.out.includes("live-two"), `the live lines: ${a.state.out}`);
    await ok("exec", sbx, "--", "sh", "-c", "echo live-three");
    await until(() => a.state.out.includes("live-three") && b.state.out.includes("live-three"), "the next line");
    const workload = a.state.out.split("\n").filter((l) => l !== "");
    assert.deepEqual(workload.map((l) => l.replace(/^(stdout|stderr)\[\d+\]: /, "$1: ").replace(/mvm-placeholder-\S+/, "PLACEHOLDER")), [
      "stdout: before-follow",
      "stdout: live-one PLACEHOLDER",
      "stderr: live-two",
      "stdout: live-three",
    ]);
    assert.ok(!a.state.out.includes("f0ll0w-s3cr3t-value") && !b.state.out.includes("f0ll0w-s3cr3t-value"));

    // Ctrl-C stops a follow (exit 0); the sandbox's end stops the other.
    b.child.kill("SIGINT");
    assert.equal(await b.state.exit, 0, b.state.err);
    await ok("kill", sbx);
    assert.equal(await a.state.exit, 0, a.state.err);
  });

  it("ttl sets when the sandbox ends; bad values say the range in seconds", async () => {
    const before = Date.now();
    const info = JSON.parse(await ok("--json", "ttl", id, "7200")) as { expiresAt: string };
    assert.ok(Math.abs(Date.parse(info.expiresAt) - (before + 7_200_000)) < 10_000, info.expiresAt);
    const bad = await mvmctl("ttl", id, "0");
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /1 to 604800/);
    const audit = await ok("audit", "tail", "--json", "-n", "50");
    assert.match(audit, /sandbox\.ttl_set/);
  });
});
