/**
 * The relay listener on its own: where the socket lives and who may reach it, exactly one
 * accepted connection, and nothing left after a timeout, a close or a failed open.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { link, lstat, mkdir, mkdtemp, readFile, rm, utimes } from "node:fs/promises";
import { type Socket, connect } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import fc from "fast-check";
import { AdmissionError, TransportError } from "@mvm/protocol";
import { MAX_SOCKET_PATH_BYTES, RELAY_SOCKET_NAME, RelayListener, isRelayDir, removeRelayDir, sweepRelayDirs } from "./relay-listener.js";

const isRoot = process.getuid?.() === 0;
const SANDBOX = "sbx_relayrelayrelayrelay";

/** Connects to `path`; resolves with the socket, or with the error code. */
function tryConnect(path: string): Promise<Socket | string> {
  return new Promise((resolve) => {
    const socket = connect(path);
    const onError = (err: NodeJS.ErrnoException): void => {
      socket.off("connect", onConnect);
      resolve(err.code ?? String(err));
    };
    const onConnect = (): void => {
      socket.off("error", onError);
      resolve(socket);
    };
    socket.once("error", onError);
    socket.once("connect", onConnect);
  });
}

test("the socket is 0600 in a fresh 0700 directory, accepts one connection, then is unlinked", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX });
  try {
    assert.equal(dirname(relay.dir), tmpdir());
    assert.ok(isRelayDir(relay.dir), relay.dir);
    assert.equal(relay.path, join(relay.dir, RELAY_SOCKET_NAME));
    assert.equal((await lstat(relay.dir)).mode & 0o777, 0o700);
    const st = await lstat(relay.path);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);

    const client = await tryConnect(relay.path);
    assert.ok(typeof client !== "string", `connect failed: ${String(client)}`);
    const server = await relay.connection;
    client.write("ping");
    const [chunk] = (await once(server, "data")) as [Buffer];
    assert.equal(chunk.toString(), "ping");

    await relay.connection; // still the same, settled once
    assert.equal(existsSync(relay.path), false, "unlinked after the first connection");
    assert.equal(await tryConnect(relay.path), "ENOENT");
    client.destroy();
  } finally {
    await relay.close();
  }
  assert.equal(existsSync(relay.dir), false);
});

test("the address the accepted connection carries (shown in /proc/net/unix) names no host directory", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX });
  try {
    const client = await tryConnect(relay.path);
    assert.ok(typeof client !== "string", `connect failed: ${String(client)}`);
    await relay.connection;
    const table = await readFile("/proc/net/unix", "utf8");
    assert.ok(!table.includes(relay.dir), `${relay.dir} is in /proc/net/unix`);
    assert.match(table, new RegExp(` /proc/self/fd/\\d+/${RELAY_SOCKET_NAME}$`, "m"), "control: the connection is listed");
    client.destroy();
  } finally {
    await relay.close();
  }
});

test("a second connection through a path that still names the socket is refused", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX });
  // A hard link stands in for the sandbox's bind mount: it keeps the socket inode reachable.
  const keep = await mkdtemp(join(tmpdir(), "mvm-relay-test-"));
  const alias = join(keep, "alias.sock");
  await link(relay.path, alias);
  try {
    const first = await tryConnect(alias);
    assert.ok(typeof first !== "string");
    await relay.connection;
    assert.equal(await tryConnect(alias), "ECONNREFUSED");
    first.destroy();
  } finally {
    await relay.close();
    await rm(keep, { recursive: true, force: true });
  }
});

test("close before a connection rejects it and removes the socket and its directory", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX });
  await relay.close();
  await assert.rejects(relay.connection, (err: unknown) => err instanceof TransportError && /stopped before its agent connected/.test(err.message));
  assert.equal(existsSync(relay.dir), false);
  await relay.close(); // idempotent
});

test("abandon rejects with the given reason; a later close still cleans up", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX });
  relay.abandon(new TransportError("the sandbox exited"));
  await assert.rejects(relay.connection, /the sandbox exited/);
  await relay.close();
  assert.equal(existsSync(relay.dir), false);
});

test("the agent has connectTimeoutMs to connect", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX, connectTimeoutMs: 20 });
  await assert.rejects(relay.connection, (err: unknown) => err instanceof TransportError && /did not connect its egress relay within 20 ms/.test(err.message));
  assert.equal(existsSync(relay.path), false, "no listener after the timeout");
  await relay.close();
  assert.equal(existsSync(relay.dir), false);
});

test("a socket path longer than sun_path allows is refused before anything is made", async () => {
  const parent = `/tmp/${"d".repeat(MAX_SOCKET_PATH_BYTES)}`;
  await assert.rejects(
    RelayListener.open({ sandboxId: SANDBOX, parentDir: parent }),
    (err: unknown) => err instanceof AdmissionError && /over the 107 a Unix socket allows/.test(err.message) && /TMPDIR/.test(err.hint ?? ""),
  );
  assert.equal(existsSync(parent), false);
  // Just at the limit: "/" + dir + "/mvm-relay-XXXXXX/relay.sock" is exactly 107 bytes.
  const fits = await mkdtemp(join(tmpdir(), "r"));
  try {
    const room = MAX_SOCKET_PATH_BYTES - Buffer.byteLength(join(fits, "mvm-relay-XXXXXX", RELAY_SOCKET_NAME)) - 1;
    const deep = join(fits, "x".repeat(Math.max(room, 1)));
    await mkdir(deep);
    const relay = await RelayListener.open({ sandboxId: SANDBOX, parentDir: deep });
    assert.equal(Buffer.byteLength(relay.path), MAX_SOCKET_PATH_BYTES);
    await relay.close();
  } finally {
    await rm(fits, { recursive: true, force: true });
  }
});

test("with a host uid, the socket is that uid's alone and its directory is searchable", { skip: !isRoot && "needs root to chown and switch uids" }, async () => {
  const uid = 0x6f30_0000 + (process.pid % 1000);
  const relay = await RelayListener.open({ sandboxId: SANDBOX, hostUid: uid });
  try {
    assert.equal((await lstat(relay.dir)).mode & 0o777, 0o711);
    const st = await lstat(relay.path);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [uid, uid, 0o600]);

    const connectAs = async (asUid: number): Promise<string> => {
      const script = `const s=require("node:net").connect(${JSON.stringify(relay.path)});s.on("connect",()=>{console.log("connected");s.end()});s.on("error",(e)=>console.log(e.code))`;
      const child = spawn("/usr/bin/setpriv", [`--reuid=${asUid}`, `--regid=${asUid}`, "--clear-groups", process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
      await once(child, "close");
      return out.trim();
    };
    assert.equal(await connectAs(uid + 1), "EACCES", "another sandbox uid cannot connect");
    assert.equal(await connectAs(uid), "connected");
    await relay.connection;
  } finally {
    await relay.close();
  }
  assert.equal(existsSync(relay.dir), false);
});

test("isRelayDir accepts exactly absolute, normalized mvm-relay-XXXXXX directories", () => {
  const suffix = fc.stringMatching(/^[A-Za-z0-9]{6}$/);
  const segment = fc.stringMatching(/^[a-z0-9._-]{1,12}$/).filter((s) => s !== "." && s !== "..");
  fc.assert(
    fc.property(fc.array(segment, { maxLength: 4 }), suffix, (parents, tail) => {
      assert.equal(isRelayDir(`/${[...parents, `mvm-relay-${tail}`].join("/")}`), true);
    }),
  );
  fc.assert(
    fc.property(fc.string({ maxLength: 80 }), (text) => {
      if (!isRelayDir(text)) return;
      assert.ok(text.startsWith("/") && !text.includes("/../") && !text.includes("//") && !text.endsWith("/"));
      assert.match(basename(text), /^mvm-relay-[A-Za-z0-9]{6}$/);
    }),
  );
  for (const bad of ["mvm-relay-abc123", "/tmp/mvm-relay-abc12", "/tmp/mvm-relay-abc1234", "/tmp/../etc/mvm-relay-abc123", "/tmp/mvm-relay-abc/23", "/", "/etc"]) {
    assert.equal(isRelayDir(bad), false, bad);
  }
});

test("removeRelayDir removes a socket and its directory and ignores what is gone", async () => {
  const relay = await RelayListener.open({ sandboxId: SANDBOX });
  // What a crashed engine leaves: the listener's socket file and directory, no process behind them.
  await removeRelayDir(relay.dir);
  assert.equal(existsSync(relay.dir), false);
  await removeRelayDir(relay.dir);
  await relay.close();
});

test("sweep removes stale relay directories (socket and all), and leaves young ones and other names alone", async () => {
  const parent = await mkdtemp(join(tmpdir(), "mvm-relay-sweep-"));
  try {
    const stale = await RelayListener.open({ sandboxId: "sbx_sweepsweepsweepswee", parentDir: parent });
    stale.connection.catch(() => {});
    const young = await RelayListener.open({ sandboxId: "sbx_youngyoungyoungyoun", parentDir: parent });
    young.connection.catch(() => {});
    await mkdir(join(parent, "mvm-relay-notours-x"));
    const old = new Date(Date.now() - 10 * 60_000);
    await utimes(stale.dir, old, old);
    const removed = await sweepRelayDirs(parent);
    assert.deepEqual(removed, [stale.dir]);
    assert.equal(existsSync(stale.dir), false);
    assert.equal(existsSync(join(young.dir, RELAY_SOCKET_NAME)), true);
    assert.equal(existsSync(join(parent, "mvm-relay-notours-x")), true);
    await stale.close();
    await young.close();
  } finally {
    await rm(parent, { recursive: true, force: true });
  }
});
