/**
 * The daemon's peer check and caller-scoped host reads, with real clients running as other uids
 * (setpriv): a uid outside the operator group is refused with 403 before any route runs, a
 * member is served, and a member cannot import (or name as a secret) what it could not read.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmod, lstat, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { NotFoundError, type EngineApi, type HealthInfo, type ImageInfo } from "@mvm/protocol";
import { parsePeerCredentials, peerAdmitted, resolveGroup } from "./peer-cred.js";
import { peerHelper, removePeerHelper, stubEngine } from "./_testing.js";
import { startDaemonServer, type DaemonServer } from "./server.js";

after(removePeerHelper);

const run = promisify(execFile);
const ROOT = process.getuid?.() === 0;
const NEEDS_ROOT = ROOT ? false : "needs root: clients run as other uids through setpriv (runs in CI and on the dev host as root)";

/** A uid and a gid nothing on this host uses. */
const OUTSIDER = 64_998;
const OPERATORS = 64_999;

const HEALTH: HealthInfo = { version: "test", defaultBackend: null, backends: [] };
const IMAGE: ImageInfo = { digest: `sha256:${"0".repeat(64)}` as ImageInfo["digest"], refs: ["local/x"], sizeBytes: 0, createdAt: "2026-01-01T00:00:00.000Z" };

/**
 * A daemon with operator group OPERATORS. Its directories are then opened to everyone (0711,
 * socket 0666) so that the peer check, not the file modes, is what stands in the way.
 */
async function serveOpen(t: { after(fn: () => Promise<void>): void }, engine: EngineApi): Promise<{ server: DaemonServer; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-peer-"));
  await chmod(dir, 0o711);
  const socketPath = join(dir, "run", "mvmd.sock");
  const server = await startDaemonServer({ engine, socketPath, group: String(OPERATORS), peerCredHelper: await peerHelper() });
  t.after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  await chmod(dirname(socketPath), 0o711);
  await chmod(socketPath, 0o666);
  return { server, dir };
}

const CLIENT = `
const http = require("node:http");
const [socketPath, method, path, body] = process.argv.slice(1);
const req = http.request({ socketPath, method, path, headers: { "content-type": "application/json" } }, (res) => {
  let text = "";
  res.setEncoding("utf8").on("data", (c) => (text += c));
  res.on("end", () => console.log(JSON.stringify({ status: res.statusCode, body: text })));
});
req.on("error", (e) => console.log(JSON.stringify({ status: 0, body: e.code })));
req.end(body === "" ? undefined : body);
`;

/** One request from a client process running as `uid` with supplementary `groups`. */
async function callAs(uid: number, groups: readonly number[], socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  const groupArg = groups.length > 0 ? `--groups=${groups.join(",")}` : "--clear-groups";
  const { stdout } = await run("setpriv", [
    `--reuid=${uid}`,
    `--regid=${uid}`,
    groupArg,
    "--",
    process.execPath,
    "-e",
    CLIENT,
    socketPath,
    method,
    path,
    body === undefined ? "" : JSON.stringify(body),
  ], { cwd: "/" });
  return JSON.parse(stdout) as { status: number; body: string };
}

function errorOf(answer: { body: string }): { code: string; message: string } {
  return (JSON.parse(answer.body) as { error: { code: string; message: string } }).error;
}

test("the helper's output is parsed strictly", () => {
  assert.deepEqual(parsePeerCredentials("pid=12\nuid=1000\ngid=100\ngroups=100,27\n"), { pid: 12, uid: 1000, gid: 100, groups: [100, 27] });
  assert.deepEqual(parsePeerCredentials("pid=1\nuid=0\ngid=0\n"), { pid: 1, uid: 0, gid: 0, groups: [] });
  assert.equal(parsePeerCredentials("pid=1\nuid=0\n"), undefined);
  assert.equal(parsePeerCredentials("pid=1\nuid=0\ngid=0\nuid=5\n"), undefined);
  assert.equal(parsePeerCredentials("pid=1\nuid=-1\ngid=0\n"), undefined);
  assert.equal(parsePeerCredentials("pid=1\nuid=0\ngid=0\ngroups=1,,2\n"), undefined);
});

test("admission: root, the daemon's uid and operator-group members; nobody else", () => {
  const policy = { daemonUid: 1000, operatorGid: 500 };
  assert.equal(peerAdmitted({ pid: 1, uid: 0, gid: 0, groups: [] }, policy), true);
  assert.equal(peerAdmitted({ pid: 1, uid: 1000, gid: 1000, groups: [] }, policy), true);
  assert.equal(peerAdmitted({ pid: 1, uid: 1001, gid: 500, groups: [] }, policy), true);
  assert.equal(peerAdmitted({ pid: 1, uid: 1001, gid: 1001, groups: [7, 500] }, policy), true);
  assert.equal(peerAdmitted({ pid: 1, uid: 1001, gid: 1001, groups: [7] }, policy), false);
  assert.equal(peerAdmitted({ pid: 1, uid: 1001, gid: 500, groups: [] }, { daemonUid: 1000 }), false);
});

test("a group name resolves through getent; an unknown one is an InvalidArgumentError", async () => {
  assert.equal(await resolveGroup("root"), 0);
  assert.equal(await resolveGroup("4242"), 4242);
  await assert.rejects(resolveGroup("mvm-no-such-group-x"), /Group "mvm-no-such-group-x" does not exist/);
  await assert.rejects(resolveGroup("bad name"), /Invalid group name/);
});

test("with --group the socket is 0660 and its directory 0710, both owned by the group", { skip: NEEDS_ROOT }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-peer-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const socketPath = join(dir, "run", "mvmd.sock");
  const server = await startDaemonServer({ engine: stubEngine({}), socketPath, group: String(OPERATORS), peerCredHelper: await peerHelper() });
  t.after(() => server.close());
  const sock = await lstat(socketPath);
  const runDir = await lstat(dirname(socketPath));
  assert.deepEqual([sock.mode & 0o777, sock.gid], [0o660, OPERATORS]);
  assert.deepEqual([runDir.mode & 0o777, runDir.gid], [0o710, OPERATORS]);
});

test("a uid outside the operator group is refused with 403 before any route runs; a member and root are served", { skip: NEEDS_ROOT }, async (t) => {
  let healthCalls = 0;
  const { server } = await serveOpen(t, stubEngine({ health: async () => (healthCalls++, HEALTH) }));
  const outsider = await callAs(OUTSIDER, [], server.socketPath, "GET", "/v1/health");
  assert.equal(outsider.status, 403);
  assert.equal(errorOf(outsider).code, "PERMISSION_DENIED");
  assert.match(errorOf(outsider).message, new RegExp(`Peer uid ${OUTSIDER} .* may not use this daemon`));
  assert.equal(healthCalls, 0);
  // Even a request for a route that does not exist gets the same 403: no route runs first.
  assert.equal((await callAs(OUTSIDER, [], server.socketPath, "GET", "/v1/nothing")).status, 403);

  const member = await callAs(OUTSIDER, [OPERATORS], server.socketPath, "GET", "/v1/health");
  assert.equal(member.status, 200);
  assert.equal(healthCalls, 1);
  const root = await callAs(0, [], server.socketPath, "GET", "/v1/health");
  assert.equal(root.status, 200);
});

test("image import reads the host path as the caller: a member cannot import a root-only directory, root can", { skip: NEEDS_ROOT }, async (t) => {
  const imported: string[] = [];
  const { server, dir } = await serveOpen(
    t,
    stubEngine({
      importImage: async (path) => {
        // The engine sees either the caller's own path (root) or a tar the caller's read produced.
        const { stdout } = await run("sh", ["-c", 'if [ -d "$1" ]; then echo dir; else tar -tf "$1" | sort | tr "\\n" " "; fi', "sh", path]);
        imported.push(stdout.trim());
        return IMAGE;
      },
    }),
  );
  const secret = join(dir, "root-only");
  await mkdir(secret, { mode: 0o700 });
  await writeFile(join(secret, "shadow"), "root:x\n", { mode: 0o600 });
  const open = join(dir, "open");
  await mkdir(open, { mode: 0o755 });
  await writeFile(join(open, "hello"), "hi\n", { mode: 0o644 });
  await chmod(open, 0o755);

  const refused = await callAs(OUTSIDER, [OPERATORS], server.socketPath, "POST", "/v1/images/import", { path: secret, name: "local/stolen" });
  assert.equal(refused.status, 403);
  assert.equal(errorOf(refused).code, "PERMISSION_DENIED");
  assert.match(errorOf(refused).message, new RegExp(`Cannot read "${secret}" as uid ${OUTSIDER}`));
  // A readable directory holding one unreadable file is refused too: the caller reads all of it.
  await writeFile(join(open, "private"), "x", { mode: 0o600 });
  const partly = await callAs(OUTSIDER, [OPERATORS], server.socketPath, "POST", "/v1/images/import", { path: open, name: "local/partly" });
  assert.equal(partly.status, 403);
  assert.deepEqual(imported, []);
  await rm(join(open, "private"));

  const member = await callAs(OUTSIDER, [OPERATORS], server.socketPath, "POST", "/v1/images/import", { path: open, name: "local/open" });
  assert.equal(member.status, 200, member.body);
  assert.deepEqual(imported, ["./ ./hello"]);
  const missing = await callAs(OUTSIDER, [OPERATORS], server.socketPath, "POST", "/v1/images/import", { path: join(dir, "nope"), name: "local/x" });
  assert.equal(missing.status, 404);

  const root = await callAs(0, [], server.socketPath, "POST", "/v1/images/import", { path: secret, name: "local/root" });
  assert.equal(root.status, 200, root.body);
  assert.deepEqual(imported, ["./ ./hello", "dir"]);
});

test("a member may not name host-file or daemon-environment secrets; root may", { skip: NEEDS_ROOT }, async (t) => {
  let reached = 0;
  const { server } = await serveOpen(t, stubEngine({ createSandbox: async () => (reached++, Promise.reject(new NotFoundError("stub"))) }));
  for (const source of ["file", "env"] as const) {
    const name = source === "file" ? "/etc/shadow" : "HOME";
    const body = { secrets: { S: { kind: "secret-ref", source, name, posture: "env" } } };
    const member = await callAs(OUTSIDER, [OPERATORS], server.socketPath, "POST", "/v1/sandboxes", body);
    assert.equal(member.status, 403);
    assert.equal(errorOf(member).code, "PERMISSION_DENIED");
    assert.match(errorOf(member).message, new RegExp(`Secret "S" reads the daemon host's`));
  }
  assert.equal(reached, 0);
  const root = await callAs(0, [], server.socketPath, "POST", "/v1/sandboxes", { secrets: { S: { kind: "secret-ref", source: "file", name: "/etc/shadow", posture: "env" } } });
  assert.equal(root.status, 404);
  assert.equal(reached, 1);
});
