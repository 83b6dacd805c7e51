/**
 * Calls from a function's warm pool through the wrapper the engine pre-started in each warm
 * sandbox (docs/FUNCTIONS.md, "Warm pools"), on the real engine embedded in this process
 * (namespace backend). The rules of a cold call must hold: a fresh key per call that the function
 * never sees, one call per wrapper and per sandbox, a result the function cannot forge, nothing
 * the function runs before its call, and nothing left after.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FN_WRAPPER_COMMAND, FunctionError, parseJsonStrict, type EngineApi, type ProcessInfo } from "@mvm/protocol";
import { openEmbeddedEngine } from "../embedded.js";
import { Sandbox } from "../sandbox.js";
import { fn, type FunctionOptions } from "./function.js";

const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const present = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);
const skip = present ? false : `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh`;

const isWrapper = (argv: readonly string[]): boolean => argv.length === FN_WRAPPER_COMMAND.length && argv.every((a, i) => a === FN_WRAPPER_COMMAND[i]);

describe("fn() calls through the pre-started wrapper of a warm pool", { skip, timeout: 600_000 }, () => {
  let real: EngineApi;
  let engine: EngineApi;
  let stateDir: string;
  let logDir: string;
  /** Every stdin write the SDK sent through the engine, in order. */
  const stdinWrites: Uint8Array[] = [];
  /** Every process list the SDK asked for, in order. */
  const lists: ProcessInfo[][] = [];
  const wrapperPids = (from: number): number[] => lists.slice(from).flatMap((l) => l.filter((p) => isWrapper(p.argv)).map((p) => p.pid));
  const base = (): Omit<FunctionOptions, "id"> => ({ engine, image: IMAGE, backend: "namespace", logDir, onStdout: () => {}, onStderr: () => {} });

  before(async () => {
    stateDir = mkdtempSync(join(tmpdir(), "mvm-sdk-fnpre-"));
    chmodSync(stateDir, 0o711);
    logDir = mkdtempSync(join(tmpdir(), "mvm-sdk-fnpre-logs-"));
    real = await openEmbeddedEngine({ engineOptions: { stateDir, imagesDir: IMAGES, defaultBackend: "namespace" } });
    engine = new Proxy(real, {
      get(target, key) {
        const value = Reflect.get(target, key) as unknown;
        if (key === "listProcesses") {
          return async (...args: unknown[]) => {
            const procs = await (target.listProcesses as (...a: unknown[]) => Promise<ProcessInfo[]>)(...args);
            lists.push(procs);
            return procs;
          };
        }
        if (key === "writeStdin") {
          return (id: string, proc: number, data: Uint8Array | null, options?: unknown) => {
            if (data !== null) stdinWrites.push(data);
            return target.writeStdin(id, proc, data, options as never);
          };
        }
        return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
  });

  after(async () => {
    // Nothing a call started is left running (the engine's own listing; warm sandboxes are not listed).
    const running = (await real.listSandboxes()).filter((s) => s.state !== "stopped");
    await real.close();
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(logDir, { recursive: true, force: true });
    assert.deepEqual(running.map((s) => s.id), []);
  });

  it("a claimed sandbox runs only the engine's wrapper, started before the claim; a create of another workload gets none", async () => {
    const add = fn({ ...base(), id: "pre-claim", warm: 1 }, (a: number, b: number) => a + b);
    assert.equal((await add.warmUp()).ready, 1);
    try {
      const claimedAt = Date.now();
      const sb = await Sandbox.create({ ...add.sandboxOptions(), engine });
      try {
        const procs = await sb.commands.list();
        assert.equal(procs.length, 1, JSON.stringify(procs));
        assert.ok(isWrapper(procs[0]!.argv), `not the wrapper: ${procs[0]!.argv.join(" ")}`);
        assert.ok(procs[0]!.startedAtMs <= claimedAt, "the wrapper was started by the claim, not before it");
      } finally {
        await sb.kill();
      }
      // The same workload without a function is another pool key: a cold sandbox, nothing running.
      const { function: _f, ...plain } = add.sandboxOptions();
      const other = await Sandbox.create({ ...plain, engine });
      try {
        assert.deepEqual(await other.commands.list(), []);
      } finally {
        await other.kill();
      }
    } finally {
      await add.coolDown();
    }
  });

  it("each call gets a fresh key the function never sees, runs in a process started before the call, and leaves nothing", async () => {
    const probe = fn({ ...base(), id: "pre-probe", warm: 2 }, (n: number) => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const fs = require("node:fs") as typeof import("node:fs");
      const tried: Record<string, string> = {};
      const seen: string[] = [];
      for (const what of ["mem", "environ", "fd/0", "maps"]) {
        try {
          seen.push(fs.readFileSync(`/proc/${process.ppid}/${what}`).toString("latin1").slice(0, 4096));
          tried[what] = "read";
        } catch (e) {
          tried[what] = (e as NodeJS.ErrnoException).code ?? "error";
        }
      }
      // Its own stdin is spent (the task); anything still there is returned for the test to check.
      try {
        seen.push(fs.readFileSync(0).toString("latin1"));
      } catch {
        // closed
      }
      return { n, ppid: process.ppid, tried, seen: seen.join("\n"), env: JSON.stringify(process.env) };
    });
    assert.equal((await probe.warmUp()).ready, 2);
    try {
      // The pool's wrappers (and their children) start now; the calls come a good while later.
      await new Promise((r) => setTimeout(r, 1500));
      const before = stdinWrites.length;
      const listed = lists.length;
      const a = await probe.remote(1);
      const b = await probe.remote(2);
      assert.deepEqual([a.n, b.n], [1, 2]);
      // Each call ran in the wrapper the pool started (listed right after the claim, before the call).
      assert.deepEqual([a.ppid, b.ppid], wrapperPids(listed), "a call did not run in its pre-started wrapper");
      // Two requests, each with its own fresh key.
      const keys = stdinWrites.slice(before).map((w) => {
        const line = Buffer.from(w).subarray(0, Buffer.from(w).indexOf(0x0a)).toString("utf8");
        return (parseJsonStrict(line) as { key: string }).key;
      });
      assert.equal(keys.length, 2);
      assert.match(keys[0]!, /^[0-9a-f]{64}$/);
      assert.notEqual(keys[0], keys[1]);
      // The function saw neither key: not in its wrapper's memory or stdin, not in its own environment.
      for (const r of [a, b]) {
        for (const [what, outcome] of Object.entries(r.tried)) assert.notEqual(outcome, "read", `the function read its wrapper's /proc/PID/${what}`);
        for (const key of keys) {
          assert.ok(!r.seen.includes(key), "the function saw a seal key");
          assert.ok(!r.env.includes(key), "the seal key is in the function's environment");
        }
      }
      // Each call's sandbox is destroyed once the call settles; none of the function's runs.
      await probe.settled();
      const running = (await real.listSandboxes()).filter((x) => x.labels["fn.id"] === "pre-probe" && x.state !== "stopped");
      assert.deepEqual(running, []);
    } finally {
      await probe.coolDown();
    }
  });

  it("a function that attacks its pre-started wrapper spoils only its own call; a forged result is never taken", async () => {
    const hostile = fn({ ...base(), id: "pre-hostile", warm: 1 }, (what: string) => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const fs = require("node:fs") as typeof import("node:fs");
      if (what === "forge") {
        // A result file for every call it can guess, claiming 42 under a seal it had to make up.
        const forged = `mvm-fn-result v1\n${"b".repeat(64)}\n{"v":1,"status":"ok","id":"pre-hostile","format":"json","resultBytes":2}\n42`;
        for (const f of fs.readdirSync("/tmp")) if (f.startsWith(".mvm-fn-")) fs.writeFileSync(`/tmp/${f}`, forged);
        try {
          fs.writeFileSync(`/proc/${process.ppid}/fd/0`, "x");
        } catch {
          // its wrapper's stdin is out of reach (the wrapper is not dumpable)
        }
        return 1;
      }
      process.kill(process.ppid, "SIGKILL");
      return 2;
    });
    await hostile.warmUp();
    try {
      // Killing its wrapper: no result, a typed error.
      await assert.rejects(hostile.remote("kill"), (e: unknown) => e instanceof FunctionError && e.kind === "crashed");
      await hostile.warmUp();
      // Scribbling over /tmp: its real result still comes back (sealed), or the call fails typed.
      try {
        assert.equal(await hostile.remote("forge"), 1);
      } catch (e) {
        assert.ok(e instanceof FunctionError || (e as Error).name === "TransportError", String(e));
      }
      await hostile.settled();
      const running = (await real.listSandboxes()).filter((x) => x.labels["fn.id"] === "pre-hostile" && x.state !== "stopped");
      assert.deepEqual(running, []);
    } finally {
      await hostile.coolDown();
    }
  });

  it("map at concurrency 1 and 2 yields every result, in order, though each call answers before its sandbox is destroyed", async () => {
    const add = fn({ ...base(), id: "pre-map" }, (a: number, b: number) => a + b);
    for (const concurrency of [1, 2]) {
      const got: number[] = [];
      for await (const r of add.map([[1, 2], [3, 4], [5, 6]] as [number, number][], { concurrency })) got.push(r);
      assert.deepEqual(got, [3, 7, 11]);
    }
    await add.settled();
  });

  it("a session's first call uses the pre-started wrapper and later calls start their own; each is a fresh process", async () => {
    const pid = fn({ ...base(), id: "pre-session", warm: 1 }, (n: number) => ({ n, pid: process.pid, ppid: process.ppid }));
    await pid.warmUp();
    try {
      await using s = await pid.session();
      const [wrapper] = (await s.sandbox.commands.list()).filter((p) => isWrapper(p.argv));
      assert.ok(wrapper !== undefined, "no pre-started wrapper in the claimed sandbox");
      const a = await s.remote(1);
      const b = await s.remote(2);
      assert.equal(a.ppid, wrapper.pid, "the first call did not run in the pre-started wrapper");
      assert.notEqual(b.ppid, wrapper.pid);
      assert.notEqual(a.pid, b.pid);
      // No wrapper waits in the session's sandbox after its first call.
      assert.deepEqual((await s.sandbox.commands.list()).filter((p) => isWrapper(p.argv)), []);
    } finally {
      await pid.coolDown();
    }
  });
});
