import { describe, it, beforeEach, afterEach, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { lstat, mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { InvalidArgumentError, UnsupportedCapabilityError } from "@mvm/protocol";
import { ImageStore, type ImageStoreOptions } from "../store.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "../../oci/_test/registry.js";
import { DockerArchiveManifest, ImageConfig, ImageIndex, ImageManifest, OciImageError, parseOciDocument, selectPlatform, type OciFault } from "./documents.js";
import { parseRegistryRef } from "./pull.js";
import { SKOPEO, sha256, toolSkipReason, UMOCI, writeHandLayout, writeUmociLayout, ZSTD, type HandLayer, type HandLayoutOptions } from "./_fixture.js";

let base: string;
let store: ImageStore;

async function freshStore(options: ImageStoreOptions = {}): Promise<void> {
  store = await ImageStore.open(join(base, "store"), options);
}

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), "mvm-oci-"));
  await freshStore();
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

/** Nothing of a failed import is left: no image, no work dir. */
async function assertNothingLeft(): Promise<void> {
  assert.deepEqual(await store.list(), []);
  assert.deepEqual(await readdir(join(base, "store", "tmp")), []);
}

async function importHand(layers: HandLayer[], options: HandLayoutOptions = {}) {
  const dir = join(base, "hand");
  await writeHandLayout(dir, layers, options);
  return store.importOci(`oci-layout:${dir}`, "hand/img");
}

async function refusedWith(layers: HandLayer[], fault: OciFault | "invalid", options: HandLayoutOptions = {}): Promise<void> {
  await assert.rejects(importHand(layers, options), (err: unknown) => {
    if (fault === "invalid") return err instanceof InvalidArgumentError;
    return err instanceof OciImageError && err.fault === fault;
  });
  await assertNothingLeft();
}

const file = (path: string, content = "x"): HandLayer["entries"][number] => ({ path, content });

describe("OCI layers applied in order", () => {
  it("honours whiteouts and opaque dirs, keeps what the same layer wrote, records the config's defaults", async () => {
    const rec = await importHand(
      [
        { entries: [{ path: "d", type: "dir" }, file("d/a"), file("d/b"), file("gone"), { path: "keep", type: "dir" }, file("keep/k")] },
        { entries: [file("d/c"), { path: "d/.wh..wh..opq" }, { path: ".wh.gone" }, file("new"), { path: ".wh.new" }] },
      ],
      { env: ["A=1", "PATH=/bin"], workingDir: "/srv", user: "1000:1000", cmd: ["sh", "-c", "true"] },
    );
    assert.deepEqual((await readdir(join(rec.rootfsDir, "d"))).sort(), ["c"]);
    await assert.rejects(lstat(join(rec.rootfsDir, "gone")), { code: "ENOENT" });
    assert.equal(await readFile(join(rec.rootfsDir, "new"), "utf8"), "x", "a whiteout does not remove what its own layer wrote");
    assert.equal(await readFile(join(rec.rootfsDir, "keep/k"), "utf8"), "x");
    assert.equal(rec.source.kind, "oci-layout");
    assert.deepEqual(rec.oci?.defaults, { env: { A: "1", PATH: "/bin" }, workingDir: "/srv", user: "1000:1000", cmd: ["sh", "-c", "true"] });
    assert.match(rec.oci?.manifestDigest ?? "", /^sha256:/);
  });

  it("two images with one tree share the blob, each ref keeping its own config's defaults", async () => {
    const layers = [{ entries: [file("same")] }];
    await writeHandLayout(join(base, "one"), layers, { env: ["WHO=one"] });
    await writeHandLayout(join(base, "two"), layers, { env: ["WHO=two"], workingDir: "/" });
    const one = await store.importOci(`oci-layout:${join(base, "one")}`, "t/one");
    const two = await store.importOci(`oci-layout:${join(base, "two")}`, "t/two");
    assert.equal(one.digest, two.digest);
    assert.deepEqual(two.oci?.defaults.env, { WHO: "two" });
    assert.deepEqual((await store.resolve("t/one"))?.oci?.defaults.env, { WHO: "one" });
    assert.deepEqual((await store.resolve("t/two"))?.oci?.defaults, { env: { WHO: "two" }, workingDir: "/" });
    assert.notEqual((await store.resolve("t/one"))?.oci?.configDigest, (await store.resolve("t/two"))?.oci?.configDigest);
  });

  it("drops device nodes and clears setuid bits as a plain import does", async () => {
    const rec = await importHand([{ entries: [{ path: "dev0", type: "char" }, { path: "suid", mode: 0o4755, content: "s" }] }]);
    await assert.rejects(lstat(join(rec.rootfsDir, "dev0")), { code: "ENOENT" });
    assert.equal((await stat(join(rec.rootfsDir, "suid"))).mode & 0o7777, 0o755);
  });
});

describe("hostile OCI images are refused and leave nothing behind", () => {
  it("path traversal in a layer", () => refusedWith([{ entries: [file("../evil")] }], "invalid"));
  it("absolute path in a layer", () => refusedWith([{ entries: [file("/etc/evil")] }], "invalid"));
  it("whiteout of ..", () => refusedWith([{ entries: [{ path: "a", type: "dir" }] }, { entries: [{ path: "a/.wh.." }] }], "invalid"));
  it("whiteout through a symlink of a lower layer", () =>
    refusedWith([{ entries: [{ path: "l", type: "symlink", linkpath: "/etc" }] }, { entries: [{ path: "l/.wh.passwd" }] }], "invalid"));
  it("a symlink in one layer, then a file through it in the next", () =>
    refusedWith([{ entries: [{ path: "l", type: "symlink", linkpath: "/etc" }] }, { entries: [file("l/passwd")] }], "invalid"));
  it("a symlink leaving the root", () => refusedWith([{ entries: [{ path: "l", type: "symlink", linkpath: "../../x" }] }], "invalid"));
  it("a hard link escaping the root", () => refusedWith([{ entries: [{ path: "h", type: "hardlink", linkpath: "../../etc/passwd" }] }], "invalid"));
  it("a whiteout that is a directory", () => refusedWith([{ entries: [{ path: ".wh.x", type: "dir" }] }], "invalid"));
  it("a layer whose bytes do not match its digest", () => refusedWith([{ entries: [file("a")], tamperBlob: true }], "digest-mismatch"));
  it("a config whose diff_id lies", () => refusedWith([{ entries: [file("a")], lieDiffId: true }], "diff-id-mismatch"));
  it("a manifest that lies about a layer's size", () => refusedWith([{ entries: [file("a")], lieSize: true }], "size-mismatch"));
  it("a config with more diff_ids than layers", () => refusedWith([{ entries: [file("a")] }], "schema", { extraDiffId: true }));
  it("a manifest with an unknown field", () => refusedWith([{ entries: [file("a")] }], "schema", { manifestExtraField: true }));
  it("a config for another platform", () => refusedWith([{ entries: [file("a")] }], "platform", { os: "windows" }));
  it("an Env entry without =", () => refusedWith([{ entries: [file("a")] }], "schema", { env: ["NOEQUALS"] }));
  it("an Env entry named __proto__", () => refusedWith([{ entries: [file("a")] }], "schema", { env: ["__proto__=x"] }));
  it("a media type that disagrees with the bytes", () => refusedWith([{ entries: [file("a")], compression: "none", declare: "gzip" }], "schema"));
  it("an uncompressed layer declared as one is applied", async () => {
    const rec = await importHand([{ entries: [file("a")], compression: "none" }]);
    assert.equal(await readFile(join(rec.rootfsDir, "a"), "utf8"), "x");
  });
  it("zstd layers made by the zstd CLI apply; garbage, a --long window and a bomb over the cap are refused, leaving nothing", { skip: toolSkipReason(ZSTD) }, async () => {
    const big = Buffer.alloc(3 * 1024 * 1024, "z");
    const rec = await importHand([
      { entries: [{ path: "d", type: "dir" }, file("d/a", "first"), { path: "big", content: big }], compression: "zstd", zstdArgs: ["-19"] },
      { entries: [file("d/.wh.a"), file("d/b", "second")], compression: "zstd", zstdArgs: ["--check"] },
    ]);
    assert.equal(await readFile(join(rec.rootfsDir, "d/b"), "utf8"), "second");
    await assert.rejects(lstat(join(rec.rootfsDir, "d/a")), { code: "ENOENT" });
    assert.equal((await stat(join(rec.rootfsDir, "big"))).size, big.length);
    // The same tree through gzip layers has the same digest.
    await freshStore();
    const gz = await importHand([
      { entries: [{ path: "d", type: "dir" }, file("d/a", "first"), { path: "big", content: big }] },
      { entries: [file("d/.wh.a"), file("d/b", "second")] },
    ]);
    assert.equal(gz.digest, rec.digest);
    await rm(join(base, "store"), { recursive: true, force: true });
    await freshStore();
    await assert.rejects(importHand([{ entries: [file("a")], compression: "fake-zstd" }]), (e: unknown) => e instanceof OciImageError && e.fault === "schema" && /not readable zstd/.test(e.message));
    await assertNothingLeft();
    await assert.rejects(importHand([{ entries: [file("a")], compression: "zstd", zstdArgs: ["--long=27"] }]), (e: unknown) => e instanceof UnsupportedCapabilityError && /window/.test(e.message));
    await assertNothingLeft();
    await freshStore({ maxLayerBytes: 1024 * 1024 });
    await assert.rejects(importHand([{ entries: [{ path: "zeros", content: big }], compression: "zstd" }]), (e: unknown) => e instanceof OciImageError && e.fault === "too-large");
    await assertNothingLeft();
  });
  it("an import may not take a name reserved for pulls (…@sha256:)", async () => {
    const dir = join(base, "hand");
    await writeHandLayout(dir, [{ entries: [file("a")] }]);
    await assert.rejects(store.importOci(`oci-layout:${dir}`, `reg.example/app@sha256:${"a".repeat(64)}`), InvalidArgumentError);
    await assertNothingLeft();
  });
  it("more entries than the store allows", async () => {
    await freshStore({ maxEntries: 50 });
    const entries = Array.from({ length: 200 }, (_, i) => file(`f${i}`));
    await refusedWith([{ entries }], "invalid");
  });
  it("a layer that expands past the layer cap", async () => {
    await freshStore({ maxLayerBytes: 64 * 1024 });
    await refusedWith([{ entries: [file("big", "z".repeat(200 * 1024))] }], "too-large");
  });
  it("a blob the manifest names that is missing", async () => {
    const dir = join(base, "hand");
    await writeHandLayout(dir, [{ entries: [file("a")] }]);
    for (const name of await readdir(join(dir, "blobs", "sha256"))) {
      const bytes = await readFile(join(dir, "blobs", "sha256", name));
      if (bytes[0] === 0x1f) await rm(join(dir, "blobs", "sha256", name));
    }
    await assert.rejects(store.importOci(`oci-layout:${dir}`, "hand/img"), (e: unknown) => e instanceof OciImageError && e.fault === "missing-blob");
    await assertNothingLeft();
  });
});

describe("OCI document parsers", () => {
  const manifest = {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"a".repeat(64)}`, size: 10 },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: `sha256:${"b".repeat(64)}`, size: 20 }],
  };
  const bytes = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));

  it("accepts a valid manifest and refuses duplicate keys, unknown fields and oversize documents", () => {
    assert.equal(parseOciDocument(ImageManifest, bytes(manifest), "m").layers.length, 1);
    assert.throws(() => parseOciDocument(ImageManifest, Buffer.from('{"schemaVersion":2,"schemaVersion":2}'), "m"), (e: unknown) => e instanceof OciImageError && e.fault === "schema");
    assert.throws(() => parseOciDocument(ImageManifest, bytes({ ...manifest, x: 1 }), "m"), OciImageError);
    assert.throws(() => parseOciDocument(ImageManifest, Buffer.alloc(5 * 1024 * 1024, 0x20), "m"), (e: unknown) => e instanceof OciImageError && e.fault === "too-large");
  });

  it("only ever throws OciImageError, whatever the bytes (property)", () => {
    const schemas = [ImageManifest, ImageIndex, ImageConfig, DockerArchiveManifest];
    fc.assert(
      fc.property(fc.oneof(fc.json(), fc.string(), fc.jsonValue().map((v) => JSON.stringify({ ...manifest, layers: [v] }))), fc.integer({ min: 0, max: 3 }), (text, i) => {
        try {
          parseOciDocument(schemas[i]! as never, Buffer.from(text), "doc");
        } catch (err) {
          assert.ok(err instanceof OciImageError, String(err));
        }
      }),
      { numRuns: 400 },
    );
  });

  it("mutating any field of a valid manifest either still parses or is refused as schema", () => {
    fc.assert(
      fc.property(fc.constantFrom("schemaVersion", "mediaType", "config", "layers"), fc.jsonValue(), (key, value) => {
        try {
          parseOciDocument(ImageManifest, bytes({ ...manifest, [key]: value }), "m");
        } catch (err) {
          assert.ok(err instanceof OciImageError && err.fault === "schema");
        }
      }),
      { numRuns: 300 },
    );
  });

  it("chooses linux/amd64 from an index, refusing none or several", () => {
    const d = (arch: string, os = "linux") => ({ mediaType: "application/vnd.oci.image.manifest.v1+json", digest: `sha256:${arch.padEnd(64, "0").replace(/[^0-9a-f]/g, "0")}`, size: 1, platform: { architecture: arch, os } });
    const idx = (m: unknown[]) => parseOciDocument(ImageIndex, bytes({ schemaVersion: 2, manifests: m }), "i");
    assert.equal(selectPlatform(idx([d("arm64"), d("amd64")]), "i").platform?.architecture, "amd64");
    assert.throws(() => selectPlatform(idx([d("arm64")]), "i"), (e: unknown) => e instanceof OciImageError && e.fault === "platform");
    assert.throws(() => selectPlatform(idx([d("amd64"), d("amd64")]), "i"), (e: unknown) => e instanceof OciImageError && e.fault === "platform");
  });

  it("parses registry references strictly, with no default registry", () => {
    assert.deepEqual(parseRegistryRef("127.0.0.1:5000/t/bb:1"), { registry: "127.0.0.1:5000", repository: "t/bb", tag: "1" });
    const d = `sha256:${"c".repeat(64)}`;
    assert.deepEqual(parseRegistryRef(`reg.example/app@${d}`), { registry: "reg.example", repository: "app", digest: d });
    for (const bad of ["busybox:1", "library/busybox:1", "reg.example/App:1", "reg.example/app", "reg.example/app@sha256:abc", "reg.example/../x:1", "https://reg.example/app:1", "reg.example/app:" + "t".repeat(200)]) {
      assert.throws(() => parseRegistryRef(bad), InvalidArgumentError, bad);
    }
  });
});

const toolSkip = toolSkipReason(UMOCI, SKOPEO);
describe("images made by real tools: umoci layout, skopeo docker-archive and registry", { skip: toolSkip ?? registrySkipReason() }, () => {
  let tools: string;
  let layout: string;
  let reg: TestRegistry;
  before(async () => {
    tools = await mkdtemp(join(tmpdir(), "mvm-oci-tools-"));
    layout = await writeUmociLayout(tools);
    reg = await startRegistry();
  });
  after(async () => {
    await reg?.close();
    await rm(tools, { recursive: true, force: true });
  });

  it("imports umoci's layout, its docker-archive and its registry pull to one digest, whiteouts applied", async () => {
    const fromLayout = await store.importOci(`oci-layout:${layout}`, "t/layout");
    const rootfs = fromLayout.rootfsDir;
    assert.equal(await readFile(join(rootfs, "etc/motd"), "utf8"), "v2\n");
    await assert.rejects(lstat(join(rootfs, "gone")), { code: "ENOENT" });
    assert.ok((await lstat(join(rootfs, "bin/sh"))).isSymbolicLink());
    assert.deepEqual(fromLayout.oci?.defaults.env, { FROM_IMAGE: "yes", PATH: "/bin" });
    assert.equal(fromLayout.oci?.defaults.workingDir, "/srv");

    const archive = join(tools, "img.tar");
    execFileSync(SKOPEO, ["copy", "--quiet", `oci:${layout}:t1`, `docker-archive:${archive}:t/one:1`], { stdio: "pipe" });
    const fromArchive = await store.importOci(`docker-archive:${archive}`, "t/archive");
    assert.equal(fromArchive.digest, fromLayout.digest);
    assert.equal(fromArchive.oci?.configDigest, fromLayout.oci?.configDigest);

    const host = reg.origin.replace(/^http:\/\//, "");
    execFileSync(SKOPEO, ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:t1`, `docker://${host}/t/bb:1`], { stdio: "pipe" });
    // A second store, as on another host: a tree already stored keeps the OCI record it came with.
    const other = await ImageStore.open(join(base, "store2"));
    const pulled = await other.pull(`${host}/t/bb:1`);
    assert.equal(pulled.digest, fromLayout.digest);
    const pin = pulled.oci?.reference ?? "";
    assert.match(pin, new RegExp(`^${host.replace(/\./g, "\\.")}/t/bb@sha256:[0-9a-f]{64}$`));
    assert.ok(pulled.refs.includes(`${host}/t/bb:1`) && pulled.refs.includes(pin), pulled.refs.join(","));
    assert.equal((await other.resolve(pin))?.digest, pulled.digest);
    assert.equal(pulled.source.kind, "registry");
    const byDigest = await other.pull(pin);
    assert.equal(byDigest.digest, pulled.digest);
    assert.deepEqual(await readdir(join(base, "store", "tmp")), []);
    assert.deepEqual(await readdir(join(base, "store2", "tmp")), []);
  });

  it("skopeo's zstd layers (pushed to the registry and written to a layout) give the same tree as its gzip ones", async () => {
    const fromLayout = await store.importOci(`oci-layout:${layout}`, "t/gzip");
    const zlayout = join(tools, "zstd-layout");
    execFileSync(SKOPEO, ["copy", "--quiet", "--dest-compress-format", "zstd", "--dest-compress", `oci:${layout}:t1`, `oci:${zlayout}:z1`], { stdio: "pipe" });
    const index = JSON.parse(await readFile(join(zlayout, "index.json"), "utf8")) as { manifests: { digest: string }[] };
    const manifest = JSON.parse(await readFile(join(zlayout, "blobs", "sha256", index.manifests[0]!.digest.slice(7)), "utf8")) as { layers: { mediaType: string }[] };
    assert.ok(manifest.layers.every((l) => l.mediaType.endsWith("+zstd")), JSON.stringify(manifest.layers));
    const fromZstd = await store.importOci(`oci-layout:${zlayout}`, "t/zstd");
    assert.equal(fromZstd.digest, fromLayout.digest);
    const host = reg.origin.replace(/^http:\/\//, "");
    execFileSync(SKOPEO, ["copy", "--quiet", "--dest-tls-verify=false", `oci:${zlayout}:z1`, `docker://${host}/t/zstd:1`], { stdio: "pipe" });
    const other = await ImageStore.open(join(base, "store3"));
    assert.equal((await other.pull(`${host}/t/zstd:1`)).digest, fromLayout.digest);
  });

  it("a pull of a tag the registry lacks is NotFoundError and leaves nothing", async () => {
    const host = reg.origin.replace(/^http:\/\//, "");
    await assert.rejects(store.pull(`${host}/t/none:1`), { code: "NOT_FOUND" });
    await assertNothingLeft();
  });
});

describe("layers against a model of overlay semantics (property)", () => {
  // Fixed kinds per path, so every generated image is well-formed: a and b are directories,
  // the rest regular files; whiteouts and opaque markers name them.
  const FILES = ["a/x", "a/y", "b/x", "z"];
  const DIRS = ["a", "b"];
  type Op = { kind: "file"; path: string } | { kind: "dir"; path: string } | { kind: "wh"; path: string } | { kind: "opq"; dir: string };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.constantFrom(...FILES).map((path) => ({ kind: "file" as const, path })),
    fc.constantFrom(...DIRS).map((path) => ({ kind: "dir" as const, path })),
    fc.constantFrom(...FILES, ...DIRS).map((path) => ({ kind: "wh" as const, path })),
    fc.constantFrom(...DIRS).map((dir) => ({ kind: "opq" as const, dir })),
  );
  const parentOf = (p: string): string => (p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : "");
  const withParents = (p: string): string[] => p.split("/").map((_, i, parts) => parts.slice(0, i + 1).join("/"));

  /** What the tree should hold after the layers: whiteouts and opaque markers hide lower layers only. */
  function model(layers: Op[][]): string[] {
    const tree = new Set<string>();
    for (const layer of layers) {
      const touched = new Set<string>();
      for (const o of layer) {
        if (o.kind === "file" || o.kind === "dir") {
          for (const p of withParents(o.path)) {
            tree.add(p);
            touched.add(p);
          }
        } else if (o.kind === "wh") {
          if (touched.has(o.path)) continue;
          for (const p of [...tree]) if (p === o.path || p.startsWith(`${o.path}/`)) tree.delete(p);
        } else {
          for (const p of [...tree]) if (p.startsWith(`${o.dir}/`) && !touched.has(withParents(p)[o.dir.split("/").length]!)) tree.delete(p);
        }
      }
    }
    return [...tree].sort();
  }

  const entryOf = (o: Op): HandLayer["entries"][number] =>
    o.kind === "file" ? file(o.path) :
    o.kind === "dir" ? { path: o.path, type: "dir" } :
    o.kind === "wh" ? { path: `${parentOf(o.path) ? parentOf(o.path) + "/" : ""}.wh.${o.path.split("/").at(-1)}` } :
    { path: `${o.dir}/.wh..wh..opq` };

  it("whiteouts and opaque dirs give the tree the model says, whatever the order of entries", async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(op, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 4 }), async (layers) => {
        const dir = join(base, `m${n++}`);
        await writeHandLayout(dir, layers.map((l) => ({ entries: l.map(entryOf) })));
        const rec = await store.importOci(`oci-layout:${dir}`, "model/img");
        const got = (await readdir(rec.rootfsDir, { recursive: true }))
          .map(String)
          .filter((p) => !["proc", "dev", "sys", "work", "tmp", ".mvm"].includes(p.split("/")[0]!))
          .sort();
        assert.deepEqual(got, model(layers), JSON.stringify(layers));
        await store.remove("model/img");
        await rm(dir, { recursive: true, force: true });
      }),
      { numRuns: 60 },
    );
  });
});
