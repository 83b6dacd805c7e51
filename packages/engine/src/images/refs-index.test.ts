import { test, describe, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InternalError, type Sha256Digest } from "@mvm/protocol";
import { readRefs, writeRefs, type RefsMap } from "./refs-index.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-refs-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const digest = (n: number): Sha256Digest => `sha256:${n.toString(16).padStart(64, "0")}` as Sha256Digest;

describe("refs.json", () => {
  test("round trip; missing file is empty; output is sorted and stable", async () => {
    const path = join(dir, "refs.json");
    assert.equal((await readRefs(path)).size, 0);
    const refs: RefsMap = new Map([
      ["zeta", digest(1)],
      ["debian:bookworm+python3", digest(2)],
    ]);
    await writeRefs(path, refs);
    assert.deepEqual(await readRefs(path), refs);
    const text = await readFile(path, "utf8");
    assert.ok(text.indexOf("debian:bookworm") < text.indexOf("zeta"));
    assert.deepEqual(JSON.parse(text), { version: 1, refs: { "debian:bookworm+python3": digest(2), zeta: digest(1) } });
    assert.deepEqual(await readdir(dir), ["refs.json"], "no temp file is left");
  });

  test("corrupt or foreign content is an InternalError with a hint", async () => {
    const path = join(dir, "refs.json");
    for (const bad of ["{", "[]", JSON.stringify({ version: 2, refs: {} }), JSON.stringify({ version: 1, refs: { x: "sha256:zz" } }),
      JSON.stringify({ version: 1, refs: {}, extra: 1 })]) {
      await writeFile(path, bad);
      await assert.rejects(readRefs(path), (err: unknown) => err instanceof InternalError && err.hint !== undefined, bad);
    }
    await writeFile(path, `{"version":1,"refs":{"__proto__":"${digest(1)}","ok":"${digest(2)}"}}`);
    assert.deepEqual([...(await readRefs(path)).keys()], ["ok"], "a __proto__ key never becomes a ref");
  });

  test("readers racing a writer always see a whole index", async () => {
    const path = join(dir, "refs.json");
    await writeRefs(path, new Map([["r0", digest(0)]]));
    let writing = true;
    const writer = (async () => {
      for (let i = 1; i <= 150; i++) {
        // Each version is large enough to take several write() calls if written in place.
        const refs: RefsMap = new Map(Array.from({ length: 200 + i }, (_, j) => [`ref-${i}-${j}`, digest(i)]));
        await writeRefs(path, refs);
      }
      writing = false;
    })();
    let reads = 0;
    while (writing) {
      const refs = await readRefs(path);
      const versions = new Set(refs.values());
      assert.equal(versions.size, 1, "one version per read");
      reads++;
    }
    await writer;
    assert.ok(reads > 0);
    assert.deepEqual(await readdir(dir), ["refs.json"]);
  });
});
