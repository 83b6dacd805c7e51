// A daemon in a process of its own for the benches that compare clients of one daemon (python,
// mcp, e2b): a scratch state directory, namespace backend, the shared image store.
import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const MVMCTL = fileURLToPath(new URL("../packages/cli/bin/mvmctl.cjs", import.meta.url));

/**
 * Spawns `mvmctl ARGS` with `env` and resolves `ready` with the first match of `pattern` in its
 * stderr; `closed` resolves when it exits.
 */
export function startMvmctl(env, args, pattern) {
  const child = spawn(process.execPath, [MVMCTL, ...args], { env, stdio: ["ignore", "ignore", "pipe"] });
  const closed = new Promise((resolve) => child.on("close", resolve));
  const ready = new Promise((resolve, reject) => {
    let seen = "";
    child.stderr.on("data", (c) => {
      if (seen.length < 65536) seen += c;
      const m = pattern.exec(seen);
      if (m) resolve(m);
    });
    child.once("close", () => reject(new Error(`mvmctl ${args[0]} exited early: ${seen}`)));
  });
  return { child, closed, ready };
}

/**
 * Starts `mvmctl daemon` on a fresh scratch directory (traversable by sandbox uids) with `files`
 * written into it and `extraEnv(dir)` added to its environment. Resolves once it listens;
 * `stop()` ends it and removes the directory.
 */
export async function startBenchDaemon({ prefix, imagesDir, files = {}, extraEnv = () => ({}) }) {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await chmod(dir, 0o711);
  await mkdir(join(dir, "run"), { mode: 0o700 });
  const socketPath = join(dir, "run", "mvmd.sock");
  await writeFile(join(dir, "config.json"), "{}");
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  const env = {
    ...process.env,
    MVM_CONFIG: join(dir, "config.json"),
    MVM_STATE_DIR: join(dir, "state"),
    MVM_IMAGES_DIR: imagesDir,
    MVM_ACK_CONTAINER_TIER: "1",
    MVM_DEFAULT_BACKEND: "namespace",
    MVM_DAEMON_SOCKET: socketPath,
    ...extraEnv(dir),
  };
  const daemon = startMvmctl(env, ["daemon", "--socket", socketPath], /listening on/);
  const stop = async () => {
    daemon.child.kill("SIGTERM");
    await daemon.closed;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await daemon.ready;
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, env, socketPath, stop };
}
