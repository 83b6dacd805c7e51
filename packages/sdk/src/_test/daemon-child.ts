/**
 * A real daemon in its own process, for tests that need the engine's environment to differ from
 * the caller's: `node daemon-child.js SOCKET STATE_DIR IMAGES_DIR`. The engine offers only the
 * namespace backend (container tier). Prints "ready" once it listens; exits on SIGTERM.
 */
import { openEngine, startDaemonServer } from "@mvm/engine";

const [socketPath, stateDir, imagesDir] = process.argv.slice(2);
if (socketPath === undefined || stateDir === undefined || imagesDir === undefined) {
  process.stderr.write("usage: daemon-child SOCKET STATE_DIR IMAGES_DIR\n");
  process.exit(2);
}
const engine = await openEngine({ stateDir, imagesDir, backends: ["namespace"] });
const server = await startDaemonServer({ engine, socketPath });
process.once("SIGTERM", () => {
  void server
    .close()
    .then(() => engine.close())
    .finally(() => process.exit(0));
});
process.stdout.write("ready\n");
