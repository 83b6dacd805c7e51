import { test, describe, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AbortedError } from "@mvm/protocol";
import { FileLock, isAlive, parseOwnerTag, processIdentity, selfIdentity } from "./lock.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "mvm-lock-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Pid of a process that has exited (and been reaped). */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", "0"], { stdio: "ignore" });
  await once(child, "exit");
  assert.ok(child.pid !== undefined);
  return child.pid;
}

const lockModule = new URL("./lock.js", import.meta.url).href;

/** Starts a node process that takes the lock, prints "locked", and holds it until killed. */
async function holdInChild(path: string) {
  const script = `import { FileLock } from ${JSON.stringify(lockModule)};
await FileLock.acquire(${JSON.stringify(path)});
process.stdout.write("locked\\n");
setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  const [chunk] = (await once(child.stdout, "data")) as [Buffer];
  assert.equal(chunk.toString(), "locked\n");
  return child;
}

describe("process identity", () => {
  test("reads this process and tells dead and reused pids apart", async () => {
    const me = await selfIdentity();
    assert.equal(me.pid, process.pid);
    assert.deepEqual(await processIdentity(process.pid), me);
    assert.equal(await isAlive(me), true);
    assert.equal(await isAlive({ pid: process.pid, startTime: "1" }), false, "same pid, other start time");
    assert.equal(await isAlive({ pid: await deadPid(), startTime: me.startTime }), false);
    assert.deepEqual(parseOwnerTag("12-34-abcd"), { pid: 12, startTime: "34" });
    assert.equal(parseOwnerTag("garbage"), undefined);
  });
});

describe("FileLock", () => {
  test("excludes another process until it dies, then the stale lock is taken over", async () => {
    const path = join(dir, "x.lock");
    const child = await holdInChild(path);
    try {
      const ac = new AbortController();
      const waiting = FileLock.acquire(path, { signal: ac.signal });
      const held = await readFile(path, "utf8");
      assert.equal(parseOwnerTag(held.trim())?.pid, child.pid, "the child holds the lock");
      ac.abort();
      await assert.rejects(waiting, AbortedError);
      assert.equal(await readFile(path, "utf8"), held, "an aborted waiter leaves the holder's lock alone");
    } finally {
      child.kill("SIGKILL");
      await once(child, "exit");
    }
    const lock = await FileLock.acquire(path);
    assert.equal(parseOwnerTag((await readFile(path, "utf8")).trim())?.pid, process.pid);
    await lock.release();
    assert.deepEqual(await readdir(dir), [], "no lock or temp file is left");
  });

  test("a waiter in this process gets the lock when the holder releases it", async () => {
    const path = join(dir, "x.lock");
    const first = await FileLock.acquire(path);
    const order: string[] = [];
    const second = FileLock.acquire(path).then((l) => {
      order.push("second acquired");
      return l;
    });
    order.push("first releasing");
    await first.release();
    const lock = await second;
    assert.deepEqual(order, ["first releasing", "second acquired"]);
    await lock.release();
    await lock.release(); // idempotent
    assert.deepEqual(await readdir(dir), []);
  });

  test("stale locks: dead pid, reused pid, unreadable content", async () => {
    const path = join(dir, "x.lock");
    const me = await selfIdentity();
    for (const content of [`${await deadPid()}-${me.startTime}-aa\n`, `${process.pid}-1-bb\n`, "not a lock\n", ""]) {
      await writeFile(path, content);
      const lock = await FileLock.acquire(path);
      assert.notEqual(await readFile(path, "utf8"), content);
      await lock.release();
    }
    assert.deepEqual(await readdir(dir), []);
  });

  test("release leaves a lock alone that is no longer its own", async () => {
    const path = join(dir, "x.lock");
    const lock = await FileLock.acquire(path);
    await writeFile(path, "someone-else\n");
    await lock.release();
    assert.equal(await readFile(path, "utf8"), "someone-else\n");
  });
});
