/**
 * The daemon's request bounds over real HTTP: oversized collections are 400 naming the field and
 * the limit (never a 500 from the agent's frame), a stalled body or unfinished headers time out,
 * and a connection past the cap is answered 503 and closed.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  InternalError,
  MAX_API_REQUEST_JSON_BYTES,
  MAX_EXEC_COMMAND_BYTES,
  MAX_LABELS,
  NotFoundError,
  type EngineApi,
  type HealthInfo,
} from "@mvm/protocol";
import { peerHelper, removePeerHelper, stubEngine } from "./_testing.js";
import { startDaemonServer, type DaemonLimits, type DaemonServer } from "./server.js";

after(removePeerHelper);

const ID = "sbx_abcdefghijklmnopqrst";
const HEALTH: HealthInfo = { version: "test", defaultBackend: null, backends: [] };

async function serve(t: { after(fn: () => Promise<void>): void }, engine: EngineApi, limits: DaemonLimits = {}): Promise<DaemonServer> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-daemon-"));
  const server = await startDaemonServer({ engine, socketPath: join(dir, "run", "mvmd.sock"), limits, peerCredHelper: await peerHelper() });
  t.after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  return server;
}

function call(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: { "Content-Type": "application/json" } }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on("error", reject);
    // Node's client reports EPIPE on a pooled socket whose large body was answered before the server closed.
    req.on("socket", (socket) => socket.on("error", () => {}));
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** Everything the server sends on a raw connection until it closes it. */
function collect(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    socket.setEncoding("utf8").on("data", (c: string) => (text += c));
    socket.on("error", () => {});
    socket.on("close", () => resolve(text));
  });
}

function rawConnect(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
  });
}

test("a create with more labels than the limit is a 400 naming the field and the limit", async (t) => {
  let created = false;
  const server = await serve(t, stubEngine({ createSandbox: async () => ((created = true), Promise.reject(new InternalError("no"))) }));
  const labels = Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`l${i}`, "x"]));
  const answer = await call(server.socketPath, "POST", "/v1/sandboxes", { labels });
  assert.equal(answer.status, 400);
  const { error } = JSON.parse(answer.body) as { error: { code: string; message: string } };
  assert.equal(error.code, "INVALID_ARGUMENT");
  assert.match(error.message, new RegExp(`field "labels" is invalid: at most ${MAX_LABELS} labels`));
  assert.equal(created, false);
});

test("an exec whose env takes more than the agent frame allows is a 400, not a 500", async (t) => {
  const server = await serve(t, stubEngine());
  const answer = await call(server.socketPath, "POST", `/v1/sandboxes/${ID}/exec`, { argv: ["true"], env: { BIG: "x".repeat(128 * 1024) } });
  assert.equal(answer.status, 400);
  const { error } = JSON.parse(answer.body) as { error: { code: string; message: string } };
  assert.equal(error.code, "INVALID_ARGUMENT");
  assert.match(error.message, new RegExp(`limit of ${MAX_EXEC_COMMAND_BYTES} bytes`));
});

test("a request body that stalls is answered 408 and the connection closed", async (t) => {
  let reached = false;
  const server = await serve(t, stubEngine({ createSandbox: async () => ((reached = true), Promise.reject(new InternalError("no"))) }), {
    bodyIdleTimeoutMs: 200,
  });
  const socket = await rawConnect(server.socketPath);
  const answer = collect(socket);
  socket.write("POST /v1/sandboxes HTTP/1.1\r\nHost: mvmd\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"lab");
  const text = await answer;
  assert.match(text, /^HTTP\/1\.1 408 /);
  assert.match(text, /"code":"TIMEOUT"/);
  assert.match(text, /Request body stalled/);
  assert.equal(reached, false);
});

test("a file upload that stalls fails with 408", async (t) => {
  const server = await serve(
    t,
    stubEngine({
      writeFile: async (_id, _path, data) => {
        for await (const chunk of data as AsyncIterable<Uint8Array>) void chunk;
        return { bytes: 0 };
      },
    }),
    { bodyIdleTimeoutMs: 200 },
  );
  const socket = await rawConnect(server.socketPath);
  const answer = collect(socket);
  socket.write(`PUT /v1/sandboxes/${ID}/files/content?path=/work/f HTTP/1.1\r\nHost: mvmd\r\nContent-Length: 1000\r\n\r\nabc`);
  assert.match(await answer, /^HTTP\/1\.1 408 /);
});

test("headers that never finish time out", async (t) => {
  const server = await serve(t, stubEngine(), { headersTimeoutMs: 300 });
  const socket = await rawConnect(server.socketPath);
  const answer = collect(socket);
  socket.write("GET /v1/health HTTP/1.1\r\nHost: mvmd\r\n");
  assert.match(await answer, /^HTTP\/1\.1 408 /);
  // A connection that sends nothing at all is closed the same way.
  const silent = await rawConnect(server.socketPath);
  assert.match(await collect(silent), /^HTTP\/1\.1 408 /);
});

test("a connection past the cap is refused with a 503 and a typed error, the others are served", async (t) => {
  const server = await serve(t, stubEngine({ health: async () => HEALTH }), { maxConnections: 2 });
  const held: Socket[] = [];
  t.after(() => held.forEach((s) => s.destroy()));
  for (let i = 0; i < 2; i++) {
    const socket = await rawConnect(server.socketPath);
    held.push(socket);
    // A full answer on the connection: the server has accepted and counted it.
    await new Promise<void>((resolve) => {
      let text = "";
      socket.setEncoding("utf8").on("data", (c: string) => {
        text += c;
        if (text.includes('"version":"test"')) resolve();
      });
      socket.write("GET /v1/health HTTP/1.1\r\nHost: mvmd\r\n\r\n");
    });
  }
  const extra = await rawConnect(server.socketPath);
  const answer = collect(extra);
  extra.write("GET /v1/health HTTP/1.1\r\nHost: mvmd\r\n\r\n");
  const text = await answer;
  assert.match(text, /^HTTP\/1\.1 503 /);
  assert.match(text, /"code":"TRANSPORT"/);
  assert.match(text, /maximum of 2 connections/);
  assert.doesNotMatch(text, /"version":"test"/);
});

test("a create body over MAX_API_REQUEST_JSON_BYTES is 413 before it is read; an exec may carry more (its stdin)", async (t) => {
  const server = await serve(t, stubEngine({ exec: async () => Promise.reject(new NotFoundError("stub: reached the engine")) }));
  const socket = await rawConnect(server.socketPath);
  const answer = collect(socket);
  socket.write(`POST /v1/sandboxes HTTP/1.1\r\nHost: mvmd\r\nContent-Length: ${MAX_API_REQUEST_JSON_BYTES + 1}\r\n\r\n{`);
  assert.match(await answer, /^HTTP\/1\.1 413 /);
  const stdinBase64 = Buffer.alloc(MAX_API_REQUEST_JSON_BYTES).toString("base64");
  const exec = await call(server.socketPath, "POST", `/v1/sandboxes/${ID}/exec`, { argv: ["cat"], stdinBase64 });
  assert.equal(exec.status, 404);
  assert.match(exec.body, /reached the engine/);
});
