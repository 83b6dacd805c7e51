/**
 * The real engine (namespace backend, a private state directory, the host's image store) reached
 * two ways: embedded in this process, and through a daemon server on a Unix socket with a
 * DaemonClient. End-to-end tests run the same steps over both.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EngineApi } from "@mvm/protocol";
import { startDaemonServer } from "@mvm/engine";
import { DaemonClient } from "../daemon-client.js";
import { openEmbeddedEngine } from "../embedded.js";

export const IMAGES = process.env["MVM_TEST_IMAGES_DIR"] ?? "/var/lib/mvm/images";
export const IMAGE = "debian:bookworm+python3";
const present = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);
/** Why the end-to-end tests skip, or false when the image store is there. */
export const skipWithoutImage: string | false = present ? false : `needs "${IMAGE}" in ${IMAGES}: run scripts/setup.sh`;

export interface RealEngines {
  transports: { name: "embedded" | "daemon"; engine: EngineApi }[];
  close(): Promise<void>;
}

export async function openRealEngines(prefix: string): Promise<RealEngines> {
  // The sandbox's uid must be able to pass through the state directory's parents.
  const stateDir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(stateDir, 0o711);
  const embedded = await openEmbeddedEngine({ engineOptions: { stateDir, imagesDir: IMAGES, defaultBackend: "namespace" } });
  const socketPath = join(stateDir, "run", "d.sock");
  const server = await startDaemonServer({ engine: embedded, socketPath });
  const client = new DaemonClient({ socketPath });
  return {
    transports: [
      { name: "embedded", engine: embedded },
      { name: "daemon", engine: client },
    ],
    async close() {
      await client.close();
      await server.close();
      await embedded.close();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
