import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError } from "@mvm/protocol";
import { ReplayStore } from "./replay.js";

const root = mkdtempSync(join(tmpdir(), "mvm-replay-test-"));
const opened: ReplayStore[] = [];
after(async () => {
  for (const store of opened) await store.close();
  rmSync(root, { recursive: true, force: true });
});
/** A store closed when the tests end. */
function storeAt(dir: string, maxRetentionMs?: number): ReplayStore {
  const store = new ReplayStore(maxRetentionMs === undefined ? { dir } : { dir, maxRetentionMs });
  opened.push(store);
  return store;
}
let n = 0;
const freshDir = () => join(root, `store-${n++}`);
const nonce = () => randomBytes(16).toString("hex");

/** Runs `consume(nonceHex)` in a separate Node process; resolves what it printed. */
function consumeInChild(dir: string, nonceHex: string): Promise<string> {
  const moduleUrl = new URL("./replay.js", import.meta.url).href;
  const script = `import { ReplayStore } from ${JSON.stringify(moduleUrl)};
const ok = await new ReplayStore({ dir: ${JSON.stringify(dir)} }).consume(${JSON.stringify(nonceHex)}, Date.now() + 60000);
process.stdout.write(String(ok));`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited with code ${code}`))));
  });
}

describe("replay store", () => {
  it("consumes a nonce once, and remembers it after a restart", async () => {
    const dir = freshDir();
    const id = nonce();
    const store = storeAt(dir);
    assert.equal(await store.has(id), false);
    assert.equal(await store.consume(id, Date.now() + 60_000), true);
    assert.equal(await store.consume(id, Date.now() + 60_000), false);
    const restarted = storeAt(dir);
    assert.equal(await restarted.has(id), true);
    assert.equal(await restarted.consume(id, Date.now() + 60_000), false);
    assert.equal(await restarted.consume(nonce(), Date.now() + 60_000), true);
  });

  it("keeps entries private: directory 0700, entries 0600", async () => {
    const dir = freshDir();
    const id = nonce();
    await storeAt(dir).consume(id, 5);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(join(dir, id)).mode & 0o777, 0o600);
  });

  it("lets exactly one of many concurrent callers in one process consume a nonce", async () => {
    const dir = freshDir();
    const id = nonce();
    const stores = Array.from({ length: 4 }, () => storeAt(dir));
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => stores[i % 4]!.consume(id, Date.now() + 60_000)));
    assert.equal(results.filter(Boolean).length, 1);
  });

  it("lets exactly one of several processes consume a nonce", async () => {
    const dir = freshDir();
    const id = nonce();
    const results = await Promise.all(Array.from({ length: 6 }, () => consumeInChild(dir, id)));
    assert.deepEqual(results.filter((r) => r === "true").length, 1);
    assert.deepEqual(results.filter((r) => r === "false").length, 5);
  });

  it("refuses a nonce that is not 32 lowercase hex digits (no path is built from it)", async () => {
    const store = storeAt(freshDir());
    for (const bad of ["../../etc/passwd", "A".repeat(32), "a".repeat(31), ""]) {
      await assert.rejects(store.consume(bad, 1), InvalidArgumentError);
    }
    await assert.rejects(store.consume(nonce(), -1), InvalidArgumentError);
  });

  it("compacts entries whose retention has passed and keeps the rest", async () => {
    const dir = freshDir();
    const store = storeAt(dir, 1000);
    const old = nonce();
    const live = nonce();
    await store.consume(old, 1_000);
    await store.consume(live, 5_000);
    // An entry left empty by a crash between create and write: kept until maxRetentionMs after its mtime.
    const torn = nonce();
    writeFileSync(join(dir, torn), "");
    utimesSync(join(dir, torn), 100, 100);
    writeFileSync(join(dir, "not-a-nonce"), "x");
    assert.deepEqual(await store.compact(2_000), { removed: 1, kept: 2 });
    assert.equal(await store.has(old), false);
    assert.equal(await store.has(live), true);
    assert.equal(await store.has(torn), true);
    assert.deepEqual(await store.compact(100_000 + 1001), { removed: 2, kept: 0 });
    assert.deepEqual(readdirSync(dir), ["not-a-nonce"]);
    assert.equal(await store.consume(old, 9_000), true);
  });

  it("reports a store it cannot write as an error, not as a fresh or replayed nonce", async () => {
    const file = join(root, `file-${n++}`);
    writeFileSync(file, "");
    await assert.rejects(storeAt(file).consume(nonce(), 1), (err: NodeJS.ErrnoException) => {
      assert.ok(err.code === "EEXIST" || err.code === "ENOTDIR", String(err.code));
      return true;
    });
  });
});

describe("replay store lifetime", () => {
  it("refuses calls after close and closes idempotently", async () => {
    const store = new ReplayStore({ dir: freshDir() });
    assert.equal(await store.consume(nonce(), 1), true);
    await store.close();
    await store.close();
    await assert.rejects(store.consume(nonce(), 1), /is closed/);
    await assert.rejects(store.compact(0), /is closed/);
  });
});
