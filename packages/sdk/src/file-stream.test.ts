import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { generated } from "./_test/fake-engine.js";
import { startFakeDaemon } from "./_test/harness.js";

const SIZE = 256 * 1024 * 1024;
/** How far a producer may run ahead of its consumer: socket and stream buffers, not the file. */
const MAX_AHEAD = 16 * 1024 * 1024;
/** Loose bound on resident memory growth while 256 MiB go through; buffering the file would exceed it. */
const MAX_RSS_GROWTH = 128 * 1024 * 1024;

async function expectedSha256(size: number): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of generated(size)) hash.update(chunk);
  return hash.digest("hex");
}

test("a 256 MiB file streams out of the sandbox with back-pressure and bounded memory", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const expected = await expectedSha256(SIZE);
  const baseline = process.memoryUsage.rss();
  let peakRss = baseline;
  let maxAhead = 0;

  const file = await client.readFile(sb.id, `/gen/${SIZE}`);
  assert.equal(file.size, SIZE);
  const hash = createHash("sha256");
  let received = 0;
  for await (const chunk of file.body) {
    received += chunk.byteLength;
    hash.update(chunk);
    maxAhead = Math.max(maxAhead, engine.generatedBytes - received);
    if ((received & 0xffffff) < chunk.byteLength) peakRss = Math.max(peakRss, process.memoryUsage.rss());
  }
  assert.equal(received, SIZE);
  assert.equal(hash.digest("hex"), expected);
  assert.ok(maxAhead < MAX_AHEAD, `the engine ran ${maxAhead} bytes ahead of the reader`);
  assert.ok(peakRss - baseline < MAX_RSS_GROWTH, `rss grew by ${peakRss - baseline} bytes`);
});

test("a 256 MiB upload streams into the sandbox with back-pressure and bounded memory", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const expected = await expectedSha256(SIZE);
  const baseline = process.memoryUsage.rss();
  let peakRss = baseline;
  let produced = 0;
  let maxAhead = 0;
  async function* source(): AsyncGenerator<Uint8Array> {
    for await (const chunk of generated(SIZE)) {
      maxAhead = Math.max(maxAhead, produced - engine.sinkBytes);
      if ((produced & 0xffffff) < chunk.byteLength) peakRss = Math.max(peakRss, process.memoryUsage.rss());
      produced += chunk.byteLength;
      yield chunk;
    }
  }
  const result = await client.writeFile(sb.id, "/sink/big.bin", source());
  assert.equal(result.bytes, SIZE);
  assert.deepEqual(engine.sinks.get("/sink/big.bin"), { bytes: SIZE, sha256: expected });
  assert.ok(maxAhead < MAX_AHEAD, `the writer ran ${maxAhead} bytes ahead of the engine`);
  assert.ok(peakRss - baseline < MAX_RSS_GROWTH, `rss grew by ${peakRss - baseline} bytes`);
});

test("a reader that stops early releases the stream", async (t) => {
  const { client, engine } = await startFakeDaemon(t);
  const sb = await client.createSandbox({});
  const file = await client.readFile(sb.id, `/gen/${SIZE}`);
  let got = 0;
  for await (const chunk of file.body) {
    got += chunk.byteLength;
    if (got >= 1024 * 1024) break;
  }
  // The daemon stops pulling once the connection is gone; the engine never produced the whole file.
  const after = await client.listSandboxes();
  assert.equal(after.length, 1);
  assert.ok(engine.generatedBytes < SIZE, `generated ${engine.generatedBytes} bytes`);
});
