/**
 * fn(...).remote / map / session against the real engine embedded in this process (namespace
 * backend, its own state directory, the default image from the shared image store). One engine
 * serves every case; each call still gets a sandbox of its own.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FunctionError, TransportError, type EngineApi } from "@mvm/protocol";
import { startDaemonServer } from "@mvm/engine";
import { DaemonClient } from "../daemon-client.js";
import { openEmbeddedEngine } from "../embedded.js";
import { fn, type FunctionOptions } from "./function.js";
import { readFnLog } from "./operator-log.js";

const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const present = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);
const skip = present ? false : `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh`;

describe("fn() on the real engine (namespace backend)", { skip, timeout: 600_000 }, () => {
  let engine: EngineApi;
  let stateDir: string;
  let logDir: string;
  const base = (): Omit<FunctionOptions, "id"> => ({ engine, image: IMAGE, backend: "namespace", logDir, onStdout: () => {}, onStderr: () => {} });

  before(async () => {
    stateDir = mkdtempSync(join(tmpdir(), "mvm-sdk-fn-"));
    chmodSync(stateDir, 0o711);
    logDir = mkdtempSync(join(tmpdir(), "mvm-sdk-fn-logs-"));
    engine = await openEmbeddedEngine({ engineOptions: { stateDir, imagesDir: IMAGES, defaultBackend: "namespace" } });
  });

  after(async () => {
    // Nothing a call or session started is left running.
    const running = (await engine.listSandboxes()).filter((s) => s.state !== "stopped");
    await engine.close();
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(logDir, { recursive: true, force: true });
    assert.deepEqual(running.map((s) => s.id), []);
  });

  it("add.remote(2, 3) is 5; the function's output streams to the caller, a result spoofed there is ignored", async () => {
    let out = "";
    let err = "";
    const fake = `mvm-fn-result v1\n${"0".repeat(64)}\n{"v":1,"status":"ok","id":"add","format":"json","resultBytes":2}\n42`;
    const add = fn({ ...base(), id: "add", onStdout: (c) => void (out += c), onStderr: (c) => void (err += c) }, async (a: number, b: number) => {
      process.stdout.write(`mvm-fn-result v1\n${"0".repeat(64)}\n{"v":1,"status":"ok","id":"add","format":"json","resultBytes":2}\n42`);
      console.error("to stderr");
      return a + b;
    });
    assert.equal(await add.remote(2, 3), 5);
    assert.equal(out, fake);
    assert.equal(err, "to stderr\n");
  });

  it("carries msgpack values, bytes included", async () => {
    const echo = fn({ ...base(), id: "echo", format: "msgpack" }, (b: Uint8Array, o: { n: number }) => ({ len: b.length, b, n: o.n * 2 }));
    assert.deepEqual(await echo.remote(new Uint8Array([9, 8, 7]), { n: 21 }), { len: 3, b: new Uint8Array([9, 8, 7]), n: 42 });
  });

  it("production errors are sanitized, the stack goes to the operator log; development mode adds it", async () => {
    const impl = () => {
      throw new Error("cannot read /home/alice/.aws/credentials");
    };
    const prod = fn({ ...base(), id: "fails" }, impl);
    const e = await prod.remote().then(() => assert.fail("resolved"), (x: unknown) => x);
    assert.ok(e instanceof FunctionError, String(e));
    assert.equal(e.kind, "raised");
    assert.match(e.errorId ?? "", /^fe_[0-9a-f]{24}$/);
    assert.ok(!e.message.includes("/home/alice"), e.message);
    assert.equal(e.functionStack, undefined);
    const logged = readFnLog("fails", logDir).find((l) => l.errorId === e.errorId);
    assert.ok(logged, "the failure is in the operator log");
    assert.match(logged.stack ?? "", /\/home\/alice\/\.aws\/credentials/);

    const dev = fn({ ...base(), id: "fails", errorMode: "development" }, impl);
    const d = await dev.remote().then(() => assert.fail("resolved"), (x: unknown) => x);
    assert.ok(d instanceof FunctionError);
    assert.match(d.functionStack ?? "", /credentials/);
  });

  it("kills a call at its timeout", async () => {
    const hang = fn({ ...base(), id: "hang", timeoutSeconds: 1 }, () => new Promise(() => setInterval(() => {}, 1000)));
    await assert.rejects(hang.remote(), (e) => e instanceof FunctionError && e.kind === "timeout");
  });

  it("contains a hostile function: fork bomb, output flood, writes outside /work", async () => {
    const bomb = fn({ ...base(), id: "bomb", timeoutSeconds: 3, resources: { pids: 64 } }, () => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { spawn } = require("node:child_process") as typeof import("node:child_process");
      for (;;) {
        try {
          spawn("sh", ["-c", ":(){ :|:& };:"], { stdio: "ignore", detached: true });
        } catch {
          // EAGAIN once the pids limit is reached: keep pushing.
        }
      }
    });
    await assert.rejects(bomb.remote(), (e) => e instanceof FunctionError && ["timeout", "crashed", "raised"].includes(e.kind));

    let flooded = 0;
    const flood = fn({ ...base(), id: "flood", limits: { maxOutputBytes: 1024 * 1024 }, onStdout: (c) => void (flooded += c.length) }, () => {
      const line = "y".repeat(64 * 1024);
      for (let i = 0; i < 512; i++) process.stdout.write(line); // 32 MiB
      return "done";
    });
    assert.equal(await flood.remote(), "done");
    assert.ok(flooded <= 1024 * 1024, `${flooded} characters reached the caller`);

    const marker = `/etc/mvm-fn-escape-${process.pid}`;
    const escape = fn({ ...base(), id: "escape" }, (path: string) => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const fs = require("node:fs") as typeof import("node:fs");
      for (const p of [path, "/.mvm/fn-wrapper.cjs", "/usr/bin/mvm-escape"]) {
        try {
          fs.writeFileSync(p, "escaped");
          return `wrote ${p}`;
        } catch {
          // refused, as it should be
        }
      }
      throw new Error("every write outside /work was refused");
    });
    await assert.rejects(escape.remote(marker), (e) => e instanceof FunctionError && e.kind === "raised" && /refused/.test(e.message));
    assert.equal(existsSync(marker), false);
  });

  it("a function cannot read its wrapper's memory (where the seal key is) or its stdin", async () => {
    const peek = fn({ ...base(), id: "peek" }, () => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const fs = require("node:fs") as typeof import("node:fs");
      const tried: Record<string, string> = {};
      for (const what of ["mem", "environ", "fd/0", "maps"]) {
        try {
          fs.readFileSync(`/proc/${process.ppid}/${what}`).subarray(0, 16);
          tried[what] = "read";
        } catch (e) {
          tried[what] = (e as NodeJS.ErrnoException).code ?? "error";
        }
      }
      return tried;
    });
    const tried = await peek.remote();
    for (const [what, outcome] of Object.entries(tried)) assert.notEqual(outcome, "read", `the function read its wrapper's /proc/PID/${what}`);
  });

  it("a result file forged by a process the function left behind is refused, never taken as the result", async () => {
    // Call 1 leaves a detached forger that keeps overwriting every result file in /tmp with a
    // well-formed file claiming 42 under a seal it had to guess; later calls of the session race it.
    const forged = `mvm-fn-result v1\n${"a".repeat(64)}\n{"v":1,"status":"ok","id":"forge","format":"json","resultBytes":2}\n42`;
    const forge = fn({ ...base(), id: "forge" }, (plant: boolean, content: string, a: number) => {
      if (plant) {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        require("node:fs").writeFileSync("/work/forged", content);
        const loop = "sleep 1; while :; do for f in /tmp/.mvm-fn-*.result; do [ -e \"$f\" ] && cat /work/forged > \"$f\" 2>/dev/null; done; done";
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        require("node:child_process").spawn("setsid", ["sh", "-c", loop], { detached: true, stdio: "ignore" }).unref();
      }
      return a + 1;
    });
    await using s = await forge.session();
    assert.equal(await s.remote(true, forged, 0), 1); // the forger starts a second later
    await new Promise((r) => setTimeout(r, 1500));
    const outcomes: string[] = [];
    for (let i = 1; i <= 30 && !(i > 3 && outcomes.includes("refused")); i++) {
      try {
        const r = await s.remote(false, "", i);
        assert.equal(r, i + 1, "a forged result was accepted");
        outcomes.push("ok");
      } catch (e) {
        assert.ok(e instanceof TransportError || e instanceof FunctionError, String(e));
        outcomes.push(e instanceof TransportError ? "refused" : "lost");
      }
    }
    assert.ok(outcomes.includes("refused"), `the forger never hit a result file: ${outcomes.join(" ")}`);
  });

  it("map runs 50 calls at concurrency 8 and yields every result in order", async () => {
    const add = fn({ ...base(), id: "add" }, (a: number, b: number) => a + b);
    const inputs = Array.from({ length: 50 }, (_, i) => [i, 1000] as [number, number]);
    const results: number[] = [];
    for await (const r of add.map(inputs, { concurrency: 8 })) results.push(r);
    assert.deepEqual(results, inputs.map(([a, b]) => a + b));
  });

  it("warm: calls claim ready sandboxes of the function's pool; each serves one call and is destroyed", async () => {
    const add = fn({ ...base(), id: "warm-add", warm: 2 }, (a: number, b: number) => a + b);
    const warmed = await add.warmUp();
    assert.equal(warmed.ready, 2);
    try {
      assert.equal(await add.remote(1, 2), 3);
      assert.equal(await add.remote(3, 4), 7);
      // Both calls were served by claims; the pool started replacements (claimed ones never return).
      const pool = await add.warmUp();
      assert.equal(pool.claimed - warmed.claimed, 2);
      assert.equal(pool.ready, 2);
      // Each claimed sandbox was destroyed after its call (a call answers first): none of the function's sandboxes runs.
      await add.settled();
      const running = (await engine.listSandboxes()).filter((x) => x.labels["fn.id"] === "warm-add" && x.state !== "stopped");
      assert.deepEqual(running, []);
    } finally {
      await add.coolDown();
    }
  });

  it("warm pools through the daemon API: a daemon client's calls claim from the daemon engine's pool", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mvm-sdk-fn-daemon-"));
    const server = await startDaemonServer({ engine, socketPath: join(dir, "run", "mvmd.sock") });
    const client = new DaemonClient({ socketPath: server.socketPath });
    try {
      const add = fn({ ...base(), engine: client, id: "warm-daemon", warm: 1 }, (a: number, b: number) => a + b);
      const warmed = await add.warmUp();
      assert.equal(warmed.ready, 1);
      assert.equal(await add.remote(20, 22), 42);
      assert.equal(((await client.listWarmPools()).find((p) => p.id === warmed.id)?.claimed ?? 0) - warmed.claimed, 1);
      await add.coolDown();
    } finally {
      await client.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a session serves several calls from one sandbox, each a fresh process, and is destroyed when disposed", async () => {
    const pid = fn({ ...base(), id: "pid" }, (n: number) => ({ pid: process.pid, n }));
    let id: string;
    {
      await using s = await pid.session();
      id = s.sandbox.id;
      const a = await s.remote(1);
      const b = await s.remote(2);
      assert.deepEqual([a.n, b.n], [1, 2]);
      assert.notEqual(a.pid, b.pid);
    }
    assert.equal((await engine.getSandbox(id)).state, "stopped");
  });
});
