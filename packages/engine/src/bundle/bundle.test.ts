import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { InvalidArgumentError, NotFoundError, SnapshotMismatchError, canonicalJson, parseJsonStrict } from "@mvm/protocol";
import { materialize } from "../store/blobs.js";
import type { ChunkId } from "../store/chunks.js";
import { sha256Of, type BundleIndex, type BundleJson } from "./format.js";
import { pullBundle } from "./pull.js";
import { pushBundle } from "./push.js";
import { bundleReader, bundleWriter } from "./transport.js";
import { parseBundleDestination, parseBundleSource } from "./uri.js";
import { hostState, newHost, seedImage, seedSnapshot, tempParent, type TestHost } from "./_test/hosts.js";

let parent: string;
before(async () => {
  parent = await tempParent();
});
after(() => rm(parent, { recursive: true, force: true }));

const blobPath = (dir: string, digest: string) => join(dir, "blobs", "sha256", digest.slice("sha256:".length));

async function pull(host: TestHost, uri: string) {
  const source = parseBundleSource(uri);
  return pullBundle({ digest: source.digest, reader: bundleReader(source.location), snapshots: host.snapshots, images: host.images, retention: { manual: true }, tmpRoot: host.tmpRoot });
}

function flip(bytes: Buffer, at: number): void {
  bytes[at] = (bytes[at] ?? 0) ^ 1;
}

const EMPTY = { snapshots: 0, chunks: 0, images: 0, tmp: 0 };

describe("bundles through a file:// directory", () => {
  let a: TestHost;
  let dest: string;
  let pushed: Awaited<ReturnType<typeof pushBundle>>;
  let work: Buffer;
  let tmp: Buffer;
  let imageDigest: string;

  before(async () => {
    a = await newHost(parent, "a");
    const image = await seedImage(a, "app");
    imageDigest = image.digest;
    const seeded = await seedSnapshot(a, image);
    work = seeded.work;
    tmp = seeded.tmp;
    dest = join(parent, "out");
    pushed = await pushBundle({ image, snapshot: seeded.snap, chunks: a.snapshots.chunks, writer: bundleWriter(parseBundleDestination(`file://${dest}`)), tmpRoot: a.tmpRoot });
  });

  it("pushes a snapshot bundle and another host pulls it: same snapshot digest, same bytes, same image", async () => {
    assert.equal(pushed.kind, "snapshot");
    assert.equal(pushed.uri, `file://${dest}@${pushed.digest}`);
    const b = await newHost(parent, "b-ok");
    const result = await pull(b, pushed.uri);
    assert.equal(result.kind, "snapshot");
    assert.equal(result.image.digest, imageDigest);
    const snap = result.snapshot!;
    const [source] = await a.snapshots.list();
    assert.equal(snap.digest, source!.digest, "the snapshot digest does not depend on the host");
    assert.notEqual(snap.id, source!.id);
    assert.equal(snap.labels["purpose"], "bundle-test");
    // Signed by b's key: b's store reads it back.
    assert.equal((await b.snapshots.get(snap.id)).digest, snap.digest);
    const out = join(parent, "b-ok-work");
    await materialize(b.snapshots.chunks, snap.manifest.blobs.work!, out);
    assert.ok((await readFile(out)).equals(work));
    const outTmp = join(parent, "b-ok-tmp");
    await materialize(b.snapshots.chunks, snap.manifest.blobs.tmp!, outTmp);
    assert.ok((await readFile(outTmp)).equals(tmp));
    assert.equal(await b.images.verify(imageDigest), true);
    // Only the snapshot's chunks stay (the image's tar chunks went); no temp files.
    const state = await hostState(b);
    assert.deepEqual({ ...state, chunks: state.chunks > 0 }, { snapshots: 1, chunks: true, images: 1, tmp: 0 });
    // A second pull fetches no pack: every chunk is there and re-verifies.
    const again = await pull(b, pushed.uri);
    assert.equal(again.packsFetched, 0);
    assert.ok(again.chunksReused > 0);
  });

  it("pushes the same image to the same digest twice (the image tar is deterministic)", async () => {
    const image = (await a.images.resolve("app"))!;
    const dir = join(parent, "img-twice");
    const one = await pushBundle({ image, chunks: a.snapshots.chunks, writer: bundleWriter(parseBundleDestination(`file://${dir}`)), tmpRoot: a.tmpRoot });
    const two = await pushBundle({ image, chunks: a.snapshots.chunks, writer: bundleWriter(parseBundleDestination(`file://${dir}`)), tmpRoot: a.tmpRoot });
    assert.equal(one.kind, "image");
    // createdAt differs, so bundle digests differ; the index (the content) is the same.
    const indexOf = async (d: string) => (parseJsonStrict((await readFile(blobPath(dir, d))).toString()) as BundleJson).index.digest;
    assert.equal(await indexOf(one.digest), await indexOf(two.digest));
    const b = await newHost(parent, "b-image");
    const result = await pull(b, one.uri);
    assert.equal(result.kind, "image");
    assert.equal(result.snapshot, undefined);
    assert.equal(result.image.digest, image.digest);
    assert.deepEqual(await hostState(b), { ...EMPTY, images: 1 });
  });

  /** Copies the pushed directory so a test can damage its copy. */
  async function copyOfBundle(name: string): Promise<string> {
    const dir = join(parent, name);
    await cp(dest, dir, { recursive: true });
    return dir;
  }

  async function assertRefused(name: string, uri: string, expected: RegExp, type: new (...args: never[]) => Error = SnapshotMismatchError): Promise<void> {
    const b = await newHost(parent, name);
    await assert.rejects(pull(b, uri), (err: Error) => {
      assert.ok(err instanceof type, `${err.name}: ${err.message}`);
      assert.match(err.message, expected);
      return true;
    });
    assert.deepEqual(await hostState(b), EMPTY, "a refused pull leaves nothing behind");
  }

  async function readIndex(dir: string): Promise<{ bundle: BundleJson; index: BundleIndex }> {
    const bundle = parseJsonStrict((await readFile(blobPath(dir, pushed.digest))).toString()) as BundleJson;
    const index = parseJsonStrict((await readFile(blobPath(dir, bundle.index.digest))).toString()) as BundleIndex;
    return { bundle, index };
  }

  it("refuses a bundle.json with one byte flipped", async () => {
    const dir = await copyOfBundle("t-json");
    const path = blobPath(dir, pushed.digest);
    const bytes = await readFile(path);
    flip(bytes, bytes.length - 5);
    await writeFile(path, bytes);
    await assertRefused("b-t-json", `file://${dir}@${pushed.digest}`, /does not match its bytes/);
  });

  it("refuses an index with one byte flipped", async () => {
    const dir = await copyOfBundle("t-index");
    const { bundle } = await readIndex(dir);
    const path = blobPath(dir, bundle.index.digest);
    const bytes = await readFile(path);
    flip(bytes, 10);
    await writeFile(path, bytes);
    await assertRefused("b-t-index", `file://${dir}@${pushed.digest}`, /does not match its bytes/);
  });

  it("refuses a pack with one byte flipped", async () => {
    const dir = await copyOfBundle("t-pack");
    const { index } = await readIndex(dir);
    const path = blobPath(dir, index.packs[0]!.digest);
    const bytes = await readFile(path);
    flip(bytes, bytes.length - 1);
    await writeFile(path, bytes);
    await assertRefused("b-t-pack", `file://${dir}@${pushed.digest}`, /does not match its bytes/);
  });

  it("refuses a pack swapped for another blob of the bundle", async () => {
    const dir = await copyOfBundle("t-swap");
    const { bundle, index } = await readIndex(dir);
    await writeFile(blobPath(dir, index.packs[0]!.digest), await readFile(blobPath(dir, bundle.index.digest)));
    await assertRefused("b-t-swap", `file://${dir}@${pushed.digest}`, /bytes/);
  });

  it("refuses a chunk whose BLAKE3 is wrong, even when every sha256 above it was recomputed", async () => {
    // The source re-signs nothing: it rewrites a pack, then the index and bundle.json to match, and
    // hands out the new digest. Only the chunk's own hash can catch it.
    const dir = await copyOfBundle("t-chunk");
    const { bundle, index } = await readIndex(dir);
    const pack = index.packs[0]!;
    const packBytes = await readFile(blobPath(dir, pack.digest));
    flip(packBytes, 7);
    const packDigest = sha256Of(packBytes);
    await writeFile(blobPath(dir, packDigest), packBytes);
    const newIndex = { ...index, packs: [{ ...pack, digest: packDigest }, ...index.packs.slice(1)] };
    const indexBytes = Buffer.from(canonicalJson(newIndex));
    await writeFile(blobPath(dir, sha256Of(indexBytes)), indexBytes);
    const newBundle = { ...bundle, index: { digest: sha256Of(indexBytes), size: indexBytes.length } };
    const bundleBytes = Buffer.from(canonicalJson(newBundle));
    const digest = sha256Of(bundleBytes);
    await writeFile(blobPath(dir, digest), bundleBytes);
    await assertRefused("b-t-chunk", `file://${dir}@${digest}`, /does not match its bytes \(BLAKE3/);
  });

  it("re-verifies a chunk already in the local store, and replaces one that fails", async () => {
    const b = await newHost(parent, "b-local");
    const { bundle } = await readIndex(dest);
    const id = bundle.snapshot!.manifest.blobs.work!.chunks[0]! as ChunkId;
    // A corrupt file where the chunk would be: it must not be taken as the chunk.
    const path = b.snapshots.chunks.pathOf(id);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, "corrupt");
    const result = await pull(b, pushed.uri);
    assert.equal(result.chunksReused, 0);
    assert.ok(await b.snapshots.chunks.has(id));
  });

  it("refuses a source it cannot find, and a digest nothing has", async () => {
    await assertRefused("b-missing", `file://${join(parent, "nowhere")}@${pushed.digest}`, /not in/, NotFoundError);
    await assertRefused("b-absent", `file://${dest}@sha256:${"0".repeat(64)}`, /not in/, NotFoundError);
  });

  it("refuses a bundle.json over its size limit before reading it", async () => {
    const dir = join(parent, "t-big");
    const big = Buffer.alloc(17 * 1024 * 1024, 0x20);
    const digest = sha256Of(big);
    await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
    await writeFile(blobPath(dir, digest), big);
    await assertRefused("b-big", `file://${dir}@${digest}`, /over the/);
  });

  it("refuses a snapshot bundle pulled without a retention, before fetching a pack", async () => {
    const b = await newHost(parent, "b-noretention");
    const source = parseBundleSource(pushed.uri);
    await assert.rejects(
      pullBundle({ digest: source.digest, reader: bundleReader(source.location), snapshots: b.snapshots, images: b.images, tmpRoot: b.tmpRoot }),
      (err: Error) => err instanceof InvalidArgumentError && /retention/.test(err.message),
    );
    assert.deepEqual(await hostState(b), EMPTY);
  });

  it("leaves the pushed directory with blobs only", async () => {
    const names = await readdir(join(dest, "blobs", "sha256"));
    assert.ok(names.every((n) => /^[0-9a-f]{64}$/.test(n)), names.join(","));
  });
});
