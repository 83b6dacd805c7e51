/**
 * Test-host program: serves a directory read-only over plain HTTP (GET and HEAD only), run inside a
 * test network namespace by _debian-mirror.ts. Prints "ready PORT" on stdout once listening, and
 * one line per request ("GET /path status") after.
 *
 * Usage: node _static-server.js ROOT ADDRESS PORT
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import { join, normalize } from "node:path";

const [root, address, portText] = process.argv.slice(2);
if (root === undefined || address === undefined || portText === undefined) {
  process.stderr.write("usage: _static-server ROOT ADDRESS PORT\n");
  process.exit(2);
}
const server = createServer((req, res) => {
  const path = decodeURIComponent((req.url ?? "/").split("?")[0] ?? "/");
  const rel = normalize(path).replace(/^(\.\.(\/|$))+/, "");
  const file = join(root, rel);
  const done = (status: number): void => {
    process.stdout.write(`${req.method ?? "?"} ${path} ${status}\n`);
  };
  if ((req.method !== "GET" && req.method !== "HEAD") || !file.startsWith(root)) {
    res.writeHead(405).end();
    done(405);
    return;
  }
  stat(file).then(
    (st) => {
      if (!st.isFile()) throw new Error("not a file");
      res.writeHead(200, { "content-length": st.size, "content-type": "application/octet-stream" });
      if (req.method === "HEAD") res.end();
      else createReadStream(file).pipe(res);
      done(200);
    },
    () => {
      res.writeHead(404).end();
      done(404);
    },
  ).catch(() => {
    res.writeHead(404).end();
    done(404);
  });
});
server.listen(Number(portText), address, () => {
  const info = server.address();
  process.stdout.write(`ready ${typeof info === "object" && info ? info.port : portText}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
