/**
 * mvmctl's startup snapshot (dist/mvmctl.blob, written by scripts/bundle.mjs): bin/mvmctl.cjs run
 * as an executable hands it to Node when it fits this Node and this directory, and otherwise starts
 * the usual way; either way mvmctl behaves the same. Which way the launcher took is read from
 * `sh -x`'s trace of its exec line.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseJsonStrict } from "@mvm/protocol";
import { cliEnv, MVMCTL, skipWithoutImages } from "./_test/e2e-env.js";
import { scratchDir } from "./_test/scratch.js";

const DIST = join(dirname(MVMCTL), "..", "dist");
const BLOB = join(DIST, "mvmctl.blob");
const skipWithoutBlob = existsSync(BLOB) ? undefined : `no ${BLOB}: npm run build writes it`;

interface Traced {
  run: SpawnSyncReturns<string>;
  /** The launcher's exec line, from sh -x. */
  exec: string;
}

/** Runs `launcher` as the kernel would (sh reads the #! line), with sh -x to see its exec line. */
function traced(launcher: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env, input = ""): Traced {
  const run = spawnSync("sh", ["-x", launcher, ...args], { env, encoding: "utf8", input, timeout: 120_000 });
  const exec = run.stderr.split("\n").find((l) => l.startsWith("+ exec ")) ?? "";
  return { run, exec };
}

/** stderr after sh -x's trace, which ends with the exec line. */
function ownStderr(r: SpawnSyncReturns<string>): string {
  const at = r.stderr.indexOf("\n", r.stderr.indexOf("\n+ exec ") + 1);
  return r.stderr.slice(at + 1);
}

test("run as an executable, mvmctl starts from the snapshot and answers as the plain start does", { skip: skipWithoutBlob }, () => {
  for (const args of [["--help"], ["--version"], ["run", "--memory", "lots", "--", "true"], ["no-such-command"]]) {
    const snap = traced(MVMCTL, args);
    assert.match(snap.exec, /--snapshot-blob \S*mvmctl\.blob /, `${args.join(" ")}: ${snap.exec}`);
    const plain = spawnSync(process.execPath, [MVMCTL, ...args], { encoding: "utf8", input: "" });
    assert.equal(snap.run.status, plain.status, args.join(" "));
    assert.equal(snap.run.stdout, plain.stdout, args.join(" "));
    assert.equal(ownStderr(snap.run), plain.stderr, args.join(" "));
  }
});

test("through a symlink (npm's bin link) the launcher finds the snapshot beside the real file", { skip: skipWithoutBlob }, () => {
  const dir = scratchDir("snapshot-link");
  const link = join(dir, "mvmctl");
  symlinkSync(MVMCTL, link);
  const r = traced(link, ["--version"]);
  assert.equal(r.run.status, 0);
  assert.match(r.exec, /--snapshot-blob /);
  assert.match(r.run.stdout, /^mvmctl \d+\.\d+\.\d+\n$/);
});

test("a snapshot that does not fit (another Node, another directory, turned off, missing) is not used", { skip: skipWithoutBlob }, () => {
  // A copy of bin/ and dist/: its stamp names the original dist directory.
  const root = scratchDir("snapshot-copy");
  mkdirSync(join(root, "bin"));
  cpSync(MVMCTL, join(root, "bin", "mvmctl.cjs"));
  cpSync(join(DIST, "..", "package.json"), join(root, "package.json"));
  cpSync(DIST, join(root, "dist"), { recursive: true, filter: (src) => !src.endsWith(".test.js") });
  const copy = join(root, "bin", "mvmctl.cjs");
  const stamp = join(root, "dist", "mvmctl.blob.node");
  const expectPlain = (why: string, env: NodeJS.ProcessEnv = process.env): void => {
    const r = traced(copy, ["--version"], env);
    assert.equal(r.run.status, 0, `${why}: ${r.run.stderr}`);
    assert.match(r.exec, /^\+ exec node \S+mvmctl\.cjs --version$/, why);
    assert.match(r.run.stdout, /^mvmctl \d+\.\d+\.\d+\n$/, why);
  };
  expectPlain("another directory");

  // The same stamp rewritten for the copy's directory: now it fits.
  const [node] = readFileSync(stamp, "utf8").split("\n");
  const rewrite = (nodePath: string): void => {
    writeFileSync(stamp, `${nodePath}\n${join(root, "dist")}\n`);
    spawnSync("touch", ["-r", nodePath, stamp]);
  };
  rewrite(node!);
  assert.match(traced(copy, ["--version"]).exec, /--snapshot-blob /);

  expectPlain("turned off", { ...process.env, MVM_CLI_NO_SNAPSHOT: "1" });
  // The Node binary's mtime no longer the stamp's: a replaced Node.
  utimesSync(stamp, new Date(0), new Date(0));
  expectPlain("another Node binary (mtime)");
  // Another binary altogether.
  rewrite("/bin/sh");
  expectPlain("another Node binary (path)");
  rewrite(node!);
  rmSync(join(root, "dist", "mvmctl.blob"));
  expectPlain("no blob");
});

test("a run through the snapshot gives the workload's output and exit code", { skip: skipWithoutBlob ?? skipWithoutImages }, () => {
  const dir = scratchDir("snapshot-run");
  // The state directory below it must be searchable by the sandbox's uid.
  chmodSync(dirname(dir), 0o711);
  chmodSync(dir, 0o711);
  const env = cliEnv(dir);
  const args = ["--embedded", "run", "--backend", "namespace", "--", "sh", "-c", "echo out; echo err >&2; exit 7"];
  const snap = traced(MVMCTL, args, env);
  assert.match(snap.exec, /--snapshot-blob /);
  assert.equal(snap.run.status, 7, snap.run.stderr);
  assert.equal(snap.run.stdout, "out\n");
  assert.match(ownStderr(snap.run), /^err$/m);
});

test("a daemon and a client both started from the snapshot serve a run (HTTP loaded on first use)", { skip: skipWithoutBlob ?? skipWithoutImages }, async () => {
  const dir = scratchDir("snapshot-daemon");
  chmodSync(dirname(dir), 0o711);
  chmodSync(dir, 0o711);
  const env = cliEnv(dir);
  const sockets = join(dir, "sockets");
  mkdirSync(sockets, { mode: 0o700 });
  const socketPath = join(sockets, "d.sock");
  // The executable itself, as a user starts it: the daemon runs from the snapshot too.
  const daemon = spawn(MVMCTL, ["daemon", "--socket", socketPath], { env, stdio: ["ignore", "ignore", "pipe"] });
  const closed = new Promise<number | null>((resolve) => daemon.on("close", (code) => resolve(code)));
  try {
    await new Promise<void>((resolve, reject) => {
      let seen = "";
      daemon.stderr.on("data", (c: Buffer) => {
        if (seen.length < 64 * 1024) seen += c.toString();
        if (seen.includes(`listening on ${socketPath}`)) resolve();
      });
      daemon.on("close", () => reject(new Error(`daemon exited before listening: ${seen}`)));
    });
    const r = traced(MVMCTL, ["--socket", socketPath, "run", "--backend", "namespace", "--", "sh", "-c", "echo through; exit 5"], env);
    assert.match(r.exec, /--snapshot-blob /);
    assert.equal(r.run.status, 5, r.run.stderr);
    assert.equal(r.run.stdout, "through\n");
    // Modules loaded after deserialization load quietly (no snapshot-builder warnings).
    assert.doesNotMatch(ownStderr(r.run), /Warning|snapshot/i);
    const ls = traced(MVMCTL, ["--socket", socketPath, "--json", "ls"], env);
    assert.equal(ls.run.status, 0, ls.run.stderr);
    assert.deepEqual(parseJsonStrict(ls.run.stdout), []);
  } finally {
    daemon.kill("SIGTERM");
    assert.equal(await closed, 0);
  }
});
