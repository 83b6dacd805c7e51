import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { UnsupportedCapabilityError } from "@mvm/protocol";
import { OciImageError } from "./documents.js";
import { toolSkipReason, ZSTD } from "./_fixture.js";
import { zstdDecompress } from "./zstd.js";

async function decode(chunks: Buffer[], maxBytes = 1 << 20): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of zstdDecompress((async function* () { yield* chunks; })(), maxBytes, "test layer")) out.push(c);
  return Buffer.concat(out);
}

/** `bytes` cut into chunks of 1 to `max` bytes. */
function split(bytes: Buffer, max: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = 1 + Math.floor(Math.random() * max);
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

test("decodes what the zstd CLI writes, in chunks of any size, several frames and skippable frames included", { skip: toolSkipReason(ZSTD) }, async () => {
  const plain = Buffer.concat([randomBytes(100_000), Buffer.alloc(300_000, "a")]);
  const one = execFileSync(ZSTD, ["-q", "-c", "--check"], { input: plain });
  const two = execFileSync(ZSTD, ["-q", "-c", "-19"], { input: plain.subarray(0, 1000) });
  const skippable = Buffer.concat([Buffer.from([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0]), Buffer.from("abc")]);
  const stream = Buffer.concat([one, skippable, two]);
  for (const max of [1, 7, 4096, stream.length]) {
    assert.deepEqual(await decode(split(stream, max)), Buffer.concat([plain, plain.subarray(0, 1000)]), `chunks up to ${max}`);
  }
  await assert.rejects(decode([one], 1000), (e: unknown) => e instanceof OciImageError && e.fault === "too-large");
  await assert.rejects(decode([one.subarray(0, one.length - 3)]), (e: unknown) => e instanceof OciImageError && e.fault === "schema");
});

test("a frame declaring a huge window or a dictionary is refused before the decoder sees it", async () => {
  // Magic, FHD 0 (no single segment, no dict), window descriptor 0xf8: 2^41 bytes.
  await assert.rejects(decode([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0, 0, 0])]), (e: unknown) => e instanceof UnsupportedCapabilityError && /window/.test(e.message));
  // Single segment, 8-byte content size of 2^40.
  await assert.rejects(decode([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0, 0, 1, 0, 0])]), UnsupportedCapabilityError);
  // A 1-byte dictionary id.
  await assert.rejects(decode([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x01, 0x50, 7, 1, 0, 0])]), (e: unknown) => e instanceof UnsupportedCapabilityError && /dictionary/.test(e.message));
});

test("property: any bytes after the magic give bytes or a typed error", async () => {
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), fc.integer({ min: 1, max: 50 }), async (tail, max) => {
      const stream = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from(tail)]);
      try {
        await decode(split(stream, max), 64 * 1024);
      } catch (e) {
        assert.ok(e instanceof OciImageError || e instanceof UnsupportedCapabilityError, String(e));
      }
    }),
    { numRuns: 1000 },
  );
});
