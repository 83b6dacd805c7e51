/**
 * Bundle routes over real HTTP against a stub engine: what reaches the engine, what the client
 * gets back (JSON and NDJSON), and typed 400s for bad bodies (the engine is never called).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BundlePullInfo, BundlePushInfo, SnapshotMismatchError, parseJsonStrict, type PullBundleRequest, type PushBundleRequest } from "@mvm/protocol";
import { peerHelper, removePeerHelper, stubEngine } from "./_testing.js";
import { startDaemonServer } from "./server.js";

after(removePeerHelper);

const DIGEST = `sha256:${"b".repeat(64)}`;
const PUSHED: BundlePushInfo = { digest: DIGEST, uri: `file:///srv/b@${DIGEST}`, kind: "image", bytes: 10, packs: 1, chunks: 1 };
const PULLED: BundlePullInfo = { digest: DIGEST, kind: "image", image: { digest: `sha256:${"1".repeat(64)}`, refs: ["bundle-1111111111111111"] }, fetchedBytes: 10, packsFetched: 1, packs: 1, chunksReused: 0 };

function call(socketPath: string, path: string, body: string, accept?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { "Content-Type": "application/json", ...(accept === undefined ? {} : { Accept: accept }) };
    const req = request({ socketPath, method: "POST", path, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("bundle push and pull pass their requests to the engine and answer its results; bad bodies are 400s", async (t) => {
  const seen: (PushBundleRequest | PullBundleRequest)[] = [];
  const engine = stubEngine({
    pushBundle: async (req) => {
      seen.push(req);
      return PUSHED;
    },
    pullBundle: async (req) => {
      seen.push(req);
      if (req.source.includes("tampered")) throw new SnapshotMismatchError("Bundle does not match its bytes");
      return PULLED;
    },
  });
  const dir = await mkdtemp(join(tmpdir(), "mvm-daemon-"));
  const server = await startDaemonServer({ engine, socketPath: join(dir, "run", "mvmd.sock"), peerCredHelper: await peerHelper() });
  t.after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const push = await call(server.socketPath, "/v1/bundles/push", JSON.stringify({ source: "snap_abcdefghijklmnopqrst", destination: "file:///srv/b" }));
  assert.equal(push.status, 201, push.body);
  assert.deepEqual(BundlePushInfo.parse(parseJsonStrict(push.body)), PUSHED);
  const pull = await call(server.socketPath, "/v1/bundles/pull", JSON.stringify({ source: `file:///srv/b@${DIGEST}`, retention: { manual: true } }));
  assert.equal(pull.status, 201, pull.body);
  assert.deepEqual(BundlePullInfo.parse(parseJsonStrict(pull.body)), PULLED);
  assert.deepEqual(seen, [
    { source: "snap_abcdefghijklmnopqrst", destination: "file:///srv/b" },
    { source: `file:///srv/b@${DIGEST}`, retention: { manual: true } },
  ]);
  const streamed = await call(server.socketPath, "/v1/bundles/pull", JSON.stringify({ source: `file:///srv/tampered@${DIGEST}` }), "application/x-ndjson");
  assert.equal(streamed.status, 200);
  const last = parseJsonStrict(streamed.body.trim().split("\n").at(-1)!) as { type: string; error: { code: string } };
  assert.deepEqual([last.type, last.error.code], ["error", "SNAPSHOT_MISMATCH"]);
  const count = seen.length;
  for (const [path, body] of [
    ["/v1/bundles/push", JSON.stringify({ source: "x" })],
    ["/v1/bundles/push", JSON.stringify({ source: "x", destination: "file:///a", extra: 1 })],
    ["/v1/bundles/pull", JSON.stringify({ source: "" })],
    ["/v1/bundles/pull", JSON.stringify({ source: "file:///a@sha256:1", retention: { ttlSeconds: 1 } })],
  ] as const) {
    const r = await call(server.socketPath, path, body);
    assert.equal(r.status, 400, `${body}: ${r.body}`);
    assert.match(r.body, /INVALID_ARGUMENT/);
  }
  assert.equal(seen.length, count, "the engine is never called for a bad body");
});
