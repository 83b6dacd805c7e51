import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { NotFoundError, type EngineApi, type KillSignal, type ProcessInfo } from "@mvm/protocol";
import { ConnectError } from "./connect.js";
import { ProcessService, StartRequest, endEvent, type EnvdCall } from "./envd-process.js";
import { exitInfo } from "../_test/fake-engine.js";

/** An engine with only the process calls, over a table of live processes (proc → pid). */
function engineOf(live: Map<number, number>, calls: string[]): EngineApi {
  const known = (proc: number): void => {
    if (!live.has(proc)) throw new NotFoundError(`no proc ${proc}`);
  };
  return {
    async listProcesses(): Promise<ProcessInfo[]> {
      calls.push("list");
      return [...live].map(([proc, pid]) => ({ proc, pid, argv: ["sleep", "9"], startedAtMs: 0 }));
    },
    async signalProcess(_id: string, proc: number, signal: KillSignal): Promise<void> {
      calls.push(`signal ${proc} ${signal}`);
      known(proc);
    },
    async writeStdin(_id: string, proc: number, data: Uint8Array | null): Promise<void> {
      calls.push(`stdin ${proc} ${data === null ? "close" : Buffer.from(data).toString()}`);
      known(proc);
    },
  } as unknown as EngineApi;
}

function callOf(engine: EngineApi): EnvdCall {
  return { engine, sandboxId: "sbx_a", signal: new AbortController().signal, timeoutMs: undefined, keepaliveSeconds: undefined };
}

describe("envd process service", () => {
  test("a remembered process is addressed without a listing; one the engine forgot is looked up again by pid", async () => {
    const calls: string[] = [];
    const live = new Map([[7, 10]]);
    const service = new ProcessService();
    const call = callOf(engineOf(live, calls));
    service.table.remember("sbx_a", 10, { proc: 7, pty: false, tag: undefined });
    await service.sendInput(call, { process: { pid: 10 }, input: { stdin: Buffer.from("hi").toString("base64") } });
    assert.deepEqual(calls.splice(0), ["stdin 7 hi"]);
    // pid 10 now belongs to another process (proc 8): the stale entry is dropped, the call retried.
    live.clear();
    live.set(8, 10);
    await service.sendSignal(call, { process: { pid: 10 }, signal: "SIGNAL_SIGKILL" });
    assert.deepEqual(calls.splice(0), ["signal 7 SIGKILL", "list", "signal 8 SIGKILL"]);
    live.clear();
    await assert.rejects(service.sendSignal(call, { process: { pid: 10 }, signal: "SIGNAL_SIGTERM" }), (e: unknown) => e instanceof ConnectError && e.code === "not_found");
    await assert.rejects(service.closeStdin(call, { process: { tag: "none" } }), (e: unknown) => e instanceof ConnectError && e.code === "not_found");
  });

  test("requests are strict: unknown fields, a missing signal and a zero PTY size are refused", async () => {
    const service = new ProcessService();
    const call = callOf(engineOf(new Map([[7, 10]]), []));
    assert.equal(StartRequest.safeParse({ process: { cmd: "/bin/true", shell: true } }).success, false);
    assert.equal(StartRequest.safeParse({ process: { cmd: "x", args: Array(64).fill("a") } }).success, false);
    await assert.rejects(service.sendSignal(call, { process: { pid: 10 } }), (e: unknown) => e instanceof ConnectError && e.code === "invalid_argument");
    await assert.rejects(service.sendSignal(call, { process: { pid: 10 }, signal: "SIGNAL_SIGHUP" }));
    await assert.rejects(service.update(call, { process: { pid: 10 }, pty: { size: { cols: 0, rows: 24 } } }), (e: unknown) => e instanceof ConnectError && e.code === "invalid_argument");
    await assert.rejects(service.list(call, { extra: 1 }));
  });

  test("the end event says how the process ended", () => {
    assert.deepEqual(endEvent(exitInfo("sbx_a", { exitCode: 3 })), { event: { end: { exitCode: 3, exited: true, status: "exit status 3" } } });
    assert.deepEqual(endEvent(exitInfo("sbx_a", { exitCode: null, signal: "SIGKILL", timedOut: true })), {
      event: { end: { exitCode: -1, exited: false, status: "signal: SIGKILL", error: "the process reached its time limit" } },
    });
  });
});
