import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { InternalError, TransportError, UnsupportedCapabilityError } from "@mvm/protocol";
import { startDaemonServer } from "@mvm/engine";
import { selectEngine } from "./connect.js";
import { DaemonClient } from "./daemon-client.js";
import { EmbeddedEngine } from "./embedded.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { scratchDir, type TestContextLike } from "./_test/harness.js";

/** An importer standing in for `import("@mvm/engine")`, recording what openEngine got. */
function fakeImporter(): { importEngine: () => Promise<unknown>; opened: { options: unknown; engine: FakeEngine }[] } {
  const opened: { options: unknown; engine: FakeEngine }[] = [];
  return {
    opened,
    importEngine: async () => ({
      openEngine: async (options?: object) => {
        const engine = new FakeEngine();
        opened.push({ options, engine });
        return engine;
      },
    }),
  };
}

/** Environment whose default socket is `<dir>/mvm/mvmd.sock` for a non-root uid. */
async function env(t: TestContextLike): Promise<{ deps: { env: NodeJS.ProcessEnv; uid: number }; socketPath: string }> {
  const dir = await scratchDir(t);
  return { deps: { env: { XDG_RUNTIME_DIR: dir }, uid: 1000 }, socketPath: join(dir, "mvm", "mvmd.sock") };
}

test("auto mode without a daemon embeds the engine, once per process", async (t) => {
  const { deps } = await env(t);
  const importer = fakeImporter();
  const first = await selectEngine({ engineOptions: { stateDir: "/x" } }, { ...deps, importEngine: importer.importEngine });
  assert.ok(first instanceof EmbeddedEngine);
  assert.equal(first.transport, "embedded");
  assert.deepEqual(importer.opened[0]?.options, { stateDir: "/x" });
  assert.equal((await first.health()).version, "0.0.0-fake");

  const again = await selectEngine({ mode: "embedded" }, { importEngine: importer.importEngine });
  assert.equal(again, first);
  assert.equal(importer.opened.length, 1);

  const hooks = process.listenerCount("beforeExit");
  await first.close();
  assert.equal(importer.opened[0]?.engine.closed, true);
  assert.equal(process.listenerCount("beforeExit"), hooks - 1);

  const fresh = await selectEngine({ mode: "embedded" }, { importEngine: importer.importEngine });
  assert.notEqual(fresh, first);
  assert.equal(importer.opened.length, 2);
  await fresh.close();
});

test("auto mode uses a daemon that answers on the default socket", async (t) => {
  const { deps, socketPath } = await env(t);
  const engine = new FakeEngine();
  const server = await startDaemonServer({ engine, socketPath });
  t.after(() => server.close());
  const importer = fakeImporter();
  const chosen = await selectEngine({}, { ...deps, importEngine: importer.importEngine });
  t.after(() => chosen.close());
  assert.ok(chosen instanceof DaemonClient);
  assert.equal(chosen.socketPath, socketPath);
  assert.equal(importer.opened.length, 0);
});

test("auto mode treats a stale socket file as no daemon", async (t) => {
  const { deps, socketPath } = await env(t);
  const code = `require("node:fs").mkdirSync(${JSON.stringify(join(socketPath, ".."))});require("node:net").createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, "SIGKILL"))`;
  spawnSync(process.execPath, ["-e", code]);
  assert.ok(existsSync(socketPath));
  const importer = fakeImporter();
  const chosen = await selectEngine({}, { ...deps, importEngine: importer.importEngine });
  assert.equal(chosen.transport, "embedded");
  await chosen.close();
});

test("a named daemon must answer: explicit path, environment, or daemon mode", async (t) => {
  const { deps, socketPath } = await env(t);
  const importer = fakeImporter();
  const noDaemon = (err: unknown): boolean => {
    assert.ok(err instanceof TransportError);
    assert.match(err.message, /No daemon answers on/);
    assert.equal(err.hint, "Start one with: mvmctl daemon");
    return true;
  };
  const injected = { ...deps, importEngine: importer.importEngine };
  await assert.rejects(selectEngine({ socketPath }, injected), noDaemon);
  await assert.rejects(selectEngine({}, { ...injected, env: { ...deps.env, MVM_DAEMON_SOCKET: socketPath } }), noDaemon);
  await assert.rejects(selectEngine({ mode: "daemon" }, injected), noDaemon);
  assert.equal(importer.opened.length, 0);
});

test("embedded mode without @mvm/engine is UnsupportedCapabilityError with a hint", async () => {
  const missing = async (): Promise<never> => {
    throw Object.assign(new Error("Cannot find package '@mvm/engine'"), { code: "ERR_MODULE_NOT_FOUND" });
  };
  await assert.rejects(selectEngine({ mode: "embedded" }, { importEngine: missing }), (err: unknown) => {
    assert.ok(err instanceof UnsupportedCapabilityError);
    assert.match(err.hint ?? "", /mvmctl daemon/);
    return true;
  });
  await assert.rejects(selectEngine({ mode: "embedded" }, { importEngine: async () => ({}) }), InternalError);
});

test("the embedded engine is closed when the process runs out of work", async (t) => {
  const dir = await scratchDir(t);
  const marker = join(dir, "closed");
  const connect = pathToFileURL(join(import.meta.dirname, "connect.js")).href;
  const script = `
    import { writeFileSync } from "node:fs";
    import { selectEngine } from ${JSON.stringify(connect)};
    const engine = { health: async () => ({}), close: async () => writeFileSync(${JSON.stringify(marker)}, "yes") };
    const e = await selectEngine({ mode: "embedded" }, { importEngine: async () => ({ openEngine: async () => engine }) });
    if (e.transport !== "embedded") process.exit(3);
  `;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(existsSync(marker), "the beforeExit hook closed the engine");
});
