/**
 * kill -9 of the daemon in the middle of an exec: the sandbox dies with it (die-with-parent), and
 * the next daemon start reaps every record, cgroup and directory the dead one left.
 */
import { loadOrCreateHostKey } from "../audit/keys.js";
import { auditFilePath } from "../audit/log.js";
import { tailAuditEntries } from "../audit/read.js";
import { verifyAuditFile } from "../audit/verify.js";
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostFootprint, processesInSandboxCgroups, sharedImagesDir, unavailableReason, waitFor } from "./harness.js";
import { DEFAULT_IMAGE } from "../engine.js";

const DAEMON = `
const m = await import(${JSON.stringify(new URL("../index.js", import.meta.url).href)});
const engine = await m.openEngine();
await m.startDaemonServer({ engine, socketPath: process.env.SOCK });
process.stdout.write("ready\\n");
`;

function startDaemon(stateDir: string, sock: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["--input-type=module", "-e", DAEMON], {
    env: { ...process.env, MVM_STATE_DIR: stateDir, MVM_IMAGES_DIR: sharedImagesDir(), SOCK: sock },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    child.stdout!.once("data", () => resolve(child));
    child.once("exit", (code) => reject(new Error(`daemon exited early (${code})`)));
  });
}

function call(sock: string, method: string, path: string, body?: unknown, onData?: (line: string) => void): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: sock, method, path, headers: { "content-type": "application/json" } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
        onData?.(d);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      res.on("error", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("error", reject);
    if (body !== undefined) req.end(JSON.stringify(body));
    else req.end();
  });
}

test("kill -9 of the daemon mid-exec leaves nothing behind after restart", { skip: unavailableReason() }, async () => {
  const stateDir = await mkdtemp(join(tmpdir(), "mvm-crash-"));
  const sock = join(stateDir, "run", "mvmd.sock");
  const daemon = await startDaemon(stateDir, sock);
  try {
    const created = await call(sock, "POST", "/v1/sandboxes", { backend: "namespace", image: DEFAULT_IMAGE, resources: { memoryMiB: 256, pids: 64 } });
    assert.ok(created.status >= 200 && created.status < 300, created.text);
    const id = (JSON.parse(created.text) as { id: string }).id;
    let sawStart!: () => void;
    const started = new Promise<void>((r) => (sawStart = r));
    const execDone = call(sock, "POST", `/v1/sandboxes/${id}/exec`, { argv: ["/bin/sh", "-c", "echo started; sleep 1000 & sleep 1000"] }, (d) => {
      if (d.includes('"stdout"')) sawStart();
    }).catch(() => undefined);
    await started;
    const fp = await hostFootprint(stateDir, id);
    assert.ok(existsSync(`/proc/${fp.pid}`));
    daemon.kill("SIGKILL");
    await execDone;
    assert.ok(await waitFor(() => !existsSync(`/proc/${fp.pid}`)), "sandbox outlived its daemon");
    assert.ok(await waitFor(async () => (await processesInSandboxCgroups(id)).length === 0), "processes left in the sandbox cgroups");
    assert.ok(existsSync(join(stateDir, "sandboxes", id)), "record is still there before the restart");

    const again = await startDaemon(stateDir, sock);
    try {
      assert.deepEqual(await readdir(join(stateDir, "sandboxes")), []);
      for (const cg of fp.cgroups) assert.equal(existsSync(cg), false, `cgroup left behind: ${cg}`);
      const list = await call(sock, "GET", "/v1/sandboxes");
      assert.ok(list.status >= 200 && list.status < 300);
      // What was acknowledged before the kill is in the log, the restart recorded the reaped
      // sandbox's end, and the chain verifies.
      const key = await loadOrCreateHostKey(stateDir);
      const verified = await verifyAuditFile(auditFilePath(stateDir), key.publicKey, { signatures: "all" });
      assert.ok(verified.ok, JSON.stringify(verified));
      const types = (await tailAuditEntries(auditFilePath(stateDir), 1000))
        .map((e) => e.entry?.event)
        .filter((e) => e !== undefined && "sandboxId" in e && e.sandboxId === id)
        .map((e) => (e!.type === "sandbox.killed" ? `${e!.type}:${e!.by}` : e!.type));
      assert.deepEqual(types, ["sandbox.created", "exec.started", "sandbox.killed:engine"]);
    } finally {
      again.kill("SIGTERM");
      await new Promise((r) => again.once("exit", r));
    }
  } finally {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill("SIGKILL");
    await rm(stateDir, { recursive: true, force: true });
  }
});
