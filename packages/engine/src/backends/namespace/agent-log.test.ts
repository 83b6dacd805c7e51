import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { AGENT_LOG_MAX_BYTES, CappedLog } from "./agent-log.js";

test("the log keeps the first bytes up to the cap, drops the rest, and is private", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-log-"));
  try {
    const path = join(dir, "agent.log");
    const log = await CappedLog.open(path, 10);
    const source = new PassThrough();
    log.follow(source);
    source.write("hello ");
    source.write("world, and more that is dropped");
    source.end("!");
    await log.close(5_000);
    assert.equal(await readFile(path, "utf8"), "hello worl");
    assert.equal(log.bytesWritten, 10);
    assert.match(log.headText(), /^hello world, and more/);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("the default cap is 1 MiB and the source is drained past it", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-log-"));
  try {
    const path = join(dir, "agent.log");
    const log = await CappedLog.open(path);
    const source = new PassThrough();
    log.follow(source);
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    for (let i = 0; i < 40; i++) source.write(chunk); // 2.5 MiB, more than a pipe buffers
    source.end();
    await log.close(5_000);
    assert.equal(AGENT_LOG_MAX_BYTES, 1024 * 1024);
    assert.equal((await stat(path)).size, AGENT_LOG_MAX_BYTES);
    assert.equal(source.readableEnded, true);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("close gives up waiting for a source that never ends", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-log-"));
  try {
    const log = await CappedLog.open(join(dir, "agent.log"));
    const source = new PassThrough();
    log.follow(source);
    source.write("partial");
    await log.close(50);
    source.write("after close");
    source.end();
    assert.equal(await readFile(join(dir, "agent.log"), "utf8"), "partial");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
