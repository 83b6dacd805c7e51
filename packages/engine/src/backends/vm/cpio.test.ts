import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { InvalidArgumentError } from "@mvm/protocol";
import { writeNewc } from "./cpio.js";

const hasCpio = spawnSync("cpio", ["--version"]).status === 0;

describe("writeNewc", () => {
  const archive = writeNewc([
    { type: "dir", path: "bin", mode: 0o755 },
    { type: "file", path: "bin/hello", mode: 0o555, data: Buffer.from("hello world\n") },
    { type: "symlink", path: "bin/sh", target: "hello" },
    { type: "dir", path: "dev", mode: 0o755 },
    { type: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
    { type: "file", path: "odd", mode: 0o644, data: Buffer.from("abc") },
  ]);

  it("aligns every record to 4 bytes and ends with the trailer", () => {
    assert.equal(archive.length % 4, 0);
    assert.equal(archive.subarray(0, 6).toString("latin1"), "070701");
    assert.ok(archive.includes(Buffer.from("TRAILER!!!\0")));
  });

  it("is what cpio reads back", { skip: !hasCpio && "cpio is not installed" }, () => {
    const listing = execFileSync("cpio", ["-t", "-v", "--quiet"], { input: archive, encoding: "utf8" });
    const lines = listing.trim().split("\n");
    assert.equal(lines.length, 6);
    assert.match(lines[0] ?? "", /^drwxr-xr-x .* bin$/);
    assert.match(lines[1] ?? "", /^-r-xr-xr-x .* 12 .* bin\/hello$/);
    assert.match(lines[2] ?? "", /^lrwxrwxrwx .* bin\/sh -> hello$/);
    assert.match(lines[4] ?? "", /^crw------- .* 5,\s+1 .* dev\/console$/);
    const content = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "bin/hello"], { input: archive, encoding: "utf8" });
    assert.equal(content, "hello world\n");
    const odd = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "odd"], { input: archive, encoding: "utf8" });
    assert.equal(odd, "abc");
  });

  it("is deterministic", () => {
    assert.deepEqual(writeNewc([{ type: "file", path: "a", mode: 0o644, data: Buffer.from("x") }]), writeNewc([{ type: "file", path: "a", mode: 0o644, data: Buffer.from("x") }]));
  });

  it("rejects unsafe paths and modes with type bits", () => {
    for (const path of ["/abs", "a/../b", ".."]) {
      assert.throws(() => writeNewc([{ type: "dir", path, mode: 0o755 }]), InvalidArgumentError);
    }
    assert.throws(() => writeNewc([{ type: "file", path: "a", mode: 0o100644, data: Buffer.alloc(0) }]), InvalidArgumentError);
  });
});
