/**
 * The directory-transfer tar codec: what the writer makes, the reader gives back (property test,
 * cut at arbitrary chunk boundaries); the system's GNU tar reads it; and hostile archives fail
 * with InvalidArgumentError, never an escape or an unbounded read.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { InvalidArgumentError } from "./errors.js";
import { readTar, tarEnd, tarHeader, tarPadding, type TarEntry } from "./tar.js";

const RUNS = Number(process.env["MVM_FUZZ_RUNS"] ?? 200);
const LIMITS = { maxEntries: 1000, maxBytes: 1 << 24 };

function archive(files: { entry: TarEntry; body?: Uint8Array }[], end = true): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const { entry, body } of files) {
    parts.push(tarHeader(entry));
    if (body) parts.push(body, tarPadding(body.length));
  }
  if (end) parts.push(tarEnd());
  return Buffer.concat(parts);
}

async function* cut(bytes: Uint8Array, sizes: number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  let i = 0;
  while (at < bytes.length) {
    const n = Math.max(1, sizes[i++ % Math.max(1, sizes.length)] ?? 4096);
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

async function readAll(source: AsyncIterable<Uint8Array>, limits = LIMITS): Promise<{ entry: TarEntry; body: Buffer }[]> {
  const out: { entry: TarEntry; body: Buffer }[] = [];
  for await (const { entry, body } of readTar(source, limits)) {
    const chunks: Uint8Array[] = [];
    for await (const c of body) chunks.push(c);
    out.push({ entry, body: Buffer.concat(chunks) });
  }
  return out;
}

const segment = fc.stringMatching(/^[a-zA-Z0-9_.é -]{1,40}$/).filter((s) => s !== "." && s !== "..");
const relPath = fc.array(segment, { minLength: 1, maxLength: 8 }).map((p) => p.join("/"));

describe("tar codec", () => {
  it("reads back what it writes, whatever the chunking (long and non-ASCII names through pax)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.record({ path: relPath, body: fc.uint8Array({ maxLength: 1500 }), mode: fc.integer({ min: 0, max: 0o777 }) }), {
          selector: (f) => f.path,
          maxLength: 6,
        }),
        fc.array(fc.integer({ min: 1, max: 2000 }), { minLength: 1, maxLength: 5 }),
        async (files, sizes) => {
          const input = files.map((f) => ({
            entry: { path: f.path, type: "file" as const, mode: f.mode, size: f.body.length, mtimeMs: 1_700_000_000_000 },
            body: f.body,
          }));
          const got = await readAll(cut(archive(input), sizes));
          assert.deepEqual(
            got.map((g) => [g.entry.path, g.entry.mode, [...g.body]]),
            files.map((f) => [f.path, f.mode, [...f.body]]),
          );
        },
      ),
      { numRuns: RUNS },
    );
  });

  it("writes archives GNU tar extracts, and reads what GNU tar writes", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "mvm-tar-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const long = `${"d".repeat(120)}/${"f".repeat(120)}.txt`;
    const bytes = archive([
      { entry: { path: "sub", type: "dir", mode: 0o755, size: 0, mtimeMs: 0 } },
      { entry: { path: "sub/a.txt", type: "file", mode: 0o600, size: 2, mtimeMs: 0 }, body: Buffer.from("hi") },
      { entry: { path: long, type: "file", mode: 0o644, size: 1, mtimeMs: 0 }, body: Buffer.from("x") },
      { entry: { path: "héllo", type: "file", mode: 0o644, size: 0, mtimeMs: 0 }, body: new Uint8Array(0) },
    ]);
    writeFileSync(join(dir, "a.tar"), bytes);
    mkdirSync(join(dir, "out"));
    execFileSync("tar", ["-xf", join(dir, "a.tar"), "-C", join(dir, "out")]);
    assert.equal(readFileSync(join(dir, "out/sub/a.txt"), "utf8"), "hi");
    assert.equal(readFileSync(join(dir, "out", long), "utf8"), "x");
    assert.equal(readFileSync(join(dir, "out/héllo"), "utf8"), "");

    const gnu = execFileSync("tar", ["--format=gnu", "-cf", "-", "-C", join(dir, "out"), "."]);
    const got = await readAll(cut(gnu, [777]));
    const files = got.filter((g) => g.entry.type === "file").map((g) => [g.entry.path, g.body.toString()]).sort();
    assert.deepEqual(files, [[long, "x"], ["héllo", ""], ["sub/a.txt", "hi"]].sort());
  });

  it("refuses unsafe paths, truncation, bad checksums and archives over the limits", async () => {
    const file = (path: string): { entry: TarEntry; body: Uint8Array } => ({
      entry: { path, type: "file", mode: 0o644, size: 1, mtimeMs: 0 },
      body: Buffer.from("x"),
    });
    const bad = async (bytes: Uint8Array, pattern: RegExp, limits = LIMITS): Promise<void> => {
      await assert.rejects(readAll(cut(bytes, [100]), limits), (err: unknown) => err instanceof InvalidArgumentError && pattern.test(err.message));
    };
    await bad(archive([file("../escape")]), /contains "\.\."/);
    await bad(archive([file("a/../../escape")]), /contains "\.\."/);
    await bad(archive([file("/etc/passwd")]), /absolute/);
    await bad(archive([file("ok")], false), /truncated/);
    await bad(archive([file("ok")]).subarray(0, 700), /truncated/);
    const corrupt = archive([file("ok")]);
    corrupt[10] = 0x41;
    await bad(corrupt, /checksum/);
    await bad(archive([file("a"), file("b")]), /more than 1 entries/, { maxEntries: 1, maxBytes: 100 });
    await bad(archive([file("a"), file("b")]), /more than 1 bytes/, { maxEntries: 10, maxBytes: 1 });
    await bad(new Uint8Array(100), /truncated/);
  });

  it("refuses compressed streams, oversized metadata and names that are not UTF-8; reads an empty tree", async () => {
    const bad = async (bytes: Uint8Array, pattern: RegExp): Promise<void> => {
      await assert.rejects(readAll(cut(bytes, [300])), (err: unknown) => err instanceof InvalidArgumentError && pattern.test(err.message));
    };
    const one = archive([{ entry: { path: "a", type: "file", mode: 0o644, size: 1, mtimeMs: 0 }, body: Buffer.from("x") }]);
    await bad(execFileSync("gzip", ["-c"], { input: one }), /compressed/);
    // A pax record over 64 KiB: a path of 70,000 bytes.
    const longPath = archive([{ entry: { path: "p/".repeat(35_000) + "f", type: "file", mode: 0o644, size: 0, mtimeMs: 0 }, body: new Uint8Array(0) }]);
    await bad(longPath, /metadata record is \d+ bytes, over the limit/);
    // A ustar name with a byte that is not UTF-8 (checksum fixed after the edit).
    const latin1 = Buffer.from(archive([{ entry: { path: "caf_", type: "file", mode: 0o644, size: 0, mtimeMs: 0 }, body: new Uint8Array(0) }]));
    latin1[3] = 0xe9;
    latin1.fill(0x20, 148, 156);
    let sum = 0;
    for (const x of latin1.subarray(0, 512)) sum += x;
    latin1.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    await bad(latin1, /not UTF-8/);
    assert.deepEqual(await readAll(cut(tarEnd(), [1])), []);
  });

  it("normalizes paths and skips a body the caller does not read", async () => {
    const bytes = archive([
      { entry: { path: "./a//b", type: "file", mode: 0o644, size: 3, mtimeMs: 0 }, body: Buffer.from("abc") },
      { entry: { path: "c", type: "file", mode: 0o644, size: 1, mtimeMs: 0 }, body: Buffer.from("z") },
    ]);
    const paths: string[] = [];
    for await (const { entry } of readTar(cut(bytes, [5]), LIMITS)) paths.push(entry.path);
    assert.deepEqual(paths, ["a/b", "c"]);
  });
});
