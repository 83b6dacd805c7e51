/**
 * Test fixture: a stand-in for the real agent, small enough to read at a glance. It speaks
 * newline-delimited JSON on fd 0/1 instead of protocol frames:
 *
 *   out: {"hello":true,"pid":N,"uid":N,"argv":[...]}          once, at start
 *   in:  {"echo":"text"}      out: {"echo":"text"}
 *   in:  {"sh":"command"}     out: {"code":N|null,"signal":S|null,"stdout":"...","stderr":"..."}
 *   in:  {"stderr":N}         writes N bytes ("e") to its own stderr, then out: {"stderr":N}
 *
 * It exits when its stdin ends. Tests use it to run commands inside a sandbox through the
 * production launch path; it is never shipped.
 */
export const STAND_IN_AGENT_SOURCE = String.raw`
const { spawn } = require("node:child_process");
const { createInterface } = require("node:readline");

const LIMIT = 1024 * 1024;
const send = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
send({ hello: true, pid: process.pid, uid: process.getuid(), argv: process.argv.slice(2) });

function runShell(command) {
  return new Promise((resolve) => {
    const child = spawn("/bin/sh", ["-c", command], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: "/bin:/usr/bin:/sbin:/usr/sbin" },
    });
    const out = { stdout: "", stderr: "" };
    for (const name of ["stdout", "stderr"]) {
      child[name].setEncoding("utf8");
      child[name].on("data", (s) => { if (out[name].length < LIMIT) out[name] += s; });
    }
    child.on("error", (err) => resolve({ code: null, signal: null, stdout: "", stderr: String(err) }));
    child.on("close", (code, signal) => resolve({ code, signal, ...out }));
  });
}

const lines = createInterface({ input: process.stdin });
let chain = Promise.resolve();
lines.on("line", (line) => {
  chain = chain.then(async () => {
    const req = JSON.parse(line);
    if (typeof req.echo === "string") send({ echo: req.echo });
    else if (typeof req.sh === "string") send(await runShell(req.sh));
    else if (typeof req.stderr === "number") {
      await new Promise((resolve) => process.stderr.write(Buffer.alloc(req.stderr, "e"), resolve));
      send({ stderr: req.stderr });
    }
    else send({ error: "unknown request" });
  });
});
lines.on("close", () => { chain.then(() => process.exit(0)); });
`;
