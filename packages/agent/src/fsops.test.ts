import assert from "node:assert/strict";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentDriver, AgentError } from "./_test/driver.js";
import { tempDir } from "./_test/util.js";
import { agentBundlePath } from "./index.js";

after(() => AgentDriver.killAll());

const T = { timeout: 30_000 };
const code = (c: string) => (e: AgentError) => e.code === c;

describe("file-system operations", () => {
  let d: AgentDriver;
  before(async () => {
    d = await AgentDriver.start();
  });
  after(async () => {
    assert.deepEqual(d.violations, []);
    await d.close();
  });

  it("lists a directory with lstat types, sorted by name", T, async () => {
    using dir = tempDir();
    writeFileSync(join(dir.path, "b.txt"), "12345");
    chmodSync(join(dir.path, "b.txt"), 0o640);
    mkdirSync(join(dir.path, "a-dir"));
    symlinkSync("/etc/passwd", join(dir.path, "c-link"));
    const { entries, truncated } = await d.call("listDir", { path: dir.path });
    assert.equal(truncated, false);
    assert.deepEqual(
      entries.map((e) => [e.name, e.type]),
      [
        ["a-dir", "dir"],
        ["b.txt", "file"],
        ["c-link", "symlink"],
      ],
    );
    const file = entries.find((e) => e.name === "b.txt")!;
    assert.equal(file.size, 5);
    assert.equal(file.mode, 0o640);
    assert.ok(file.mtimeMs > 0);
  });

  it("cuts a large listing to one control frame and says so", T, async () => {
    using dir = tempDir();
    for (let i = 0; i < 3000; i++) writeFileSync(join(dir.path, `file-${String(i).padStart(5, "0")}`), "");
    const { entries, truncated } = await d.call("listDir", { path: dir.path });
    assert.equal(truncated, true);
    assert.ok(entries.length > 100 && entries.length < 3000, `${entries.length} entries`);
    assert.equal(new Set(entries.map((e) => e.name)).size, entries.length);
  });

  it("maps listDir errors", T, async () => {
    await assert.rejects(d.call("listDir", { path: "/no/such/dir" }), code("NOT_FOUND"));
    await assert.rejects(d.call("listDir", { path: "/etc/passwd" }), code("INVALID_ARGUMENT"));
  });

  it("stats without following symlinks", T, async () => {
    using dir = tempDir();
    symlinkSync("/etc", join(dir.path, "l"));
    assert.equal((await d.call("stat", { path: join(dir.path, "l") })).type, "symlink");
    assert.equal((await d.call("stat", { path: "/etc" })).type, "dir");
    const root = await d.call("stat", { path: "/" });
    assert.equal(root.name, "/");
    const dev = await d.call("stat", { path: "/dev/null" });
    assert.equal(dev.type, "other");
    await assert.rejects(d.call("stat", { path: join(dir.path, "missing") }), (e: AgentError) => e.code === "NOT_FOUND" && e.message.includes("missing"));
  });

  it("makes directories", T, async () => {
    using dir = tempDir();
    await d.call("mkdir", { path: join(dir.path, "one"), recursive: false });
    await assert.rejects(d.call("mkdir", { path: join(dir.path, "one"), recursive: false }), code("ALREADY_EXISTS"));
    await assert.rejects(d.call("mkdir", { path: join(dir.path, "x", "y"), recursive: false }), code("NOT_FOUND"));
    await d.call("mkdir", { path: join(dir.path, "x", "y", "z"), recursive: true });
    await d.call("mkdir", { path: join(dir.path, "x", "y", "z"), recursive: true });
    assert.ok(existsSync(join(dir.path, "x", "y", "z")));
    writeFileSync(join(dir.path, "file"), "");
    await assert.rejects(d.call("mkdir", { path: join(dir.path, "file"), recursive: true }), code("ALREADY_EXISTS"));
    await assert.rejects(d.call("mkdir", { path: join(dir.path, "file", "sub"), recursive: true }), code("INVALID_ARGUMENT"));
  });

  it("removes files, links and directories", T, async () => {
    using dir = tempDir();
    writeFileSync(join(dir.path, "target"), "keep");
    symlinkSync(join(dir.path, "target"), join(dir.path, "link"));
    await d.call("remove", { path: join(dir.path, "link"), recursive: false });
    assert.equal(readFileSync(join(dir.path, "target"), "utf8"), "keep");
    mkdirSync(join(dir.path, "empty"));
    await d.call("remove", { path: join(dir.path, "empty"), recursive: false });
    mkdirSync(join(dir.path, "full", "deep"), { recursive: true });
    writeFileSync(join(dir.path, "full", "deep", "f"), "");
    await assert.rejects(d.call("remove", { path: join(dir.path, "full"), recursive: false }), code("INVALID_ARGUMENT"));
    await d.call("remove", { path: join(dir.path, "full"), recursive: true });
    await d.call("remove", { path: join(dir.path, "target"), recursive: false });
    assert.deepEqual(readdirSync(dir.path), []);
    await assert.rejects(d.call("remove", { path: join(dir.path, "gone"), recursive: true }), code("NOT_FOUND"));
  });

  it("refuses to remove the root", T, async () => {
    await assert.rejects(d.call("remove", { path: "/", recursive: true }), code("INVALID_ARGUMENT"));
    assert.ok(existsSync("/etc"));
  });

  it("renames", T, async () => {
    using dir = tempDir();
    writeFileSync(join(dir.path, "a"), "A");
    await d.call("rename", { from: join(dir.path, "a"), to: join(dir.path, "b") });
    assert.equal(readFileSync(join(dir.path, "b"), "utf8"), "A");
    await assert.rejects(d.call("rename", { from: join(dir.path, "a"), to: join(dir.path, "c") }), code("NOT_FOUND"));
    mkdirSync(join(dir.path, "d"));
    await assert.rejects(d.call("rename", { from: join(dir.path, "d"), to: join(dir.path, "d", "inside") }), code("INVALID_ARGUMENT"));
  });
});

describe("file-system operations as an unprivileged user", () => {
  it("maps EACCES to PERMISSION_DENIED", T, async () => {
    using dir = tempDir();
    chmodSync(dir.path, 0o755);
    writeFileSync(join(dir.path, "secret"), "s");
    chmodSync(join(dir.path, "secret"), 0o600);
    // The checkout may sit in a directory that uid 65534 cannot enter: run a world-readable copy
    // of the bundled agent (it is self-contained).
    using runDir = tempDir();
    chmodSync(runDir.path, 0o755);
    const entry = join(runDir.path, "agent.cjs");
    copyFileSync(agentBundlePath(), entry);
    chmodSync(entry, 0o644);
    const d = await AgentDriver.start({ entry, wrap: ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"] });
    await assert.rejects(d.call("mkdir", { path: join(dir.path, "new"), recursive: false }), code("PERMISSION_DENIED"));
    await assert.rejects(d.call("remove", { path: join(dir.path, "secret"), recursive: false }), code("PERMISSION_DENIED"));
    const stream = d.collect(d.newStreamId());
    const r = await d.request("readFile", { path: join(dir.path, "secret"), stream: stream.id });
    assert.ok(!r.ok && r.error.code === "PERMISSION_DENIED", JSON.stringify(r));
    const w = await d.request("writeFile", { path: join(dir.path, "w"), stream: d.newStreamId(), mode: 0o644, createParents: false });
    assert.ok(!w.ok && w.error.code === "PERMISSION_DENIED", JSON.stringify(w));
    assert.deepEqual(d.violations, []);
    await d.close();
  });
});
