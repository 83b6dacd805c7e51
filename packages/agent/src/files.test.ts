import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { INITIAL_STREAM_WINDOW } from "@mvm/protocol";
import { AgentDriver, AgentError, type Collector } from "./_test/driver.js";
import { tempDir } from "./_test/util.js";

after(() => AgentDriver.killAll());

const T = { timeout: 60_000 };
const MiB = 1024 * 1024;

/** Deterministic pseudo-random content, produced in 1 MiB chunks so the test holds little of it. */
function* content(totalBytes: number, seed: number): Generator<Buffer> {
  const block = createHash("sha512");
  block.update(String(seed));
  const pattern = Buffer.alloc(MiB);
  let h = block.digest();
  for (let at = 0; at < MiB; at += h.length) {
    h = createHash("sha512").update(h).digest();
    h.copy(pattern, at);
  }
  for (let sent = 0; sent < totalBytes; sent += MiB) {
    const n = Math.min(MiB, totalBytes - sent);
    const chunk = Buffer.from(pattern.subarray(0, n));
    chunk.writeUInt32BE(sent / MiB, 0);
    yield chunk;
  }
}

function digestOf(chunks: Iterable<Buffer>): string {
  const h = createHash("sha256");
  for (const c of chunks) h.update(c);
  return h.digest("hex");
}

async function fileDigest(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}

async function upload(d: AgentDriver, path: string, data: Iterable<Buffer>, opts: { mode?: number; createParents?: boolean } = {}) {
  const stream = d.newStreamId();
  const res = d.request("writeFile", { path, stream, mode: opts.mode ?? 0o644, createParents: opts.createParents ?? false });
  const sending = d.writeStream(stream, data);
  const r = await res;
  if (!r.ok) throw new AgentError(r.error.code, r.error.message);
  await sending;
  return r.result as { bytes: number };
}

async function download(d: AgentDriver, path: string, opts: { autoCredit?: boolean; keep?: boolean } = {}): Promise<{ size: number; stream: Collector }> {
  const stream = d.collect(d.newStreamId(), opts);
  const r = await d.request("readFile", { path, stream: stream.id });
  if (!r.ok) throw new AgentError(r.error.code, r.error.message);
  return { size: (r.result as { size: number }).size, stream };
}

/** Round-trips `totalBytes` through writeFile and readFile, checking content and agent memory. */
async function roundTrip(totalBytes: number, maxGrowthKiB: number): Promise<void> {
  using dir = tempDir();
  const d = await AgentDriver.start();
  const baseKiB = await d.memoryKiB("VmRSS");
  const path = join(dir.path, "big.bin");
  const expected = digestOf(content(totalBytes, 1));

  assert.deepEqual(await upload(d, path, content(totalBytes, 1)), { bytes: totalBytes });
  assert.equal(statSync(path).size, totalBytes);
  assert.equal(await fileDigest(path), expected);

  const { size, stream } = await download(d, path, { keep: false });
  await stream.finished;
  assert.equal(size, totalBytes);
  assert.equal(stream.aborted, undefined);
  assert.equal(stream.bytes, totalBytes);
  assert.equal(stream.hash.digest("hex"), expected);

  const peakKiB = await d.memoryKiB("VmHWM");
  assert.ok(peakKiB - baseKiB < maxGrowthKiB, `agent peak RSS ${peakKiB} KiB, ${baseKiB} KiB after start`);
  assert.deepEqual(d.violations, []);
  assert.deepEqual(readdirSync(dir.path), ["big.bin"]);
  await d.close();
}

/**
 * Growth of the agent's peak RSS allowed during a transfer. Streaming settles at roughly +50 MiB
 * whatever the size (buffers awaiting garbage collection); holding a 256 MiB file would not fit.
 */
const MAX_GROWTH_KIB = 96 * 1024;

describe("file transfer", () => {
  it("round-trips a 64 MiB file", { timeout: 120_000 }, async () => {
    await roundTrip(64 * MiB, MAX_GROWTH_KIB);
  });

  it("round-trips a 256 MiB file with bounded agent memory", { timeout: 300_000 }, async () => {
    await roundTrip(256 * MiB, MAX_GROWTH_KIB);
  });

  it(
    "round-trips a 1 GiB file with bounded agent memory",
    { timeout: 900_000, skip: process.env["MVM_TEST_LARGE"] === "1" ? false : "slow: runs when MVM_TEST_LARGE=1" },
    async () => {
      await roundTrip(1024 * MiB, MAX_GROWTH_KIB);
    },
  );
});

describe("readFile", () => {
  let d: AgentDriver;
  before(async () => {
    d = await AgentDriver.start();
  });
  after(async () => {
    assert.deepEqual(d.violations, []);
    await d.close();
  });

  it("streams an empty file as size 0 and END", T, async () => {
    using dir = tempDir();
    writeFileSync(join(dir.path, "empty"), "");
    const { size, stream } = await download(d, join(dir.path, "empty"));
    await stream.finished;
    assert.equal(size, 0);
    assert.equal(stream.bytes, 0);
    assert.equal(stream.aborted, undefined);
  });

  it("sends no more than the host's credit", T, async () => {
    using dir = tempDir();
    const path = join(dir.path, "f");
    writeFileSync(path, randomBytes(3 * MiB));
    const { stream } = await download(d, path, { autoCredit: false });
    await stream.waitBytes(INITIAL_STREAM_WINDOW);
    // Round trips give the agent every chance to overrun before the check.
    for (let i = 0; i < 3; i++) await d.call("ping", {});
    assert.equal(stream.bytes, INITIAL_STREAM_WINDOW);
    stream.autoCredit = true;
    stream.grant(INITIAL_STREAM_WINDOW);
    await stream.finished;
    assert.equal(Buffer.concat(stream.chunks).equals(readFileSync(path)), true);
  });

  it("aborts the stream when the file shrinks while being read", T, async () => {
    using dir = tempDir();
    const path = join(dir.path, "shrinks");
    writeFileSync(path, Buffer.alloc(2 * MiB, 1));
    const { size, stream } = await download(d, path, { autoCredit: false });
    assert.equal(size, 2 * MiB);
    await stream.waitBytes(INITIAL_STREAM_WINDOW);
    truncateSync(path, 1024);
    stream.grant(INITIAL_STREAM_WINDOW);
    await stream.finished;
    assert.equal(stream.aborted?.code, "INTERNAL");
    assert.match(stream.aborted.message, /shrank/);
  });

  it("refuses devices, FIFOs and directories without blocking", T, async () => {
    using dir = tempDir();
    const fifo = join(dir.path, "fifo");
    execFileSync("mkfifo", [fifo]);
    for (const path of ["/dev/zero", fifo, dir.path]) {
      await assert.rejects(download(d, path), (e: AgentError) => e.code === "INVALID_ARGUMENT" && e.message.includes(JSON.stringify(path)));
    }
  });

  it("reports a missing file as NOT_FOUND", T, async () => {
    await assert.rejects(download(d, "/no/such/file"), (e: AgentError) => e.code === "NOT_FOUND" && e.message.includes('"/no/such/file"'));
  });
});

describe("writeFile", () => {
  let d: AgentDriver;
  before(async () => {
    d = await AgentDriver.start();
  });
  after(async () => {
    assert.deepEqual(d.violations, []);
    await d.close();
  });

  it("creates parents on request and applies the mode exactly", T, async () => {
    using dir = tempDir();
    const path = join(dir.path, "a", "b", "c.txt");
    assert.deepEqual(await upload(d, path, [Buffer.from("hello")], { mode: 0o640, createParents: true }), { bytes: 5 });
    assert.equal(readFileSync(path, "utf8"), "hello");
    assert.equal(statSync(path).mode & 0o777, 0o640);
  });

  it("replaces an existing file atomically and leaves no temporary file", T, async () => {
    using dir = tempDir();
    const path = join(dir.path, "f");
    writeFileSync(path, "old");
    await upload(d, path, [Buffer.from("new content")]);
    assert.equal(readFileSync(path, "utf8"), "new content");
    assert.deepEqual(readdirSync(dir.path), ["f"]);
  });

  it("fails at once when the parent is missing and discards the rest of the stream", T, async () => {
    using dir = tempDir();
    const stream = d.newStreamId();
    const res = d.request("writeFile", { path: join(dir.path, "missing", "f"), stream, mode: 0o644, createParents: false });
    d.sendData(stream, Buffer.alloc(1000));
    const r = await res;
    assert.ok(!r.ok && r.error.code === "NOT_FOUND", JSON.stringify(r));
    d.sendData(stream, Buffer.alloc(1000));
    d.sendEnd(stream);
    assert.deepEqual(await d.call("ping", {}), {});
    assert.deepEqual(readdirSync(dir.path), []);
  });

  it("refuses to replace a directory and removes its temporary file", T, async () => {
    using dir = tempDir();
    mkdirSync(join(dir.path, "sub"));
    await assert.rejects(upload(d, join(dir.path, "sub"), [Buffer.from("x")]), (e: AgentError) => e.code === "INVALID_ARGUMENT");
    assert.deepEqual(readdirSync(dir.path), ["sub"]);
    await assert.rejects(upload(d, "/", [Buffer.from("x")]), (e: AgentError) => e.code === "INVALID_ARGUMENT");
  });

  it("answers ABORTED, removes the temporary file and keeps the target when the host aborts", T, async () => {
    using dir = tempDir();
    const path = join(dir.path, "kept");
    writeFileSync(path, "original");
    const stream = d.newStreamId();
    const res = d.request("writeFile", { path, stream, mode: 0o644, createParents: false });
    await d.writeStream(stream, Buffer.alloc(300_000, 7), false);
    d.sendControl({ t: "abort", stream, error: { code: "ABORTED", message: "caller gave up" } });
    const r = await res;
    assert.ok(!r.ok && r.error.code === "ABORTED", JSON.stringify(r));
    assert.match(r.ok ? "" : r.error.message, /caller gave up/);
    assert.equal(readFileSync(path, "utf8"), "original");
    assert.deepEqual(readdirSync(dir.path), ["kept"]);
  });

  it("grants credit as data reaches the disk, so uploads larger than the window complete", T, async () => {
    using dir = tempDir();
    const path = join(dir.path, "f");
    const data = randomBytes(3 * MiB + 5);
    assert.deepEqual(await upload(d, path, [data]), { bytes: data.length });
    assert.ok(readFileSync(path).equals(data));
    assert.ok(!existsSync(join(dir.path, ".mvm-upload")));
  });
});
