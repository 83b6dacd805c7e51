import { test, describe, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { appendFile, chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create as createTar } from "tar";
import { AbortedError, InvalidArgumentError, NotFoundError, type ProgressEvent } from "@mvm/protocol";
import { buildTar } from "./_tar-fixture.js";
import { selfIdentity } from "../store/lock.js";
import { ImageStore } from "./store.js";

let base: string;
let root: string;
let src: string;

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), "mvm-store-"));
  root = join(base, "images");
  src = join(base, "src");
  await mkdir(join(src, "usr/bin"), { recursive: true });
  await writeFile(join(src, "usr/bin/hello"), "#!/bin/sh\necho hello\n", { mode: 0o755 });
  await chmod(join(src, "usr/bin/hello"), 0o755);
  await mkdir(join(src, "etc"));
  await writeFile(join(src, "etc/os-release"), "ID=test\n");
  await chmod(join(src, "etc/os-release"), 0o644);
  for (const d of ["usr", "usr/bin", "etc"]) await chmod(join(src, d), 0o755);
  await chmod(src, 0o755);
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

async function blobs(): Promise<string[]> {
  return (await readdir(join(root, "blobs/sha256"))).sort();
}
async function tmpEntries(): Promise<string[]> {
  return readdir(join(root, "tmp"));
}

describe("ImageStore imports", () => {
  test("importDir stores a verified, world-readable tree and resolves by name and digest", async () => {
    const store = await ImageStore.open(root);
    const events: ProgressEvent[] = [];
    const rec = await store.importDir(src, "hello", { onProgress: (e) => events.push(e) });
    assert.match(rec.digest, /^sha256:[0-9a-f]{64}$/);
    assert.deepEqual(rec.refs, ["hello"]);
    assert.equal(rec.rootfsDir, join(root, "blobs/sha256", rec.digest.slice(7), "rootfs"));
    assert.equal(rec.sizeBytes, 21 + 8);
    assert.deepEqual(rec.source, { kind: "dir", detail: src });
    assert.equal(await readFile(join(rec.rootfsDir, "usr/bin/hello"), "utf8"), "#!/bin/sh\necho hello\n");
    assert.equal((await stat(rec.rootfsDir)).mode & 0o777, 0o755);
    assert.equal((await stat(join(rec.rootfsDir, ".."))).mode & 0o777, 0o755);
    const manifest = await readFile(join(rec.rootfsDir, "../manifest.json"));
    const { createHash } = await import("node:crypto");
    assert.equal(`sha256:${createHash("sha256").update(manifest).digest("hex")}`, rec.digest, "manifest.json hashes to the digest");
    assert.deepEqual(await store.resolve("hello"), rec);
    assert.deepEqual(await store.resolve(rec.digest), rec);
    assert.equal(await store.resolve("other"), undefined);
    assert.equal(await store.resolve(`sha256:${"0".repeat(64)}`), undefined);
    assert.equal(await store.verify(rec.digest), true);
    assert.deepEqual(await store.list(), [rec]);
    assert.deepEqual(await tmpEntries(), []);
    assert.deepEqual(events.map((e) => e.phase).filter((p, i, a) => a.indexOf(p) === i), ["unpack", "hash", "store", "done"]);
    const fractions = events.flatMap((e) => (e.fraction === undefined ? [] : [e.fraction]));
    assert.deepEqual(fractions, [...fractions].sort((a, b) => a - b), "fractions never go back");
  });

  test("a tar and a directory of the same tree get the same digest; identical trees are stored once", async () => {
    const store = await ImageStore.open(root);
    const tarPath = join(base, "src.tar");
    await createTar({ file: tarPath, cwd: src, portable: true }, ["."]);
    const fromDir = await store.importDir(src, "a");
    const fromTar = await store.importTar(tarPath, "b");
    assert.equal(fromTar.digest, fromDir.digest);
    assert.deepEqual(fromTar.refs, ["a", "b"]);
    assert.deepEqual(fromTar.source, fromDir.source, "the first import's metadata is kept");
    assert.equal((await blobs()).length, 1);
    const [listed] = await store.list();
    assert.deepEqual(listed?.refs, ["a", "b"]);
    assert.deepEqual(await tmpEntries(), []);
  });

  test("re-importing a name moves it; an image no ref points at is removed", async () => {
    const store = await ImageStore.open(root);
    const v1 = await store.importDir(src, "tool");
    await appendFile(join(src, "etc/os-release"), "VERSION=2\n");
    const v2 = await store.importDir(src, "tool");
    assert.notEqual(v2.digest, v1.digest);
    assert.deepEqual(await blobs(), [v2.digest.slice(7)]);
    assert.equal(await store.resolve(v1.digest), undefined);
  });

  test("remove: a ref, then the last ref with its blob, or a digest with all its refs", async () => {
    const store = await ImageStore.open(root);
    const rec = await store.importDir(src, "one");
    await store.importDir(src, "two");
    await store.remove("one");
    assert.deepEqual((await store.resolve(rec.digest))?.refs, ["two"]);
    assert.equal((await blobs()).length, 1);
    await store.remove("two");
    assert.deepEqual(await blobs(), []);
    assert.deepEqual(await store.list(), []);
    await assert.rejects(store.remove("two"), NotFoundError);
    await assert.rejects(store.remove(rec.digest), NotFoundError);

    const again = await store.importDir(src, "x");
    await store.importDir(src, "y");
    await store.remove(again.digest);
    assert.deepEqual(await blobs(), []);
    assert.equal(await store.resolve("x"), undefined);
    assert.equal(await store.resolve("y"), undefined);
    assert.deepEqual(await tmpEntries(), []);
  });

  test("hostile archives leave nothing behind", async () => {
    const store = await ImageStore.open(root);
    const hostile = [
      [{ path: "/etc/evil", content: "x" }],
      [{ path: "../evil", content: "x" }],
      [{ path: "a", type: "symlink" as const, linkpath: base }, { path: "a/evil", content: "x" }],
      [{ path: "p", type: "hardlink" as const, linkpath: "/etc/passwd" }],
      [{ path: `${"n".repeat(300)}/f`, content: "name too long" }],
    ];
    for (const [i, entries] of hostile.entries()) {
      const tarPath = join(base, `hostile${i}.tar`);
      await writeFile(tarPath, buildTar(entries));
      await assert.rejects(store.importTar(tarPath, "evil"), InvalidArgumentError);
    }
    assert.deepEqual(await blobs(), []);
    assert.deepEqual(await tmpEntries(), []);
    assert.equal(await store.resolve("evil"), undefined);
    await assert.rejects(lstat(join(base, "evil")), { code: "ENOENT" });
  });

  test("bad names and missing sources are typed errors", async () => {
    const store = await ImageStore.open(root);
    await assert.rejects(store.importDir(src, "debian:bookworm"), InvalidArgumentError);
    await assert.rejects(store.importDir(src, `sha256:${"a".repeat(64)}`), InvalidArgumentError);
    await assert.rejects(store.importDir(src, "Bad Name"), InvalidArgumentError);
    await assert.rejects(store.importDir(join(base, "missing"), "x"), NotFoundError);
    await assert.rejects(store.importTar(join(base, "missing.tar"), "x"), NotFoundError);
    await assert.rejects(store.importTar(src, "x"), InvalidArgumentError);
    await assert.rejects(store.buildDebian("mytool"), InvalidArgumentError);
    await assert.rejects(store.verify("sha256:xyz"), InvalidArgumentError);
    await assert.rejects(store.verify(`sha256:${"a".repeat(64)}`), NotFoundError);
  });

  test("ensure: stored refs resolve; unknown names and digests are NotFoundError with a hint", async () => {
    const store = await ImageStore.open(root);
    const rec = await store.importDir(src, "local");
    assert.deepEqual(await store.ensure("local"), rec);
    assert.deepEqual(await store.ensure(rec.digest), rec);
    await assert.rejects(store.ensure("nope"), (err: unknown) => err instanceof NotFoundError && /mvmctl image import/.test(err.hint ?? ""));
    await assert.rejects(store.ensure(`sha256:${"1".repeat(64)}`), (err: unknown) => err instanceof NotFoundError && /mvmctl image build/.test(err.hint ?? ""));
  });

  test("abort: before start and in the middle; nothing is stored or left in tmp", async () => {
    const store = await ImageStore.open(root);
    await assert.rejects(store.importDir(src, "x", { signal: AbortSignal.abort() }), AbortedError);
    const ac = new AbortController();
    await assert.rejects(
      store.importDir(src, "x", {
        signal: ac.signal,
        onProgress: (e) => {
          if (e.phase === "hash") ac.abort();
        },
      }),
      AbortedError,
    );
    assert.deepEqual(await blobs(), []);
    assert.deepEqual(await tmpEntries(), []);
    assert.equal(await store.resolve("x"), undefined);
  });
});

describe("ImageStore.verify", () => {
  test("detects changed content, mode bits and added special files", async () => {
    const store = await ImageStore.open(root);
    const tampers: [string, (rootfs: string) => Promise<void>][] = [
      ["content", (r) => appendFile(join(r, "etc/os-release"), "x")],
      ["setuid", (r) => chmod(join(r, "usr/bin/hello"), 0o4755)],
      ["fifo", async (r) => void execFileSync("mkfifo", [join(r, "etc/fifo")])],
      ["removed", (r) => rm(join(r, "usr/bin/hello"))],
    ];
    for (const [name, tamper] of tampers) {
      const rec = await store.importDir(src, "t");
      assert.equal(await store.verify(rec.digest), true);
      await tamper(rec.rootfsDir);
      assert.equal(await store.verify(rec.digest), false, name);
      await store.remove(rec.digest);
    }
  });
});

describe("ImageStore recovery and concurrency", () => {
  test("open removes work dirs of dead owners, orphan blobs and dangling refs, keeps live work dirs", async () => {
    const store = await ImageStore.open(root);
    const rec = await store.importDir(src, "kept");
    const child = spawn(process.execPath, ["-e", "0"], { stdio: "ignore" });
    await once(child, "exit");
    const dead = join(root, "tmp", `${child.pid}-12345-abcdef`);
    await mkdir(join(dead, "rootfs/usr"), { recursive: true });
    await writeFile(join(dead, "rootfs/usr/file"), "partial");
    const me = await selfIdentity();
    const live = join(root, "tmp", `${me.pid}-${me.startTime}-live`);
    await mkdir(live);
    await writeFile(join(root, `refs.json.${child.pid}-12345-ab.tmp`), "{");
    const orphan = join(root, "blobs/sha256", "f".repeat(64));
    await mkdir(join(orphan, "rootfs"), { recursive: true });
    const refs = JSON.parse(await readFile(join(root, "refs.json"), "utf8")) as { refs: Record<string, string> };
    refs.refs["dangling"] = `sha256:${"e".repeat(64)}`;
    await writeFile(join(root, "refs.json"), JSON.stringify(refs));

    const reopened = await ImageStore.open(root);
    assert.deepEqual(await tmpEntries(), [`${me.pid}-${me.startTime}-live`]);
    assert.deepEqual(await blobs(), [rec.digest.slice(7)]);
    assert.equal(await reopened.resolve("dangling"), undefined);
    assert.deepEqual((await reopened.list()).map((r) => r.refs), [["kept"]]);
    assert.deepEqual((await readdir(root)).sort(), ["blobs", "locks", "refs.json", "tmp"]);
  });

  test("concurrent imports in one process: one blob, every ref", async () => {
    const store = await ImageStore.open(root);
    const names = ["c1", "c2", "c3", "c4", "c5"];
    const recs = await Promise.all(names.map((n) => store.importDir(src, n)));
    assert.equal(new Set(recs.map((r) => r.digest)).size, 1);
    assert.equal((await blobs()).length, 1);
    assert.deepEqual((await store.list())[0]?.refs, names);
    assert.deepEqual(await tmpEntries(), []);
  });

  test("concurrent imports from two processes keep the store consistent", async () => {
    await ImageStore.open(root);
    const storeModule = new URL("./store.js", import.meta.url).href;
    const run = (prefix: string) => {
      const script = `import { ImageStore } from ${JSON.stringify(storeModule)};
const store = await ImageStore.open(${JSON.stringify(root)});
for (let i = 0; i < 6; i++) await store.importDir(${JSON.stringify(src)}, "${prefix}" + i);`;
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
      return once(child, "exit").then(([code]) => assert.equal(code, 0, stderr));
    };
    await Promise.all([run("p"), run("q")]);
    const store = await ImageStore.open(root);
    const list = await store.list();
    assert.equal(list.length, 1);
    assert.equal(list[0]?.refs.length, 12);
    assert.equal(await store.verify(list[0]?.digest ?? ""), true);
    assert.deepEqual(await tmpEntries(), []);
  });
});
