import { test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { lstat, mkdtemp, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AbortedError,
  AlreadyExistsError,
  CommandExitError,
  ERROR_CODES,
  InternalError,
  fromWire,
  type EngineApi,
  type ErrorCode,
} from "@mvm/protocol";
import { HTTP_STATUS_BY_CODE } from "./http-io.js";
import { startDaemonServer, type DaemonServer } from "./server.js";

const ID = "sbx_abcdefghijklmnopqrst";

/** An engine whose every method fails unless overridden; enough to exercise the HTTP layer. */
function stubEngine(overrides: Partial<EngineApi> = {}): EngineApi {
  const unused = async (): Promise<never> => {
    throw new InternalError("Not used by this test");
  };
  const base: Record<string, unknown> = {};
  for (const m of [
    "health", "createSandbox", "getSandbox", "listSandboxes", "killSandbox", "pauseSandbox", "resumeSandbox", "exec", "signalProcess", "writeStdin",
    "listProcesses", "readFile", "writeFile", "listDir", "stat", "mkdir", "remove", "rename", "listImages",
    "buildImage", "importImage", "removeImage", "close",
  ]) base[m] = unused;
  return { ...(base as unknown as EngineApi), ...overrides };
}

async function serve(t: { after(fn: () => Promise<void>): void }, engine: EngineApi): Promise<DaemonServer> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-daemon-"));
  const server = await startDaemonServer({ engine, socketPath: join(dir, "run", "mvmd.sock") });
  t.after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  return server;
}

interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function raw(socketPath: string, method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("the socket is 0600 inside a 0700 directory, and is removed on close", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-daemon-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const socketPath = join(dir, "run", "mvmd.sock");
  const server = await startDaemonServer({ engine: stubEngine(), socketPath });
  assert.equal((await lstat(socketPath)).mode & 0o777, 0o600);
  assert.equal((await lstat(join(dir, "run"))).mode & 0o777, 0o700);
  await server.close();
  assert.equal(existsSync(socketPath), false);
  await server.close();
});

test("a second daemon on a live socket is refused", async (t) => {
  const server = await serve(t, stubEngine());
  await assert.rejects(startDaemonServer({ engine: stubEngine(), socketPath: server.socketPath }), AlreadyExistsError);
});

test("aborting the start signal closes the server", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-daemon-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const controller = new AbortController();
  const socketPath = join(dir, "mvmd.sock");
  const server = await startDaemonServer({ engine: stubEngine(), socketPath, signal: controller.signal });
  assert.equal((await raw(socketPath, "GET", "/v1/health")).status, 500);
  controller.abort();
  await assert.rejects(raw(socketPath, "GET", "/v1/health"), (err: NodeJS.ErrnoException) => ["ENOENT", "ECONNREFUSED", "EPIPE", "ECONNRESET"].includes(err.code ?? ""));
  await server.close();
  assert.equal(existsSync(socketPath), false);
});

test("every error code maps to its HTTP status and survives the wire", async (t) => {
  let code: ErrorCode = "INTERNAL";
  const server = await serve(t, stubEngine({
    getSandbox: async () => {
      if (code === "COMMAND_EXIT") throw new CommandExitError("Command failed", { exitCode: 3 });
      throw fromWire({ code, message: `failure "${code}"`, hint: "do something" });
    },
  }));
  for (const c of ERROR_CODES) {
    code = c;
    const r = await raw(server.socketPath, "GET", `/v1/sandboxes/${ID}`);
    assert.equal(r.status, HTTP_STATUS_BY_CODE[c], c);
    const body = JSON.parse(r.body) as { error: { code: string; message: string; hint?: string; details?: unknown } };
    assert.equal(body.error.code, c);
    if (c === "COMMAND_EXIT") assert.deepEqual(body.error.details, { exitCode: 3 });
    else assert.equal(body.error.hint, "do something");
  }
  assert.equal(HTTP_STATUS_BY_CODE.NOT_FOUND, 404);
  assert.equal(HTTP_STATUS_BY_CODE.INVALID_ARGUMENT, 400);
  assert.equal(HTTP_STATUS_BY_CODE.POLICY_DENIED, 403);
  assert.equal(HTTP_STATUS_BY_CODE.UNSUPPORTED_CAPABILITY, 422);
  assert.equal(HTTP_STATUS_BY_CODE.TIMEOUT, 504);
});

test("bad requests get typed 4xx answers", async (t) => {
  let called = false;
  const server = await serve(t, stubEngine({
    createSandbox: async () => {
      called = true;
      throw new InternalError("must not be reached");
    },
  }));
  const s = server.socketPath;
  const cases: [string, string, string | undefined, number, string][] = [
    ["GET", "/v1/nope", undefined, 404, "NOT_FOUND"],
    ["PUT", "/v1/sandboxes", "{}", 405, "INVALID_ARGUMENT"],
    ["POST", "/v1/sandboxes", "{not json", 400, "INVALID_ARGUMENT"],
    ["POST", "/v1/sandboxes", JSON.stringify({ image: "debian:bookworm", surprise: 1 }), 400, "INVALID_ARGUMENT"],
    ["POST", "/v1/sandboxes", JSON.stringify({ ttlSeconds: -5 }), 400, "INVALID_ARGUMENT"],
    ["GET", "/v1/sandboxes/not-an-id", undefined, 400, "INVALID_ARGUMENT"],
    ["GET", `/v1/sandboxes/${ID}/files/stat?path=relative/path`, undefined, 400, "INVALID_ARGUMENT"],
    ["GET", `/v1/sandboxes/${ID}/files/stat?path=/a/../b`, undefined, 400, "INVALID_ARGUMENT"],
    ["GET", `/v1/sandboxes/${ID}/files/stat`, undefined, 400, "INVALID_ARGUMENT"],
    ["DELETE", `/v1/sandboxes/${ID}/files?path=/a&recursive=maybe`, undefined, 400, "INVALID_ARGUMENT"],
    ["PUT", `/v1/sandboxes/${ID}/files/content?path=/a&mode=999`, "x", 400, "INVALID_ARGUMENT"],
    ["POST", `/v1/sandboxes/${ID}/processes/-1/signal`, JSON.stringify({ signal: "SIGKILL" }), 400, "INVALID_ARGUMENT"],
    ["POST", `/v1/sandboxes/${ID}/processes/1/signal`, JSON.stringify({ signal: "SIGSEGV" }), 400, "INVALID_ARGUMENT"],
    ["DELETE", "/v1/images?ref=UPPER", undefined, 400, "INVALID_ARGUMENT"],
    ["POST", `/v1/sandboxes/${ID}/pause`, JSON.stringify({ ttl: "forever" }), 400, "INVALID_ARGUMENT"],
    ["POST", `/v1/sandboxes/${ID}/pause`, JSON.stringify({ ttl: "frozen", extra: 1 }), 400, "INVALID_ARGUMENT"],
    ["POST", `/v1/sandboxes/${ID}/resume`, JSON.stringify({ ttl: "frozen" }), 400, "INVALID_ARGUMENT"],
    ["GET", `/v1/sandboxes/${ID}/pause`, undefined, 405, "INVALID_ARGUMENT"],
  ];
  for (const [method, path, body, status, code] of cases) {
    const r = await raw(s, method, path, body, body === undefined ? {} : { "Content-Type": "application/json" });
    assert.equal(r.status, status, `${method} ${path}`);
    assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, code, `${method} ${path}`);
  }
  const unknown = await raw(s, "POST", "/v1/sandboxes", JSON.stringify({ image: "debian:bookworm", surprise: 1 }));
  assert.match(unknown.body, /surprise/);
  assert.equal(called, false);
});

test("a body over MAX_API_REQUEST_JSON_BYTES is refused with 413 before it is read", async (t) => {
  const server = await serve(t, stubEngine());
  const r = await new Promise<RawAnswer>((resolve, reject) => {
    const req = request(
      { socketPath: server.socketPath, method: "POST", path: "/v1/sandboxes", headers: { "Content-Length": String(64 * 1024 * 1024) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("error", reject);
    req.write("{");
  });
  assert.equal(r.status, 413);
  assert.equal(r.headers.connection, "close");
  assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, "INVALID_ARGUMENT");
});

test("closing the server aborts requests in flight", async (t) => {
  let aborted: unknown;
  let entered!: () => void;
  const inside = new Promise<void>((resolve) => (entered = resolve));
  const server = await serve(t, stubEngine({
    listSandboxes: (options) =>
      new Promise((_, reject) => {
        entered();
        options?.signal?.addEventListener("abort", () => {
          aborted = options.signal?.reason;
          reject(options.signal?.reason);
        });
      }),
  }));
  const pending = raw(server.socketPath, "GET", "/v1/sandboxes").catch((err: unknown) => err);
  await inside;
  await server.close();
  assert.ok(aborted instanceof AbortedError);
  assert.ok((await pending) instanceof Error);
});

test("pause and resume routes pass the sandbox id and the TTL mode to the engine and answer its SandboxInfo", async (t) => {
  const calls: string[] = [];
  const info = (state: "paused" | "running") => ({ id: ID, state }) as unknown as Awaited<ReturnType<EngineApi["getSandbox"]>>;
  const server = await serve(t, stubEngine({
    pauseSandbox: async (id, request) => {
      calls.push(`pause ${id} ${request?.ttl ?? "default"}`);
      return info("paused");
    },
    resumeSandbox: async (id) => {
      calls.push(`resume ${id}`);
      return info("running");
    },
  }));
  const json = { "Content-Type": "application/json" };
  const paused = await raw(server.socketPath, "POST", `/v1/sandboxes/${ID}/pause`, JSON.stringify({ ttl: "frozen" }), json);
  assert.equal(paused.status, 200);
  assert.equal(JSON.parse(paused.body).state, "paused");
  const plain = await raw(server.socketPath, "POST", `/v1/sandboxes/${ID}/pause`, "{}", json);
  assert.equal(plain.status, 200);
  const resumed = await raw(server.socketPath, "POST", `/v1/sandboxes/${ID}/resume`, "{}", json);
  assert.equal(resumed.status, 200);
  assert.equal(JSON.parse(resumed.body).state, "running");
  assert.deepEqual(calls, [`pause ${ID} frozen`, `pause ${ID} default`, `resume ${ID}`]);
});
