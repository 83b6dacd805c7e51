/**
 * End to end: the unmodified `e2b` SDK (pinned devDependency) against `mvmctl serve --e2b` and a
 * daemon on the namespace backend. Every URL the SDK uses points at the local server, so no
 * request leaves the machine.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { AuthenticationError, CommandExitError, InvalidArgumentError, NotFoundError, Sandbox, SandboxError, type FilesystemEvent } from "e2b";
import { DEFAULT_IMAGE } from "@mvm/engine";
import { MVMCTL, cliEnv, run, skipWithoutImages, startDaemon, type TestDaemon } from "../_test/e2e-env.js";
import { scratchDir } from "../_test/scratch.js";

/** Waits until `check` is true, polling every 20 ms, for at most `ms`. */
async function until(check: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("mvmctl serve --e2b with the e2b SDK", { skip: skipWithoutImages, timeout: 600_000 }, () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let daemon: TestDaemon;
  let server: ChildProcess;
  let url: string;
  let apiKey: string;
  let opts: { apiKey: string; apiUrl: string; sandboxUrl: string };
  const saved: Record<string, string | undefined> = {};

  before(async () => {
    dir = scratchDir("mvm-e2b");
    chmodSync(dirname(dir), 0o711);
    chmodSync(dir, 0o711);
    env = cliEnv(dir);
    const run_ = join(dir, "run");
    mkdirSync(run_, { mode: 0o700 });
    const socketPath = join(run_, "mvmd.sock");
    env.MVM_DAEMON_SOCKET = socketPath;
    daemon = await startDaemon(env, socketPath);
    const made = await run(env, ["apikey", "create", "--name", "test"]);
    assert.equal(made.code, 0, made.stderr);
    apiKey = made.stdout.trim();
    assert.match(apiKey, /^e2b_[0-9a-f]{40}$/);
    const config = join(dir, "e2b.json");
    writeFileSync(config, JSON.stringify({ templates: { base: DEFAULT_IMAGE }, backend: "namespace", timeoutSeconds: { default: 300, max: 3600 } }));
    server = spawn(process.execPath, [MVMCTL, "serve", "--e2b", "--port", "0", "--config", config], { env, stdio: ["ignore", "ignore", "pipe"] });
    let seen = "";
    url = await new Promise<string>((resolve, reject) => {
      server.stderr!.on("data", (c: Buffer) => {
        if (seen.length < 64 * 1024) seen += c.toString();
        const m = /envd on (http:\/\/127\.0\.0\.1:\d+)/.exec(seen);
        if (m) resolve(m[1]!);
      });
      server.on("close", () => reject(new Error(`serve exited: ${seen}`)));
    });
    // The SDK reads these too: point every URL it could use at the local server.
    for (const [k, v] of Object.entries({ E2B_API_URL: url, E2B_SANDBOX_URL: url, E2B_API_KEY: apiKey, E2B_DOMAIN: "localhost" })) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    opts = { apiKey, apiUrl: url, sandboxUrl: url };
  });

  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    if (server !== undefined && server.exitCode === null) {
      const closed = new Promise((r) => server.once("close", r));
      server.kill("SIGTERM");
      await closed;
    }
    await daemon?.stop();
  });

  test("the API key store keeps only a hash, mode 0600, and lists and removes keys", async () => {
    const file = join(env.MVM_STATE_DIR!, "e2b", "apikeys.json");
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const { readFileSync } = await import("node:fs");
    assert.ok(!readFileSync(file, "utf8").includes(apiKey));
    const other = await run(env, ["apikey", "create", "--json"]);
    const { id } = JSON.parse(other.stdout) as { id: string };
    const ls = await run(env, ["apikey", "ls", "--json"]);
    assert.equal((JSON.parse(ls.stdout) as unknown[]).length, 2);
    assert.equal((await run(env, ["apikey", "rm", id])).code, 0);
    assert.notEqual((await run(env, ["apikey", "rm", id])).code, 0);
  });

  test("a wrong API key is refused with the SDK's AuthenticationError", async () => {
    await assert.rejects(Sandbox.create({ ...opts, apiKey: "e2b_" + "0".repeat(40) }), AuthenticationError);
    await assert.rejects(Sandbox.list({ ...opts, apiKey: "e2b_wrong" }).nextItems(), AuthenticationError);
  });

  test("an unknown template and an unknown sandbox are the SDK's errors", async () => {
    await assert.rejects(Sandbox.create("no-such-template", opts), (err: unknown) => err instanceof SandboxError && /not found/.test(err.message));
    assert.equal(await Sandbox.kill("sbx_doesnotexist", opts), false);
    await assert.rejects(Sandbox.getInfo("sbx_doesnotexist", opts), NotFoundError);
  });

  test("the wire: bounds, strict bodies, tokens, and calls that are not served fail fast", async () => {
    const post = (path: string, body: string, headers: Record<string, string> = {}) => fetch(`${url}${path}`, { method: "POST", body, headers: { "x-api-key": apiKey, "content-type": "application/json", ...headers } });
    assert.equal((await fetch(`${url}/v2/sandboxes`)).status, 401);
    assert.equal((await post("/v2/sandboxes", "{")).status, 400);
    assert.equal((await post("/v2/sandboxes", JSON.stringify({ templateID: "base", surprise: 1 }))).status, 400);
    assert.equal((await post("/v2/sandboxes", JSON.stringify({ templateID: "base", templateID2: "x".repeat(400_000) }))).status, 413);
    assert.equal((await post("/v2/sandboxes", JSON.stringify({ templateID: "base", allow_internet_access: true }))).status, 400);
    assert.equal((await post("/v2/sandboxes", JSON.stringify({ templateID: "base", timeout: 999_999 }))).status, 400);
    const paused = await post("/sandboxes/sbx_x/pause", "{}");
    assert.equal(paused.status, 501);
    assert.match(((await paused.json()) as { message: string }).message, /not supported/);

    const sbx = await Sandbox.create("base", opts);
    try {
      const envd = (path: string, body: string, headers: Record<string, string>) =>
        fetch(`${url}${path}`, { method: "POST", body, headers: { "e2b-sandbox-id": sbx.sandboxId, "x-access-token": (sbx as unknown as { envdAccessToken: string }).envdAccessToken, ...headers } });
      // a unary call with the wrong codec, a stream without an envelope, an unknown field, client streaming
      const wrongCodec = await envd("/process.Process/List", "{}", { "content-type": "application/proto" });
      assert.equal(wrongCodec.status, 400);
      assert.equal(((await wrongCodec.json()) as { code: string }).code, "invalid_argument");
      const noEnvelope = Buffer.from(await (await envd("/process.Process/Start", "{}", { "content-type": "application/connect+json" })).arrayBuffer());
      assert.equal(noEnvelope.readUInt8(0), 2);
      assert.match(noEnvelope.subarray(5).toString(), /invalid_argument/);
      const unknownField = await envd("/filesystem.Filesystem/Stat", JSON.stringify({ path: "/work", extra: 1 }), { "content-type": "application/json" });
      assert.equal(unknownField.status, 400);
      const tooBig = await envd("/filesystem.Filesystem/Stat", JSON.stringify({ path: "x".repeat(13 * 1024 * 1024) }), { "content-type": "application/json" });
      assert.equal(tooBig.status, 429);
      const streamInput = await envd("/process.Process/StreamInput", "", { "content-type": "application/connect+json" });
      assert.equal(streamInput.status, 501);
      assert.equal(((await streamInput.json()) as { code: string }).code, "unimplemented");
      // a sandbox this API did not make is not reachable through it, even with its token
      const { readFileSync } = await import("node:fs");
      const { accessTokenFor } = await import("./apikeys.js");
      const secret = readFileSync(join(env.MVM_STATE_DIR!, "e2b", "token.key"));
      const { DaemonClient } = await import("@mvm/sdk");
      const engine = new DaemonClient({ socketPath: env.MVM_DAEMON_SOCKET! });
      try {
        const other = await engine.createSandbox({ image: DEFAULT_IMAGE, backend: "namespace", ttlSeconds: 120 });
        try {
          const res = await fetch(`${url}/health`, { headers: { "e2b-sandbox-id": other.id, "x-access-token": accessTokenFor(secret, other.id) } });
          assert.equal(res.status, 502);
          assert.equal(await Sandbox.kill(other.id, opts), false);
        } finally {
          await engine.killSandbox(other.id);
        }
      } finally {
        await engine.close();
      }
    } finally {
      await sbx.kill();
    }
    // a non-loopback address needs --allow-remote
    const remote = await run(env, ["serve", "--e2b", "--host", "0.0.0.0", "--port", "0"]);
    assert.equal(remote.code, 2);
    assert.match(remote.stderr, /allow-remote/);
  });

  test("create, commands, files, pty, watch, timeout, list and kill", async () => {
    const sbx = await Sandbox.create("base", { ...opts, timeoutMs: 120_000, metadata: { purpose: "e2e" } });
    try {
      // commands.run with streaming callbacks
      const out: string[] = [];
      const err: string[] = [];
      const r = await sbx.commands.run("echo hello; echo oops >&2", { onStdout: (d) => void out.push(d), onStderr: (d) => void err.push(d) });
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout, "hello\n");
      assert.equal(r.stderr, "oops\n");
      assert.equal(out.join(""), "hello\n");
      assert.equal(err.join(""), "oops\n");
      await assert.rejects(sbx.commands.run("exit 3"), (e: unknown) => e instanceof CommandExitError && e.exitCode === 3);
      const envd = await sbx.commands.run("echo $FOO; pwd", { envs: { FOO: "bar" }, cwd: "/tmp" });
      assert.equal(envd.stdout, "bar\n/tmp\n");

      // a background command, and connect from a second client
      const bg = await sbx.commands.run("for i in 1 2 3; do echo tick$i; sleep 0.3; done", { background: true });
      const again = await Sandbox.connect(sbx.sandboxId, opts);
      const seen: string[] = [];
      const attached = await again.commands.connect(bg.pid, { onStdout: (d) => void seen.push(d) });
      const done = await attached.wait();
      assert.equal(done.exitCode, 0);
      assert.match(seen.join(""), /tick3/);

      // stdin
      const reader = await sbx.commands.run("read line; echo got:$line", { background: true, stdin: true });
      await sbx.commands.sendStdin(reader.pid, "abc\n");
      assert.equal((await reader.wait()).stdout, "got:abc\n");

      // list and kill a process
      const sleeper = await sbx.commands.run("sleep 100", { background: true });
      assert.ok((await sbx.commands.list()).some((p) => p.pid === sleeper.pid));
      assert.equal(await sbx.commands.kill(sleeper.pid), true);
      await assert.rejects(sleeper.wait(), CommandExitError);
      assert.equal(await sbx.commands.kill(sleeper.pid), false);

      // files
      await sbx.files.write("/work/a.txt", "alpha");
      assert.equal(await sbx.files.read("/work/a.txt"), "alpha");
      const bytes = new Uint8Array([0, 1, 2, 255]);
      await sbx.files.write("/work/b.bin", bytes.buffer);
      assert.deepEqual(await sbx.files.read("/work/b.bin", { format: "bytes" }), bytes);
      await sbx.files.write([
        { path: "/work/many/1.txt", data: "one" },
        { path: "/work/many/2.txt", data: "two" },
      ]);
      assert.equal(await sbx.files.makeDir("/work/d/e"), true);
      assert.equal(await sbx.files.makeDir("/work/d/e"), false);
      const names = (await sbx.files.list("/work")).map((e) => e.name).sort();
      assert.deepEqual(names, ["a.txt", "b.bin", "d", "many"]);
      const deep = await sbx.files.list("/work", { depth: 2 });
      assert.ok(deep.some((e) => e.path === "/work/many/2.txt" && e.type === "file" && e.size === 3));
      const moved = await sbx.files.rename("/work/a.txt", "/work/d/a2.txt");
      assert.equal(moved.path, "/work/d/a2.txt");
      assert.equal(await sbx.files.exists("/work/a.txt"), false);
      assert.equal(await sbx.files.exists("/work/d/a2.txt"), true);
      await sbx.files.remove("/work/d");
      assert.equal(await sbx.files.exists("/work/d"), false);
      await assert.rejects(sbx.files.read("/work/nope.txt"), NotFoundError);

      // watch a directory
      await sbx.files.makeDir("/work/w");
      const events: FilesystemEvent[] = [];
      const watch = await sbx.files.watchDir("/work/w", (e) => void events.push(e));
      await sbx.files.write("/work/w/new.txt", "x");
      await until(() => events.some((e) => e.name === "new.txt"));
      await watch.stop();

      // a PTY session
      let screen = "";
      const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (screen += new TextDecoder().decode(d)) });
      await sbx.pty.sendInput(term.pid, new TextEncoder().encode("echo $((6*7))\n"));
      await until(() => screen.includes("42"));
      await sbx.pty.resize(term.pid, { cols: 100, rows: 30 });
      await sbx.pty.sendInput(term.pid, new TextEncoder().encode("stty size\n"));
      await until(() => screen.includes("30 100"));
      assert.equal(await sbx.pty.kill(term.pid), true);

      // unsupported calls fail fast with the SDK's errors
      await assert.rejects(sbx.commands.run("id", { user: "root" }), InvalidArgumentError);
      await assert.rejects(sbx.getMetrics(), (e: unknown) => e instanceof SandboxError && /not supported/.test(e.message));

      // timeout, info and list
      const before = await sbx.getInfo();
      assert.equal(before.templateId, "base");
      assert.deepEqual(before.metadata, { purpose: "e2e" });
      await sbx.setTimeout(1800_000);
      const later = await sbx.getInfo();
      assert.ok(later.endAt.getTime() > before.endAt.getTime() + 1000_000);
      const listed = await Sandbox.list({ ...opts, query: { metadata: { purpose: "e2e" } } }).nextItems();
      assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId]);

      // envd refuses a wrong access token
      const res = await fetch(`${url}/health`, { headers: { "E2b-Sandbox-Id": sbx.sandboxId, "X-Access-Token": "wrong" } });
      assert.equal(res.status, 401);
    } finally {
      await sbx.kill();
    }
    assert.equal(await sbx.isRunning(), false);
    assert.deepEqual((await Sandbox.list(opts).nextItems()).filter((s) => s.sandboxId === sbx.sandboxId), []);
  });
});
