/** files.watch against a hostile watcher: what it prints is bounded and checked before use. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { NotFoundError, TransportError, type EngineApi, type ExecHandlers, type ExitInfo } from "@mvm/protocol";
import { startWatch } from "./watch.js";

/** An engine whose exec prints `lines` (then stays running until killed). */
function printing(lines: (string | Uint8Array)[]): { engine: EngineApi; killed: () => boolean } {
  let killed = false;
  let end: (exit: ExitInfo) => void = () => {};
  const engine = {
    async exec(_id: string, _req: unknown, handlers: ExecHandlers) {
      const exit = new Promise<ExitInfo>((resolve) => (end = resolve));
      queueMicrotask(() => {
        for (const l of lines) handlers.onStdout?.(typeof l === "string" ? Buffer.from(l) : l);
      });
      return { proc: 1, pid: 10, exit };
    },
    async signalProcess() {
      killed = true;
      end({ exitCode: null, signal: "SIGKILL" } as ExitInfo);
    },
  } as unknown as EngineApi;
  return { engine, killed: () => killed };
}

describe("startWatch", () => {
  it("delivers events and stops the watcher on close", async () => {
    const { engine, killed } = printing(['{"ready":true}\n{"type":"create","name":"a"}\n{"type":"write","na', 'me":"d/b"}\n']);
    const w = await startWatch(engine, "sbx_x", "/work");
    const got = [];
    for await (const e of w) {
      got.push(e);
      if (got.length === 2) break;
    }
    assert.deepEqual(got, [
      { type: "create", path: "/work/a" },
      { type: "write", path: "/work/d/b" },
    ]);
    assert.ok(killed());
  });

  it("reports a missing directory as NotFoundError", async () => {
    await assert.rejects(startWatch(printing(['{"error":"ENOENT"}\n']).engine, "sbx_x", "/work"), NotFoundError);
  });

  for (const [what, lines] of [
    ["a malformed line", ['{"ready":true}\n{"type":"create","name":"a","extra":1}\n']],
    ["a duplicate key", ['{"ready":true}\n{"type":"create","name":"a","name":"b"}\n']],
    ["an escaping name", ['{"ready":true}\n{"type":"create","name":"../etc/passwd"}\n']],
    ["an endless line", ['{"ready":true}\n', Buffer.alloc(64 * 1024, 0x41)]],
  ] as const) {
    it(`ends with TransportError and kills the watcher on ${what}`, async () => {
      const { engine, killed } = printing([...lines]);
      const w = await startWatch(engine, "sbx_x", "/work");
      await assert.rejects(
        (async () => {
          for await (const _ of w) void _;
        })(),
        TransportError,
      );
      assert.ok(killed());
    });
  }
});
