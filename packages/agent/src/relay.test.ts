import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { PassThrough, Writable, type Duplex } from "node:stream";
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { after, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { RelayMux, RelayProtocolError, RelayStreamResetError, type RelayStreamInfo } from "@mvm/protocol";
import { AGENT_ENTRY, AgentDriver } from "./_test/driver.js";
import { tempDir, waitUntil } from "./_test/util.js";
import { parseArgs } from "./channel.js";
import { startRelay, type Relay } from "./relay.js";

/** A host end of the relay channel: a Unix socket server that accepts one connection. */
async function withRelay(fn: (ctx: { relay: Relay; host: RelayMux; hostSocket: Socket; errors: Error[] }) => Promise<void>): Promise<void> {
  using dir = tempDir("mvm-relay-test-");
  const path = join(dir.path, "relay.sock");
  const server = createServer();
  server.listen(path);
  await once(server, "listening");
  const accepted = once(server, "connection") as Promise<[Socket]>;
  const errors: Error[] = [];
  const relay = await startRelay({ channelPath: path, listenPort: 0, onError: (err) => errors.push(err) });
  const [hostSocket] = await accepted;
  server.close();
  const host = new RelayMux(hostSocket, hostSocket, { role: "host" });
  host.on("error", () => {});
  try {
    await fn({ relay, host, hostSocket, errors });
  } finally {
    await relay.close();
    hostSocket.destroy();
  }
}

function nextStream(mux: RelayMux): Promise<[Duplex, RelayStreamInfo]> {
  return once(mux, "stream") as Promise<[Duplex, RelayStreamInfo]>;
}

/** Reads to the end without destroying the stream. */
function readAll(stream: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  return new Promise((resolve, reject) => {
    stream.on("data", (c: Buffer) => parts.push(c));
    stream.once("end", () => resolve(Buffer.concat(parts)));
    stream.once("error", reject);
  });
}

function tcp(port: number): Promise<Socket> {
  const s = connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  return once(s, "connect").then(() => s);
}

async function listenTcp(onConnection: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, onConnection);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const addr = server.address();
  assert.ok(addr !== null && typeof addr === "object");
  return { server, port: addr.port };
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/** Creates a raw pty, names its device on stderr, and pumps stdin -> pty -> stdout. */
const PTY_PUMP = `
import os, pty, sys, threading, tty
master, slave = pty.openpty()
tty.setraw(slave)
sys.stderr.write(os.ttyname(slave) + "\\n")
sys.stderr.flush()
def pump(src, dst):
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                return
            os.write(dst, data)
    except OSError:
        return
threading.Thread(target=pump, args=(master, 1), daemon=True).start()
pump(0, master)
`;

const hasPython = spawnSync("python3", ["-c", "import pty"]).status === 0;

describe("agent relay", () => {
  it("carries a workload's proxy connection to the host, half-close included", async () => {
    await withRelay(async ({ relay, host }) => {
      assert.ok(relay.port > 0);
      const incoming = nextStream(host);
      const client = await tcp(relay.port);
      const up = randomBytes(5 * 1024 * 1024);
      client.end(up);
      const [hs, info] = await incoming;
      assert.deepEqual(info, { id: 1 });
      const got = await readAll(hs);
      assert.equal(sha(got), sha(up));
      // The client half-closed; the host still answers.
      hs.end(Buffer.concat([Buffer.from("sha256:"), Buffer.from(sha(got))]));
      assert.equal((await readAll(client)).toString(), `sha256:${sha(up)}`);
    });
  });

  it("resets the workload's connection when the host resets the stream", async () => {
    await withRelay(async ({ relay, host }) => {
      const incoming = nextStream(host);
      const client = await tcp(relay.port);
      client.write("CONNECT example.com:443 HTTP/1.1\r\n\r\n");
      const [hs] = await incoming;
      hs.on("error", () => {});
      const clientError = once(client, "error");
      hs.destroy(new Error("denied by policy"));
      const [err] = (await clientError) as [NodeJS.ErrnoException];
      assert.equal(err.code, "ECONNRESET");
    });
  });

  it("connects a host-opened stream to the guest port it names", async () => {
    const { server, port } = await listenTcp((s) => {
      void readAll(s).then((b) => s.end(`pong:${b.toString()}`));
    });
    try {
      await withRelay(async ({ host }) => {
        const s = host.open(port);
        s.end("ping");
        assert.equal((await readAll(s)).toString(), "pong:ping");
      });
    } finally {
      server.close();
    }
  });

  it("resets a host-opened stream when the guest port refuses", async () => {
    const { server, port } = await listenTcp(() => {});
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await withRelay(async ({ host, relay }) => {
      const s = host.open(port);
      const [err] = (await once(s, "error").catch((e: unknown) => [e])) as [RelayStreamResetError];
      assert.ok(err instanceof RelayStreamResetError);
      assert.equal(err.reason, `connection refused to guest port ${port}`);
      // The relay keeps working.
      const incoming = nextStream(host);
      const client = await tcp(relay.port);
      client.on("error", () => {});
      client.end("after");
      const [hs] = await incoming;
      assert.equal((await readAll(hs)).toString(), "after");
    });
  });

  it("closes the proxy listener when the channel closes", async () => {
    await withRelay(async ({ relay, host, hostSocket, errors }) => {
      const incoming = nextStream(host);
      const client = await tcp(relay.port);
      let clientError: NodeJS.ErrnoException | undefined;
      client.on("error", (err) => (clientError = err));
      client.write("x");
      const [hs] = await incoming;
      hs.on("error", () => {});
      const clientClosed = new Promise((resolve) => client.once("close", resolve));
      host.close();
      hostSocket.end();
      await relay.closed;
      await clientClosed;
      assert.equal(clientError?.code, "ECONNRESET");
      const refused = connect({ host: "127.0.0.1", port: relay.port });
      const [err] = (await once(refused, "error").catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
      assert.equal(err.code, "ECONNREFUSED");
      assert.deepEqual(errors, []);
    });
  });

  it("stops and reports when the host breaks the relay protocol", async () => {
    await withRelay(async ({ relay, hostSocket, errors }) => {
      hostSocket.write(Buffer.alloc(12, 0xff));
      await relay.closed;
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof RelayProtocolError);
      const refused = connect({ host: "127.0.0.1", port: relay.port });
      const [err] = (await once(refused, "error").catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
      assert.equal(err.code, "ECONNREFUSED");
    });
  });

  it(
    "runs over a character device, as over a virtio-serial port",
    { timeout: 60_000, skip: hasPython ? false : "needs python3 to create a pty" },
    async () => {
      const pty = spawn("python3", ["-c", PTY_PUMP], { stdio: ["pipe", "pipe", "pipe"] });
      try {
        const [line] = (await once(pty.stderr, "data")) as [Buffer];
        const devicePath = line.toString().trim();
        assert.match(devicePath, /^\/dev\/pts\//);
        const host = new RelayMux(pty.stdout, pty.stdin, { role: "host" });
        host.on("error", () => {});
        const relay = await startRelay({ channelPath: devicePath, listenPort: 0 });
        try {
          const incoming = nextStream(host);
          const client = await tcp(relay.port);
          const up = randomBytes(512 * 1024);
          client.end(up);
          const [hs] = await incoming;
          hs.pipe(hs);
          assert.equal(sha(await readAll(client)), sha(up));
        } finally {
          await relay.close();
          host.close();
        }
      } finally {
        // Hanging up the pty also ends the relay's read still waiting on the thread pool.
        pty.kill("SIGKILL");
        await once(pty, "exit");
      }
    },
  );

  it("fails to start on a missing channel", async () => {
    using dir = tempDir("mvm-relay-test-");
    await assert.rejects(startRelay({ channelPath: join(dir.path, "nope"), listenPort: 0 }), /ENOENT/);
    await assert.rejects(startRelay({ channelPath: "relative", listenPort: 0 }), /must be an absolute path/);
  });

  it("parses --relay", () => {
    assert.deepEqual(parseArgs(["--channel", "stdio", "--relay", "/dev/mvm-relay"]), { channel: "stdio", awaitStart: false, relay: "/dev/mvm-relay" });
    assert.deepEqual(parseArgs(["--relay=/dev/vport0p3", "--channel=stdio"]), { channel: "stdio", awaitStart: false, relay: "/dev/vport0p3" });
    assert.throws(() => parseArgs(["--channel", "stdio", "--relay"]), /Missing value for --relay/);
    assert.throws(() => parseArgs(["--channel", "stdio", "--relay", "mvm-relay"]), /must be an absolute path/);
  });
});

describe("agent --relay", () => {
  after(() => AgentDriver.killAll());

  /** A script that runs the agent with `--relay <path>` added to its arguments. */
  function entryWithRelay(dir: string, relayPath: string): string {
    const entry = join(dir, "agent-with-relay.mjs");
    writeFileSync(entry, `process.argv.push("--relay", ${JSON.stringify(relayPath)});\nawait import(${JSON.stringify(pathToFileURL(AGENT_ENTRY).href)});\n`);
    return entry;
  }

  it("keeps the agent running when the relay cannot start", async () => {
    using dir = tempDir("mvm-relay-test-");
    const agent = await AgentDriver.start({ entry: entryWithRelay(dir.path, join(dir.path, "missing.sock")) });
    await waitUntil(() => agent.stderr.includes("cannot start the egress relay"));
    const r = await agent.run(["echo", "still here"]);
    assert.equal(r.stdout, "still here\n");
    assert.deepEqual(agent.violations, []);
  });

  it("connects the relay channel after the session starts, out of the workload's reach", async () => {
    using dir = tempDir("mvm-relay-test-");
    const path = join(dir.path, "relay.sock");
    const server = createServer();
    server.listen(path);
    await once(server, "listening");
    const accepted = once(server, "connection") as Promise<[Socket]>;
    const agent = await AgentDriver.start({ entry: entryWithRelay(dir.path, path) });
    const [hostSocket] = await accepted;
    server.close();
    const host = new RelayMux(hostSocket, hostSocket, { role: "host" });
    host.on("error", () => {});
    const guestServer = await listenTcp((s) => void readAll(s).then((b) => s.end(`pong:${b.toString()}`)));
    try {
      const s = host.open(guestServer.port);
      s.end("ping");
      assert.equal((await readAll(s)).toString(), "pong:ping");
      // No descriptor beyond stdio reaches a workload (the relay socket is close-on-exec).
      const r = await agent.run(["sh", "-c", "ls /proc/$$/fd"]);
      const fds = r.stdout.split("\n").filter((l) => l !== "").map(Number);
      assert.ok(fds.every((fd) => fd <= 2), `workload inherited descriptors ${fds.join(",")}`);
      assert.deepEqual(agent.violations, []);
    } finally {
      host.close();
      hostSocket.destroy();
      guestServer.server.close();
    }
  });
});

/** A host relay on `socket` that can be cut off without closing the socket: a host that is gone. */
function hostOn(socket: Socket): { mux: RelayMux; cut(): void } {
  const input = new PassThrough();
  const onData = (chunk: Buffer): void => void input.write(chunk);
  socket.on("data", onData);
  let live = true;
  const output = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (live) socket.write(chunk, () => callback());
      else callback();
    },
  });
  const mux = new RelayMux(input, output, { role: "host" });
  mux.on("error", () => {});
  return {
    mux,
    cut() {
      live = false;
      socket.off("data", onData);
    },
  };
}

describe("agent relay around a snapshot", () => {
  it("holds its frames while paused, and starts over with a new host after a reset", async () => {
    using dir = tempDir("mvm-relay-test-");
    const path = join(dir.path, "relay.sock");
    const server = createServer();
    server.listen(path);
    await once(server, "listening");
    const accepted = once(server, "connection") as Promise<[Socket]>;
    const errors: Error[] = [];
    const relay = await startRelay({ channelPath: path, listenPort: 0, onError: (err) => errors.push(err) });
    const [socket] = await accepted;
    server.close();
    const echo = await listenTcp((s) => {
      s.on("error", () => {});
      void readAll(s).then((b) => s.end(`pong:${b.toString()}`), () => {});
    });
    try {
      const a = hostOn(socket);
      const first = nextStream(a.mux);
      const client = await tcp(relay.port);
      client.on("error", () => {});
      client.write("one ");
      const [hs] = await first;
      const got: Buffer[] = [];
      hs.on("data", (c: Buffer) => got.push(c));
      hs.on("error", () => {});
      await waitUntil(() => Buffer.concat(got).toString() === "one ");

      // Paused: what the workload writes waits in the guest until the resume.
      await relay.pause();
      client.write("two");
      relay.resume();
      await waitUntil(() => Buffer.concat(got).toString() === "one two");

      // A new host: the old connection is reset, and the new multiplexer numbers from 1 again.
      await relay.pause();
      a.cut();
      const clientClosed = new Promise((resolve) => client.once("close", resolve));
      relay.reset();
      await clientClosed;
      const b = hostOn(socket);
      const second = nextStream(b.mux);
      const client2 = await tcp(relay.port);
      client2.on("error", () => {});
      client2.end("three");
      const [hs2, info] = await second;
      assert.deepEqual(info, { id: 1 });
      assert.equal((await readAll(hs2)).toString(), "three");
      const out = b.mux.open(echo.port);
      out.end("ping");
      assert.equal((await readAll(out)).toString(), "pong:ping");
      assert.deepEqual(errors, []);
    } finally {
      echo.server.close();
      await relay.close();
      socket.destroy();
    }
  });
});
