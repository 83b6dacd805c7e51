/**
 * Snapshot routes over real HTTP against a stub engine: what reaches the engine, what the client
 * gets back, and the typed 4xx answers for bad bodies and references (the engine is never called).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NotFoundError, SnapshotInfo, type EngineApi, type SandboxInfo } from "@mvm/protocol";
import { peerHelper, removePeerHelper, stubEngine } from "./_testing.js";
import { startDaemonServer, type DaemonServer } from "./server.js";

after(removePeerHelper);

const ID = "sbx_abcdefghijklmnopqrst";
const SNAP_ID = "snap_abcdefghijklmnopqrst";
const DIGEST = `sha256:${"cd".repeat(32)}`;

const SNAPSHOT: SnapshotInfo = {
  id: SNAP_ID,
  digest: DIGEST,
  createdAt: "2026-12-07T17:00:00.000Z",
  expiresAt: "2026-12-08T17:00:00.000Z",
  retention: { ttlSeconds: 86400 },
  tier: "container",
  memory: false,
  source: ID,
  image: { digest: `sha256:${"ab".repeat(32)}` },
  sizes: { work: { bytes: 4 << 20, storedBytes: 2 << 20, chunks: 2, zeroChunks: 1 } },
  labels: { purpose: "test" },
};

async function serve(t: { after(fn: () => Promise<void>): void }, engine: EngineApi): Promise<DaemonServer> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-daemon-"));
  const server = await startDaemonServer({ engine, socketPath: join(dir, "run", "mvmd.sock"), peerCredHelper: await peerHelper() });
  t.after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  return server;
}

function call(socketPath: string, method: string, path: string, body?: string, accept?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = body === undefined ? {} : { "Content-Type": "application/json" };
    if (accept !== undefined) headers.Accept = accept;
    const req = request({ socketPath, method, path, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("snapshot, fork, list, get and delete pass their arguments to the engine and answer its results", async (t) => {
  const calls: string[] = [];
  const child = { id: "sbx_bbbbbbbbbbbbbbbbbbbb", state: "running" } as unknown as SandboxInfo;
  const server = await serve(t, stubEngine({
    snapshotSandbox: async (id, req) => {
      calls.push(`snapshot ${id} ${JSON.stringify(req)}`);
      return SNAPSHOT;
    },
    forkSandbox: async (id, req) => {
      calls.push(`fork ${id} ${JSON.stringify(req)}`);
      return [child, child];
    },
    listSnapshots: async () => {
      calls.push("list");
      return [SNAPSHOT];
    },
    getSnapshot: async (ref) => {
      calls.push(`get ${ref}`);
      return SNAPSHOT;
    },
    deleteSnapshot: async (ref) => {
      calls.push(`delete ${ref}`);
    },
  }));
  const s = server.socketPath;
  const request = { retention: { ttlSeconds: 86400 }, memory: false, includeEnvSecrets: true, labels: { purpose: "test" } };
  const taken = await call(s, "POST", `/v1/sandboxes/${ID}/snapshots`, JSON.stringify(request));
  assert.equal(taken.status, 201, taken.body);
  assert.deepEqual(SnapshotInfo.parse(JSON.parse(taken.body)), SNAPSHOT);

  const forked = await call(s, "POST", `/v1/sandboxes/${ID}/fork`, JSON.stringify({ count: 2 }));
  assert.equal(forked.status, 201, forked.body);
  assert.deepEqual(JSON.parse(forked.body), { sandboxes: [child, child] });
  assert.equal((await call(s, "POST", `/v1/sandboxes/${ID}/fork`, "{}")).status, 201);

  const listed = await call(s, "GET", "/v1/snapshots");
  assert.equal(listed.status, 200);
  assert.deepEqual(JSON.parse(listed.body), { snapshots: [SNAPSHOT] });

  const byId = await call(s, "GET", `/v1/snapshots/${SNAP_ID}`);
  assert.equal(byId.status, 200);
  assert.deepEqual(JSON.parse(byId.body), SNAPSHOT);
  assert.equal((await call(s, "GET", `/v1/snapshots/${encodeURIComponent(DIGEST)}`)).status, 200);

  const removed = await call(s, "DELETE", `/v1/snapshots/${encodeURIComponent(DIGEST)}`);
  assert.equal(removed.status, 204);
  assert.equal(removed.body, "");

  assert.deepEqual(calls, [
    `snapshot ${ID} ${JSON.stringify(request)}`,
    `fork ${ID} {"count":2}`,
    `fork ${ID} {}`,
    "list",
    `get ${SNAP_ID}`,
    `get ${DIGEST}`,
    `delete ${DIGEST}`,
  ]);
});

test("with Accept: application/x-ndjson, snapshot and fork answer at once and then one result or error line", async (t) => {
  let fail = false;
  const child = { id: "sbx_bbbbbbbbbbbbbbbbbbbb", state: "running" } as unknown as SandboxInfo;
  const server = await serve(t, stubEngine({
    snapshotSandbox: async () => {
      if (fail) throw new NotFoundError(`No sandbox "${ID}"`);
      return SNAPSHOT;
    },
    forkSandbox: async () => [child],
  }));
  const s = server.socketPath;
  const ndjson = "application/x-ndjson";
  const body = JSON.stringify({ retention: { manual: true } });
  const taken = await call(s, "POST", `/v1/sandboxes/${ID}/snapshots`, body, ndjson);
  assert.equal(taken.status, 200);
  assert.deepEqual(taken.body.split("\n").filter(Boolean).map((l) => JSON.parse(l)), [{ type: "result", snapshot: SNAPSHOT }]);
  const forked = await call(s, "POST", `/v1/sandboxes/${ID}/fork`, "{}", ndjson);
  assert.deepEqual(forked.body.split("\n").filter(Boolean).map((l) => JSON.parse(l)), [{ type: "result", sandboxes: [child] }]);
  fail = true;
  const failed = await call(s, "POST", `/v1/sandboxes/${ID}/snapshots`, body, ndjson);
  assert.equal(failed.status, 200);
  const [line, ...rest] = failed.body.split("\n").filter(Boolean).map((l) => JSON.parse(l) as { type: string; error: { code: string } });
  assert.equal(rest.length, 0);
  assert.equal(line?.type, "error");
  assert.equal(line?.error.code, "NOT_FOUND");
});

test("bad snapshot and fork requests are typed 4xx answers and never reach the engine", async (t) => {
  let called = false;
  const reached = async (): Promise<never> => {
    called = true;
    throw new Error("must not be reached");
  };
  const server = await serve(t, stubEngine({ snapshotSandbox: reached, forkSandbox: reached, getSnapshot: reached, deleteSnapshot: reached }));
  const s = server.socketPath;
  const snap = `/v1/sandboxes/${ID}/snapshots`;
  const cases: [string, string, string | undefined, number][] = [
    // Retention is always explicit, and bounded.
    ["POST", snap, "{}", 400],
    ["POST", snap, JSON.stringify({ retention: {} }), 400],
    ["POST", snap, JSON.stringify({ retention: { manual: false } }), 400],
    ["POST", snap, JSON.stringify({ retention: { ttlSeconds: 59 } }), 400],
    ["POST", snap, JSON.stringify({ retention: { ttlSeconds: 91 * 24 * 3600 } }), 400],
    ["POST", snap, JSON.stringify({ retention: { ttlSeconds: 60, manual: true } }), 400],
    ["POST", snap, JSON.stringify({ retention: { manual: true }, memory: "yes" }), 400],
    ["POST", snap, JSON.stringify({ retention: { manual: true }, surprise: 1 }), 400],
    ["POST", snap, JSON.stringify({ retention: { manual: true }, labels: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"])) }), 400],
    ["POST", snap, JSON.stringify({ retention: { manual: true }, labels: { "bad key": "v" } }), 400],
    ["POST", snap, "{not json", 400],
    ["POST", "/v1/sandboxes/not-an-id/snapshots", JSON.stringify({ retention: { manual: true } }), 400],
    ["POST", `/v1/sandboxes/${ID}/fork`, JSON.stringify({ count: 0 }), 400],
    ["POST", `/v1/sandboxes/${ID}/fork`, JSON.stringify({ count: 17 }), 400],
    ["POST", `/v1/sandboxes/${ID}/fork`, JSON.stringify({ count: 1.5 }), 400],
    ["POST", `/v1/sandboxes/${ID}/fork`, JSON.stringify({ count: 2, extra: true }), 400],
    ["GET", "/v1/snapshots/snap_SHOUTING", undefined, 400],
    ["GET", "/v1/snapshots/sha256:abc", undefined, 400],
    ["DELETE", "/v1/snapshots/snap_abcdefghijklmnopqrs%00", undefined, 400],
    ["DELETE", `/v1/snapshots/${encodeURIComponent("snap_abcdefghijklmnopqrst/x")}`, undefined, 400],
    ["PUT", `/v1/snapshots/${SNAP_ID}`, "{}", 405],
    ["GET", `/v1/sandboxes/${ID}/fork`, undefined, 405],
  ];
  for (const [method, path, body, status] of cases) {
    const r = await call(s, method, path, body);
    assert.equal(r.status, status, `${method} ${path} ${body ?? ""}: ${r.body}`);
    assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, "INVALID_ARGUMENT", `${method} ${path}`);
  }
  assert.equal(called, false);
});

test("a body over MAX_API_REQUEST_JSON_BYTES is refused with 413 on the snapshot route", async (t) => {
  const server = await serve(t, stubEngine());
  const labels = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, "v".repeat(256)]));
  const huge = JSON.stringify({ retention: { manual: true }, labels, pad: "x".repeat(9 * 1024 * 1024) });
  const r = await call(server.socketPath, "POST", `/v1/sandboxes/${ID}/snapshots`, huge);
  assert.equal(r.status, 413);
});

test("an engine's NotFoundError for a snapshot is a 404 with its code", async (t) => {
  const server = await serve(t, stubEngine({
    getSnapshot: async (ref) => {
      throw new NotFoundError(`Snapshot "${ref}" not found`);
    },
  }));
  const r = await call(server.socketPath, "GET", `/v1/snapshots/${SNAP_ID}`);
  assert.equal(r.status, 404);
  assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, "NOT_FOUND");
});
