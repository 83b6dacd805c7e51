import { test } from "node:test";
import { request } from "node:http";
import { createServer as createNetServer, type Socket } from "node:net";
import assert from "node:assert/strict";
import {
  AbortedError,
  AlreadyExistsError,
  InvalidArgumentError,
  NotFoundError,
  PolicyDeniedError,
  TimeoutError,
  TransportError,
  UnsupportedCapabilityError,
  type ExitInfo,
  type ProgressEvent,
} from "@mvm/protocol";
import { join } from "node:path";
import { startDaemonServer } from "@mvm/engine";
import { Bundle } from "./bundle.js";
import { DaemonClient } from "./daemon-client.js";
import { FakeEngine } from "./_test/fake-engine.js";
import { nextEvent, scratchDir, startFakeDaemon } from "./_test/harness.js";

async function collect(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const c of body) chunks.push(c);
  return Buffer.concat(chunks);
}

test("health, images and sandbox lifecycle round-trip", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const health = await client.health();
  assert.equal(health.defaultBackend, "namespace");
  assert.equal(health.backends[0]?.checks[0]?.name, "fake");

  const progress: ProgressEvent[] = [];
  const info = await client.createSandbox(
    { image: "debian:bookworm", ttlSeconds: 60, resources: { memoryMiB: 256 }, labels: { team: "a" } },
    { onProgress: (e) => progress.push(e) },
  );
  assert.deepEqual(progress.map((p) => p.phase), ["resolve", "boot"]);
  assert.equal(progress[1]?.fraction, 1);
  assert.equal(info.state, "running");
  assert.deepEqual(info.resources, { memoryMiB: 256 });
  assert.ok(engine.sandboxes.has(info.id));

  assert.deepEqual(await client.getSandbox(info.id), info);
  assert.deepEqual((await client.listSandboxes()).map((s) => s.id), [info.id]);
  const killed = await client.killSandbox(info.id);
  assert.equal(killed.state, "stopped");
  assert.equal(killed.endReason, "killed");

  const images = await client.listImages();
  assert.deepEqual(images[0]?.refs, ["debian:bookworm+python3"]);
  const phases: string[] = [];
  const built = await client.buildImage("debian:trixie", { force: true, onProgress: (e) => phases.push(`${e.phase}:${e.message}`) });
  assert.deepEqual(built.refs, ["debian:trixie"]);
  assert.deepEqual(phases, ["download:fetching debian:trixie", "hash:forced"]);
  await client.removeImage("debian:bookworm+python3");
  await assert.rejects(client.removeImage("debian:none"), NotFoundError);
});

test("engine errors arrive as the same typed classes, with hints", async (t) => {
  const { client } = await startFakeDaemon(t);
  await assert.rejects(client.getSandbox("sbx_aaaaaaaaaaaaaaaaaaaa"), NotFoundError);
  await assert.rejects(client.createSandbox({ image: "fake/deny" }), (err: unknown) => {
    assert.ok(err instanceof PolicyDeniedError);
    assert.equal(err.message, 'Image "fake/deny" is not allowed');
    assert.equal(err.hint, "pick another");
    return true;
  });
  await assert.rejects(client.createSandbox({ image: "fake/unsupported" }), UnsupportedCapabilityError);
  // The daemon validates requests: a bad one never reaches the engine.
  await assert.rejects(client.createSandbox({ ttlSeconds: 0 }), InvalidArgumentError);
  await assert.rejects(client.getSandbox("../../etc"), InvalidArgumentError);
  const sb = await client.createSandbox({});
  await assert.rejects(client.stat(sb.id, "relative"), InvalidArgumentError);
  await client.mkdir(sb.id, "/work/d", false);
  await assert.rejects(client.mkdir(sb.id, "/work/d", false), AlreadyExistsError);
});

test("exec streams output as it comes and ends with exit", async (t) => {
  const { client } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const started = await client.exec(
    sb.id,
    { argv: ["flood", String(1024 * 1024 + 3)] },
    { onStdout: (c) => out.push(Buffer.from(c)), onStderr: (c) => err.push(Buffer.from(c)) },
  );
  assert.ok(started.pid >= 1);
  const exit: ExitInfo = await started.exit;
  assert.equal(exit.exitCode, 0);
  assert.equal(exit.stdoutBytes, 1024 * 1024 + 3);
  const all = Buffer.concat(out);
  assert.equal(all.byteLength, 1024 * 1024 + 3);
  assert.ok(all.every((b) => b === 0x78));
  assert.equal(err.length, 0);
  assert.equal(exit.receipt.sandboxId, sb.id);

  const failed = await client.exec(sb.id, { argv: ["exit", "3"] }, { onStderr: (c) => err.push(Buffer.from(c)) });
  assert.equal((await failed.exit).exitCode, 3);
  assert.equal(Buffer.concat(err).toString(), "exiting 3\n");

  const crashed = await client.exec(sb.id, { argv: ["crash"] }, {});
  await assert.rejects(crashed.exit, (e: unknown) => e instanceof TransportError && e.message === "The agent went away");
  await assert.rejects(client.exec("sbx_aaaaaaaaaaaaaaaaaaaa", { argv: ["echo"] }, {}), NotFoundError);
});

test("stdin, signals and the process list", async (t) => {
  const { client } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const out: Buffer[] = [];
  const cat = await client.exec(sb.id, { argv: ["cat"], openStdin: true }, { onStdout: (c) => out.push(Buffer.from(c)) });
  const big = Buffer.alloc(9 * 1024 * 1024, 0x61); // split into several stdin requests
  await client.writeStdin(sb.id, cat.proc, big);
  await client.writeStdin(sb.id, cat.proc, new TextEncoder().encode("end"));
  assert.deepEqual((await client.listProcesses(sb.id)).map((p) => p.proc), [cat.proc]);
  await client.writeStdin(sb.id, cat.proc, null);
  assert.equal((await cat.exit).exitCode, 0);
  assert.equal(Buffer.concat(out).toString(), `${big.toString()}end`);

  const sleeper = await client.exec(sb.id, { argv: ["sleep"] }, {});
  await client.signalProcess(sb.id, sleeper.proc, "SIGTERM");
  assert.equal((await sleeper.exit).signal, "SIGTERM");
  await assert.rejects(client.signalProcess(sb.id, sleeper.proc, "SIGKILL"), NotFoundError);
  await assert.rejects(client.writeStdin(sb.id, 9999, null), NotFoundError);
});

test("files: content both ways, list, stat, mkdir, remove, rename", async (t) => {
  const { client } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const data = Buffer.from("hello files");
  assert.deepEqual(await client.writeFile(sb.id, "/work/a/b.txt", data, { mode: 0o600 }), { bytes: data.byteLength });
  const read = await client.readFile(sb.id, "/work/a/b.txt");
  assert.equal(read.size, data.byteLength);
  assert.deepEqual(await collect(read.body), data);
  const st = await client.stat(sb.id, "/work/a/b.txt");
  assert.deepEqual([st.name, st.type, st.size, st.mode], ["b.txt", "file", data.byteLength, 0o600]);

  async function* parts(): AsyncGenerator<Uint8Array> {
    yield Buffer.from("one,");
    yield Buffer.from("two");
  }
  assert.deepEqual(await client.writeFile(sb.id, "/work/a/c.txt", parts()), { bytes: 7 });
  await assert.rejects(client.writeFile(sb.id, "/work/none/x", data, { createParents: false }), NotFoundError);

  await client.mkdir(sb.id, "/work/a/d", false);
  const listing = await client.listDir(sb.id, "/work/a");
  assert.deepEqual(listing.entries.map((e) => e.name).sort(), ["b.txt", "c.txt", "d"]);
  assert.equal(listing.truncated, false);
  await client.rename(sb.id, "/work/a/c.txt", "/work/a/e.txt");
  assert.deepEqual(await collect((await client.readFile(sb.id, "/work/a/e.txt")).body), Buffer.from("one,two"));
  await assert.rejects(client.remove(sb.id, "/work/a", false), InvalidArgumentError);
  await client.remove(sb.id, "/work/a", true);
  await assert.rejects(client.stat(sb.id, "/work/a/b.txt"), NotFoundError);
  await assert.rejects(client.readFile(sb.id, "/work/missing"), NotFoundError);
});

test("an upload the engine refuses fails with its error and stops sending", async (t) => {
  const { client } = await startFakeDaemon(t);
  let pulled = 0;
  async function* endless(): AsyncGenerator<Uint8Array> {
    const chunk = Buffer.alloc(64 * 1024);
    for (;;) {
      pulled++;
      yield chunk;
    }
  }
  await assert.rejects(client.writeFile("sbx_aaaaaaaaaaaaaaaaaaaa", "/work/x", endless()), NotFoundError);
  const after = pulled;
  assert.ok(after < 10_000, `the source was drained ${after} times`);
});

test("aborting a call aborts the engine's work; a deadline is a TimeoutError", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const controller = new AbortController();
  const hanging = nextEvent(engine, "hang", (e: { op: string }) => e.op === "createSandbox");
  const sawAbort = nextEvent(engine, "abort", (e: { op: string }) => e.op === "createSandbox");
  const pending = client.createSandbox({ image: "fake/hang" }, { signal: controller.signal });
  await hanging;
  controller.abort(new Error("user gave up"));
  await assert.rejects(pending, (err: unknown) => err instanceof AbortedError && (err.cause as Error).message === "user gave up");
  await sawAbort;

  await assert.rejects(client.buildImage("fake/hang", { timeoutMs: 50 }), (err: unknown) => {
    assert.ok(err instanceof TimeoutError);
    assert.match(err.message, /"buildImage".* timed out after 50 ms/);
    return true;
  });

  const already = AbortSignal.abort();
  await assert.rejects(client.health({ signal: already }), AbortedError);
});

test("a client that leaves an exec kills the process; a background exec survives", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const controller = new AbortController();
  const sleeper = await client.exec(sb.id, { argv: ["sleep"] }, {}, { signal: controller.signal });
  const killed = nextEvent<{ proc: number; signal: string }>(engine, "signal", (e) => e.proc === sleeper.proc);
  controller.abort();
  await assert.rejects(sleeper.exit, AbortedError);
  assert.equal((await killed).signal, "SIGKILL");

  const bg = new AbortController();
  const daemonized = await client.exec(sb.id, { argv: ["sleep"], background: true }, {}, { signal: bg.signal });
  const signals: string[] = [];
  engine.events.on("signal", (e: { proc: number; signal: string }) => {
    if (e.proc === daemonized.proc) signals.push(e.signal);
  });
  bg.abort();
  await assert.rejects(daemonized.exit, AbortedError);
  // The stream is gone but the process is still listed; it ends only when signalled.
  const procs = await client.listProcesses(sb.id);
  assert.deepEqual(procs.map((p) => p.proc), [daemonized.proc]);
  await client.signalProcess(sb.id, daemonized.proc, "SIGTERM");
  assert.deepEqual(await client.listProcesses(sb.id), []);
  assert.deepEqual(signals, ["SIGTERM"]);
});

test("a handler that throws ends the exec with that error and kills the process", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const boom = new Error("handler failed");
  const started = await client.exec(sb.id, { argv: ["flood", String(8 * 1024 * 1024)] }, {
    onStdout: () => {
      throw boom;
    },
  });
  const killed = nextEvent(engine, "signal", (e: { proc: number }) => e.proc === started.proc);
  await assert.rejects(started.exit, (err: unknown) => err === boom);
  await killed;
});

test("a closed client aborts calls in flight and refuses new ones", async (t) => {
  const { socketPath } = await startFakeDaemon(t);
  const client = new DaemonClient({ socketPath });
  const pending = client.createSandbox({ image: "fake/hang" });
  await client.health();
  await client.close();
  await assert.rejects(pending, AbortedError);
  await assert.rejects(client.health(), TransportError);
});

test("no daemon on the socket is a TransportError naming the socket", async (t) => {
  const dir = await scratchDir(t);
  const client = new DaemonClient({ socketPath: `${dir}/absent.sock` });
  await assert.rejects(client.health(), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.match(err.message, /absent\.sock/);
    assert.equal((err.cause as NodeJS.ErrnoException).code, "ENOENT");
    return true;
  });
});

test("closing the daemon does not wait for background processes, and kills the others", async (t) => {
  const { client, engine, server } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const bg = await client.exec(sb.id, { argv: ["sleep"], background: true }, {});
  const fg = await client.exec(sb.id, { argv: ["sleep"] }, {});
  const killed = nextEvent<{ proc: number; signal: string }>(engine, "signal", (e) => e.proc === fg.proc);
  await server.close();
  assert.equal((await killed).signal, "SIGKILL");
  await assert.rejects(bg.exit, TransportError);
  await assert.rejects(fg.exit, TransportError);
  assert.deepEqual([...(engine.sandboxes.get(sb.id)?.procs.keys() ?? [])], [bg.proc]);
});

test("without Accept: application/x-ndjson, create and build answer plain JSON", async (t) => {
  const { socketPath } = await startFakeDaemon(t);
  const post = (path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> =>
    new Promise((resolve, reject) => {
      const req = request({ socketPath, method: "POST", path, headers: { "Content-Type": "application/json" } }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown> }));
      });
      req.on("error", reject);
      req.end(JSON.stringify(body));
    });
  const created = await post("/v1/sandboxes", { image: "debian:bookworm" });
  assert.equal(created.status, 201);
  assert.equal(created.body.state, "running");
  const built = await post("/v1/images/build", { ref: "debian:trixie" });
  assert.equal(built.status, 200);
  assert.deepEqual(built.body.refs, ["debian:trixie"]);
  const denied = await post("/v1/sandboxes", { image: "fake/deny" });
  assert.equal(denied.status, 403);
  assert.equal((denied.body.error as { code: string }).code, "POLICY_DENIED");
});

test("the daemon's request bounds reach the SDK as typed errors naming the field and the limit", async (t) => {
  const { client } = await startFakeDaemon(t);
  const labels = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`l${i}`, "x"]));
  await assert.rejects(client.createSandbox({ labels }), (err: unknown) => err instanceof InvalidArgumentError && /field "labels" is invalid: at most 64 labels/.test(err.message));
  const { id } = await client.createSandbox({});
  await assert.rejects(
    client.exec(id, { argv: ["true"], env: { BIG: "x".repeat(128 * 1024) } }, {}),
    (err: unknown) => err instanceof InvalidArgumentError && /limit of 32768 bytes/.test(err.message),
  );
});

test("a connection past the daemon's cap is a TransportError saying so", async (t) => {
  const dir = await scratchDir(t);
  const server = await startDaemonServer({ engine: new FakeEngine(), socketPath: join(dir, "run", "mvmd.sock"), limits: { maxConnections: 0 } });
  const client = new DaemonClient({ socketPath: server.socketPath });
  t.after(async () => {
    await client.close();
    await server.close();
  });
  await assert.rejects(client.health(), (err: unknown) => err instanceof TransportError && /maximum of 0 connections/.test(err.message));
});

test("calls share a kept-alive connection; a reused one the daemon drops before answering is replaced once, a new one is not", async (t) => {
  const socketPath = join(await scratchDir(t), "keep-alive.sock");
  let connections = 0;
  /** "answer" every request; "second": drop a connection at its second request; "all": drop at every request. */
  let mode: "answer" | "second" | "all" = "answer";
  const sockets = new Set<Socket>();
  const server = createNetServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let requests = 0;
    let head = "";
    socket.on("data", (chunk: Buffer) => {
      head += chunk.toString("latin1");
      for (let end = head.indexOf("\r\n\r\n"); end !== -1; end = head.indexOf("\r\n\r\n")) {
        head = head.slice(end + 4);
        requests++;
        if (mode === "all" || (mode === "second" && requests === 2)) {
          socket.destroy();
          return;
        }
        const body = JSON.stringify({ version: "1", defaultBackend: null, backends: [] });
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const first = new DaemonClient({ socketPath });
  for (let i = 0; i < 5; i++) await first.health();
  assert.equal(connections, 1, "five calls in a row took more than one connection");
  await first.close();

  mode = "second";
  const second = new DaemonClient({ socketPath });
  await second.health();
  await second.health(); // its kept connection is dropped unanswered: sent again on a new one
  assert.equal(connections, 3);

  mode = "all";
  await assert.rejects(second.health(), TransportError);
  assert.equal(connections, 4, "a call was sent more than twice");
  await assert.rejects(second.health(), TransportError);
  assert.equal(connections, 5, "a call on a new connection was sent again");
  await second.close();
});

test("bundle push and pull go through the daemon and come back checked; Bundle.push/pull take a Snapshot or a source", async (t) => {
  const dir = await scratchDir(t);
  const engine = new FakeEngine();
  const server = await startDaemonServer({ engine, socketPath: join(dir, "run", "mvmd.sock") });
  const client = new DaemonClient({ socketPath: server.socketPath });
  t.after(async () => {
    await client.close();
    await server.close();
  });
  const pushed = await Bundle.push("debian:bookworm", "file:///srv/bundles", { engine: client });
  assert.equal(pushed.uri, `file:///srv/bundles@sha256:${"b".repeat(64)}`);
  const pulled = await Bundle.pull(pushed.uri, { engine: client, retention: { ttlSeconds: 600 } });
  assert.equal(pulled.image.refs[0], "bundle-1111111111111111");
  assert.deepEqual(engine.bundleRequests, [
    { source: "debian:bookworm", destination: "file:///srv/bundles" },
    { source: pushed.uri, retention: { ttlSeconds: 600 } },
  ]);
});
