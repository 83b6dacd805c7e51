/**
 * The DaemonClient against a hostile "daemon": a raw socket server that answers with oversized,
 * endless, malformed or schema-breaking HTTP. Every case must end in a typed error, never a hang
 * or unbounded buffering.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import { NotFoundError, TimeoutError, TransportError } from "@mvm/protocol";
import { DaemonClient, type DaemonClientOptions } from "./daemon-client.js";
import { scratchDir, type TestContextLike } from "./_test/harness.js";

const ID = "sbx_abcdefghijklmnopqrst";

type Scenario = (socket: Socket, requestLine: string) => void;

/** Serves `scenario` to every connection once the request head has arrived. */
async function hostile(t: TestContextLike, scenario: Scenario, options: Omit<DaemonClientOptions, "socketPath"> = {}): Promise<DaemonClient> {
  const socketPath = join(await scratchDir(t), "evil.sock");
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let head = "";
    const onData = (chunk: Buffer): void => {
      head += chunk.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (end === -1) return;
      socket.off("data", onData);
      socket.resume();
      scenario(socket, head.slice(0, head.indexOf("\r\n")));
    };
    socket.on("data", onData);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const client = new DaemonClient({ ...options, socketPath });
  t.after(async () => {
    await client.close();
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return client;
}

/** Writes `chunk` forever, as fast as the peer reads, until the connection ends. */
function forever(socket: Socket, chunk: Buffer): void {
  let open = true;
  socket.on("close", () => (open = false));
  const pump = (): void => {
    while (open && socket.write(chunk));
    if (open) socket.once("drain", pump);
  };
  pump();
}

function answer(socket: Socket, status: number, body: string, headers: Record<string, string> = {}): void {
  const lines = [`HTTP/1.1 ${status} X`, "Content-Type: application/json", `Content-Length: ${Buffer.byteLength(body)}`];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  socket.end(`${lines.join("\r\n")}\r\n\r\n${body}`);
}

const isTransport = (pattern: RegExp) => (err: unknown) => {
  assert.ok(err instanceof TransportError, `expected TransportError, got ${String(err)}`);
  assert.match(err.message, pattern);
  return true;
};

const HEALTH = { version: "1", defaultBackend: null, backends: [] };

test("a declared body over the cap is refused before it is read", async (t) => {
  const client = await hostile(t, (s) => {
    s.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{");
  });
  await assert.rejects(client.health(), isTransport(/body of 1073741824 bytes, over the limit/));
});

test("an endless chunked body is cut at the cap", async (t) => {
  const cap = 1024 * 1024;
  const client = await hostile(
    t,
    (s) => {
      s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
      const data = Buffer.alloc(64 * 1024, 0x20);
      forever(s, Buffer.concat([Buffer.from(`${data.byteLength.toString(16)}\r\n`), data, Buffer.from("\r\n")]));
    },
    { maxJsonBytes: cap },
  );
  await assert.rejects(client.health(), isTransport(/over the limit of 1048576 bytes/));
});

test("an NDJSON line that never ends is cut at the line cap", async (t) => {
  const client = await hostile(t, (s) => {
    s.write("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n");
    const started = '{"type":"started","proc":1,"pid":2}\n';
    s.write(`${Buffer.byteLength(started).toString(16)}\r\n${started}\r\n`);
    const data = Buffer.alloc(64 * 1024, 0x61);
    forever(s, Buffer.concat([Buffer.from(`${data.byteLength.toString(16)}\r\n`), data, Buffer.from("\r\n")]));
  });
  const started = await client.exec(ID, { argv: ["x"] }, {});
  assert.equal(started.pid, 2);
  await assert.rejects(started.exit, isTransport(/NDJSON line longer than 1048576 bytes/));
});

test("malformed and schema-breaking answers are TransportErrors", async (t) => {
  const bodies: Record<string, [number, string]> = {
    "/v1/health": [200, '{"version":'],
    "/v1/images": [200, JSON.stringify({ images: {} })],
    [`/v1/sandboxes/${ID}`]: [404, JSON.stringify({ error: { code: "NOPE", message: "x" } })],
    "/v1/sandboxes": [200, JSON.stringify({ sandboxes: [{ id: ID }] })],
    [`/v1/sandboxes/${ID}/processes`]: [500, "<html>oops</html>"],
  };
  const client = await hostile(t, (s, line) => {
    const path = line.split(" ")[1] ?? "";
    const [status, body] = bodies[path] ?? [200, JSON.stringify({ ...HEALTH, surprise: 1 })];
    answer(s, status, body);
  });
  await assert.rejects(client.health(), isTransport(/not UTF-8 JSON/));
  await assert.rejects(client.listImages(), isTransport(/invalid body/));
  await assert.rejects(client.getSandbox(ID), isTransport(/status 404 with an invalid error body/));
  await assert.rejects(client.listSandboxes(), isTransport(/invalid body at "sandboxes\.0\./));
  await assert.rejects(client.listProcesses(ID), isTransport(/status 500 without a readable error body/));
  await assert.rejects(client.listDir(ID, "/x"), isTransport(/invalid body/));
});

test("bytes that are not UTF-8 are refused", async (t) => {
  const client = await hostile(t, (s) => {
    const body = Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]);
    s.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.byteLength}\r\n\r\n`), body]));
  });
  await assert.rejects(client.health(), isTransport(/not UTF-8 JSON/));
});

test("a well-formed error body still becomes the typed error", async (t) => {
  const client = await hostile(t, (s) => answer(s, 404, JSON.stringify({ error: { code: "NOT_FOUND", message: "gone", hint: "h" } })));
  await assert.rejects(client.health(), (err: unknown) => err instanceof NotFoundError && err.hint === "h");
});

test("silence, early close and garbage never hang", async (t) => {
  const silent = await hostile(t, () => {}, { headersTimeoutMs: 100 });
  await assert.rejects(silent.health(), (err: unknown) => err instanceof TimeoutError && /no answer within 100 ms/.test(err.message));
  const stalled = await hostile(t, (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"), { requestTimeoutMs: 100 });
  await assert.rejects(stalled.health(), TimeoutError);
  const closer = await hostile(t, (s) => s.destroy());
  await assert.rejects(closer.health(), TransportError);
  const garbage = await hostile(t, (s) => s.end("SSH-2.0-OpenSSH\r\n\r\n"));
  await assert.rejects(garbage.health(), TransportError);
  const headerFlood = await hostile(t, (s) => {
    s.write("HTTP/1.1 200 OK\r\n");
    forever(s, Buffer.from(`X-Flood: ${"a".repeat(1000)}\r\n`));
  });
  await assert.rejects(headerFlood.health(), TransportError);
});

test("exec streams that break the protocol are TransportErrors", async (t) => {
  const streams: Record<string, string[]> = {
    nobase64: ['{"type":"started","proc":1,"pid":2}', '{"type":"stdout","data":"!!!!"}'],
    noexit: ['{"type":"started","proc":1,"pid":2}', '{"type":"stdout","data":"aGk="}'],
    early: ['{"type":"stdout","data":"aGk="}'],
    twice: ['{"type":"started","proc":1,"pid":2}', '{"type":"started","proc":1,"pid":2}'],
    mistyped: ['{"type":"started","proc":"1","pid":2}'],
    midline: ['{"type":"started","proc":1,"pid":2}', '{"type":"std'],
  };
  let which = "";
  const client = await hostile(t, (s) => {
    const lines = streams[which] ?? [];
    const body = which === "midline" ? lines.join("\n") : `${lines.join("\n")}\n`;
    s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  const run = async (name: string): Promise<void> => {
    which = name;
    const started = await client.exec(ID, { argv: ["x"] }, {});
    await started.exit;
  };
  await assert.rejects(run("nobase64"), isTransport(/not base64/));
  await assert.rejects(run("noexit"), isTransport(/without "exit"/));
  await assert.rejects(run("early"), isTransport(/"stdout" before "started"/));
  await assert.rejects(run("twice"), isTransport(/"started" twice/));
  await assert.rejects(run("mistyped"), isTransport(/invalid body/));
  await assert.rejects(run("midline"), isTransport(/ends mid-line/));
});

test("file bodies must match their Content-Length", async (t) => {
  let mode = "";
  const client = await hostile(t, (s) => {
    if (mode === "short") s.end("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
    else s.end("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n0\r\n\r\n");
  });
  mode = "short";
  const file = await client.readFile(ID, "/x");
  assert.equal(file.size, 10);
  await assert.rejects(
    (async () => {
      for await (const _ of file.body);
    })(),
    TransportError,
  );
  mode = "chunked";
  await assert.rejects(client.readFile(ID, "/x"), isTransport(/without a valid Content-Length/));
});

test("snapshot answers that are malformed, out of schema, oversized or the wrong size are TransportErrors", async (t) => {
  const snap = {
    id: "snap_abcdefghijklmnopqrst",
    digest: `sha256:${"cd".repeat(32)}`,
    createdAt: "2026-12-07T17:00:00.000Z",
    retention: { manual: true },
    tier: "container",
    memory: false,
    source: ID,
    image: { digest: `sha256:${"ab".repeat(32)}` },
    sizes: {},
    labels: {},
  };
  const kid = (id: string) => ({ id, state: "running" });
  const ndjson = (s: Socket, lines: unknown[]): void => {
    const body = lines.map((l) => `${JSON.stringify(l)}\n`).join("");
    s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  };
  let mode = "";
  const client = await hostile(
    t,
    (s) => {
      switch (mode) {
        case "snapshot-mistyped":
          return ndjson(s, [{ type: "result", snapshot: { ...snap, source: 7 } }]);
        case "snapshot-bad-id":
          return ndjson(s, [{ type: "result", snapshot: { ...snap, id: "snap_../../etc" } }]);
        case "snapshot-negative":
          return ndjson(s, [{ type: "result", snapshot: { ...snap, sizes: { ram: { bytes: -1, storedBytes: 0, chunks: 0, zeroChunks: 0 } } } }]);
        case "snapshot-no-result":
          return ndjson(s, [{ type: "progress", event: { phase: "capture", message: "x" } }]);
        case "snapshot-twice":
          return ndjson(s, [{ type: "result", snapshot: snap }, { type: "result", snapshot: snap }]);
        case "snapshot-huge-line": {
          s.write("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n");
          const data = Buffer.alloc(64 * 1024, 0x61);
          return forever(s, Buffer.concat([Buffer.from(`${data.byteLength.toString(16)}\r\n`), data, Buffer.from("\r\n")]));
        }
        case "fork-short":
          return ndjson(s, [{ type: "result", sandboxes: [] }]);
        case "fork-too-many":
          return ndjson(s, [{ type: "result", sandboxes: Array.from({ length: 17 }, () => kid(ID)) }]);
        case "list-mistyped":
          return answer(s, 200, JSON.stringify({ snapshots: snap }));
        case "list-huge":
          return answer(s, 200, JSON.stringify({ snapshots: Array.from({ length: 2000 }, () => snap) }));
        case "get-label":
          return answer(s, 200, JSON.stringify({ ...snap, labels: { k: "v".repeat(257) } }));
        case "get-other":
          return answer(s, 200, JSON.stringify(snap));
        case "delete-body":
          return answer(s, 200, JSON.stringify({ deleted: true }));
        default:
          return answer(s, 500, "?");
      }
    },
    { maxJsonBytes: 256 * 1024 },
  );
  const take = () => client.snapshotSandbox(ID, { retention: { manual: true } });
  const as = async (m: string, call: () => Promise<unknown>, pattern: RegExp): Promise<void> => {
    mode = m;
    await assert.rejects(call(), isTransport(pattern), m);
  };
  await as("snapshot-mistyped", take, /invalid body/);
  await as("snapshot-bad-id", take, /invalid body/);
  await as("snapshot-negative", take, /invalid body/);
  await as("snapshot-no-result", take, /without a result/);
  await as("snapshot-twice", take, /lines after its result/);
  await as("snapshot-huge-line", take, /NDJSON line longer than 1048576 bytes/);
  await as("fork-short", () => client.forkSandbox(ID, { count: 2 }), /invalid body/);
  await as("fork-too-many", () => client.forkSandbox(ID, { count: 2 }), /invalid body/);
  await as("list-mistyped", () => client.listSnapshots(), /invalid body/);
  await as("list-huge", () => client.listSnapshots(), /over the limit of 262144/);
  await as("get-label", () => client.getSnapshot(snap.id), /invalid body/);
  mode = "get-other";
  await assert.rejects(client.getSnapshot("snap_zzzzzzzzzzzzzzzzzzzz"), isTransport(/answered snapshot "snap_abcdefghijklmnopqrst" for "snap_z+"/));
  assert.equal((await client.getSnapshot(snap.digest)).id, snap.id);
  await as("delete-body", () => client.deleteSnapshot(snap.id), /answered an unexpected body/);
});

test("a fork answer with another number of sandboxes than asked for, or not distinct new ones, is a TransportError", async (t) => {
  const info = {
    id: ID,
    state: "running",
    backend: "namespace",
    tier: "container",
    image: { ref: "x", digest: `sha256:${"ab".repeat(32)}` },
    createdAt: "2026-12-07T17:00:00.000Z",
    expiresAt: "2026-12-07T18:00:00.000Z",
    resources: {},
    workMiB: 1024,
    labels: {},
  };
  const KID = "sbx_bbbbbbbbbbbbbbbbbbbb";
  let sandboxes: unknown[] = [{ ...info, id: KID }];
  const client = await hostile(t, (s) => {
    const body = `${JSON.stringify({ type: "result", sandboxes })}\n`;
    s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  assert.deepEqual((await client.forkSandbox(ID, { count: 1 })).map((s) => s.id), [KID]);
  await assert.rejects(client.forkSandbox(ID, { count: 3 }), isTransport(/answered 1 sandboxes for 3 asked for/));
  // A child that is the parent (or the same child twice) would be killed as a child: refused.
  sandboxes = [info];
  await assert.rejects(client.forkSandbox(ID, { count: 1 }), isTransport(/not distinct new sandboxes/));
  sandboxes = [{ ...info, id: KID }, { ...info, id: KID }];
  await assert.rejects(client.forkSandbox(ID, { count: 2 }), isTransport(/not distinct new sandboxes/));
});

test("a snapshot answer for another sandbox than the one asked for is a TransportError", async (t) => {
  const snap = {
    id: "snap_abcdefghijklmnopqrst",
    digest: `sha256:${"cd".repeat(32)}`,
    createdAt: "2026-12-07T17:00:00.000Z",
    retention: { manual: true },
    tier: "container",
    memory: false,
    source: "sbx_bbbbbbbbbbbbbbbbbbbb",
    image: { digest: `sha256:${"ab".repeat(32)}` },
    sizes: {},
    labels: {},
  };
  const client = await hostile(t, (s) => {
    const body = `${JSON.stringify({ type: "result", snapshot: snap })}\n`;
    s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  await assert.rejects(client.snapshotSandbox(ID, { retention: { manual: true } }), isTransport(/a snapshot of "sbx_b+", not of "sbx_a/));
  assert.equal((await client.snapshotSandbox(snap.source, { retention: { manual: true } })).id, snap.id);
});

test("a newer daemon's extra answer fields are accepted and dropped; a missing or mistyped field still fails", async (t) => {
  let body = "";
  const client = await hostile(t, (s) => answer(s, 200, body));
  body = JSON.stringify({ ...HEALTH, addedLater: true, backends: [] });
  assert.deepEqual(await client.health(), HEALTH);
  body = JSON.stringify({ version: "1", backends: [] });
  await assert.rejects(client.health(), isTransport(/invalid body at "defaultBackend"/));
  body = JSON.stringify({ ...HEALTH, version: 1 });
  await assert.rejects(client.health(), isTransport(/invalid body at "version"/));
  body = JSON.stringify({ error: { code: "NOT_FOUND", message: "gone", addedLater: 1 } });
  const errorClient = await hostile(t, (s) => answer(s, 404, body));
  await assert.rejects(errorClient.health(), (err: unknown) => err instanceof NotFoundError && err.message === "gone");
});
