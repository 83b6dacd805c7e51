/**
 * Runs inside a build's network namespace, as the build user: listens on 127.0.0.1:PORT (the only
 * address apt can reach there) and carries each connection to the engine's egress gateway over a
 * Unix socket. It decides nothing; the gateway does. Node builtins only.
 *
 * Usage: node _build-proxy.js SOCKET PORT READY_FILE
 */
import { writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";

const [socketPath, portText, readyFile] = process.argv.slice(2);
if (socketPath === undefined || portText === undefined || readyFile === undefined || !/^[0-9]{1,5}$/.test(portText)) {
  process.stderr.write("E: usage: _build-proxy SOCKET PORT READY_FILE\n");
  process.exit(2);
}
const server = createServer((client) => {
  const upstream = connect(socketPath);
  client.on("error", () => upstream.destroy());
  upstream.on("error", () => client.destroy());
  client.pipe(upstream).pipe(client);
});
server.listen(Number(portText), "127.0.0.1", () => writeFileSync(readyFile, "ready\n"));
