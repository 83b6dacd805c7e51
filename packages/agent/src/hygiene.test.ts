import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";

const HYGIENE = new URL("./hygiene.js", import.meta.url).href;

/**
 * Runs a snippet in a fresh Node process with the hygiene module imported as `h`. With
 * `inheritedFd`, the process inherits that descriptor without close-on-exec (Node itself marks
 * the low ones close-on-exec up to the first gap after 15, so the number must be above that).
 */
function runSnippet(code: string, inheritedFd?: number) {
  const script = `import * as h from ${JSON.stringify(HYGIENE)};\n${code}`;
  const extra = inheritedFd === undefined ? [] : [...Array.from({ length: inheritedFd - 3 }, () => "ignore" as const), "pipe" as const];
  return spawnSync(process.execPath, ["--input-type=module", "-e", script], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe", ...extra],
  });
}

describe("hygiene", () => {
  it("routes console output and process.stdout to stderr", () => {
    const r = runSnippet('h.routeConsoleToStderr(); console.log("a"); console.info("b"); console.dir({ c: 1 }); process.stdout.write("d\\n");');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr, "a\nb\n{ c: 1 }\nd\n");
  });

  it("closes inherited descriptors that lack close-on-exec, and only those", () => {
    const check = [
      "const closed = h.closeInheritedFds();",
      'const { execFileSync } = await import("node:child_process");',
      'execFileSync("/bin/true");',
      "await new Promise((resolve) => setTimeout(resolve, 1));",
      "process.stderr.write(JSON.stringify(closed));",
    ].join("\n");
    const inherited = runSnippet(check, 40);
    assert.equal(inherited.status, 0, inherited.stderr);
    const closed = JSON.parse(inherited.stderr) as number[];
    assert.ok(closed.includes(40), inherited.stderr);
    assert.ok(closed.every((fd) => fd > 2));
    // Node's own descriptors (event loop, signal pipe) are close-on-exec and survive: the
    // process above could still spawn and run timers after the sweep.
    const plain = runSnippet(check);
    assert.equal(plain.status, 0, plain.stderr);
    assert.ok(!(JSON.parse(plain.stderr) as number[]).includes(40));
  });
});
