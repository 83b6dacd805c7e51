export { startDaemonServer } from "./server.js";
export type { DaemonServer, DaemonServerOptions } from "./server.js";
export { HTTP_STATUS_BY_CODE } from "./http-io.js";
export { ensurePrivateDir } from "./runtime-dir.js";
export { MAX_STDIN_REQUEST_BYTES } from "./routes-sandboxes.js";
export { BuildImageApiRequest } from "@mvm/protocol";
