import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import { join } from "node:path";
import { SnapshotMismatchError, TransportError, parseJsonStrict } from "@mvm/protocol";
import { SandboxCa } from "../egress/sandbox-ca.js";
import { parseOciManifest } from "../oci/manifest.js";
import { OciRegistry } from "../oci/registry.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "../oci/_test/registry.js";
import type { BundleIndex, BundleJson } from "./format.js";
import { pullBundle } from "./pull.js";
import { pushBundle } from "./push.js";
import { BUNDLE_ARTIFACT_TYPE, bundleReader, bundleWriter, type TransportOptions } from "./transport.js";
import { parseBundleDestination, parseBundleSource } from "./uri.js";
import { hostState, newHost, seedImage, seedSnapshot, tempParent, type TestHost } from "./_test/hosts.js";

const EMPTY = { snapshots: 0, chunks: 0, images: 0, tmp: 0 };

let parent: string;
let a: TestHost;
let pushedSnapshot: Awaited<ReturnType<typeof seedSnapshot>>;
before(async () => {
  parent = await tempParent();
  a = await newHost(parent, "a");
  const image = await seedImage(a, "app");
  pushedSnapshot = await seedSnapshot(a, image);
});
after(() => rm(parent, { recursive: true, force: true }));

async function push(uri: string, options: TransportOptions = {}) {
  const image = (await a.images.resolve("app"))!;
  return pushBundle({ image, snapshot: pushedSnapshot.snap, chunks: a.snapshots.chunks, writer: bundleWriter(parseBundleDestination(uri), options), tmpRoot: a.tmpRoot });
}

async function pull(host: TestHost, uri: string, options: TransportOptions = {}) {
  const source = parseBundleSource(uri);
  return pullBundle({ digest: source.digest, reader: bundleReader(source.location, options), snapshots: host.snapshots, images: host.images, retention: { ttlSeconds: 3600 }, tmpRoot: host.tmpRoot });
}

async function refused(name: string, uri: string, options: TransportOptions, check: (err: Error) => void): Promise<void> {
  const b = await newHost(parent, name);
  await assert.rejects(pull(b, uri, options), (err: Error) => {
    check(err);
    return true;
  });
  assert.deepEqual(await hostState(b), EMPTY, "a refused pull leaves nothing behind");
}

describe("bundles through an OCI registry (docker-registry on loopback)", { skip: registrySkipReason() }, () => {
  let reg: TestRegistry;
  before(async () => {
    reg = await startRegistry();
  });
  after(() => reg?.close());

  it("pushes an artifact (config: bundle.json, layers: index and packs) and another host pulls it by the bundle digest", async () => {
    const host = new URL(reg.origin).host;
    const pushed = await push(`oci+http://${host}/mvm/bundles`);
    assert.equal(pushed.uri, `oci+http://${host}/mvm/bundles@${pushed.digest}`);
    const registry = new OciRegistry({ origin: reg.origin, repository: "mvm/bundles" });
    const manifest = parseOciManifest((await registry.getManifest(`sha256-${pushed.digest.slice(7)}`)).bytes);
    assert.equal(manifest.artifactType, BUNDLE_ARTIFACT_TYPE);
    assert.equal(manifest.config.digest, pushed.digest);
    assert.equal(manifest.layers.length, 1 + pushed.packs);
    const b = await newHost(parent, "b-oci");
    const result = await pull(b, pushed.uri);
    assert.equal(result.snapshot?.digest, pushedSnapshot.snap.digest);
    assert.equal(result.packsFetched, pushed.packs);
  });

  it("refuses a pack whose bytes were swapped in the registry's storage", async () => {
    const host = new URL(reg.origin).host;
    const pushed = await push(`oci+http://${host}/mvm/tamper:v1`);
    const registry = new OciRegistry({ origin: reg.origin, repository: "mvm/tamper" });
    const manifest = parseOciManifest((await registry.getManifest("v1")).bytes);
    const index = manifest.layers[0]!;
    const pack = manifest.layers[1]!;
    const data = (digest: string) => join(reg.storageDir, "docker/registry/v2/blobs/sha256", digest.slice(7, 9), digest.slice(7), "data");
    // The pack's bytes become the index's: same registry, the right size is not even kept.
    await writeFile(data(pack.digest), await readFile(data(index.digest)));
    await refused("b-oci-swap", pushed.uri, {}, (err) => {
      assert.ok(err instanceof SnapshotMismatchError || err instanceof TransportError, `${err.name}: ${err.message}`);
    });
  });

  it("refuses a bundle.json tampered with in the registry", async () => {
    const host = new URL(reg.origin).host;
    const pushed = await push(`oci+http://${host}/mvm/tamper2`);
    const data = join(reg.storageDir, "docker/registry/v2/blobs/sha256", pushed.digest.slice(7, 9), pushed.digest.slice(7), "data");
    const bytes = await readFile(data);
    bytes[20] = (bytes[20] ?? 0) ^ 1;
    await writeFile(data, bytes);
    await refused("b-oci-json", pushed.uri, {}, (err) => {
      assert.ok(err instanceof SnapshotMismatchError, `${err.name}: ${err.message}`);
      assert.match(err.message, /does not match/);
    });
  });
});

describe("bundles pulled over https from a static layout", () => {
  let server: Server;
  let origin: string;
  let ca: SandboxCa;
  let staticDir: string;
  let pushed: Awaited<ReturnType<typeof push>>;
  let handler: ((req: IncomingMessage, res: ServerResponse) => boolean) | undefined;
  const requested: string[] = [];

  before(async () => {
    staticDir = join(parent, "static");
    pushed = await push(`file://${staticDir}`);
    ca = await SandboxCa.create({ sandboxId: "bundle-https-test" });
    const leaf = await ca.leaf("localhost");
    server = createServer({ key: leaf.keyPem, cert: leaf.certPem }, (req, res) => {
      requested.push(req.url ?? "");
      if (handler?.(req, res) === true) return;
      const m = /^\/site\/bundles\/blobs\/sha256\/([0-9a-f]{64})$/.exec(req.url ?? "");
      if (m === null) return void res.writeHead(404).end();
      readFile(join(staticDir, "blobs", "sha256", m[1]!)).then(
        (bytes) => res.writeHead(200, { "content-length": bytes.length }).end(bytes),
        () => res.writeHead(404).end(),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const address = server.address();
    origin = `https://localhost:${typeof address === "object" && address !== null ? address.port : 0}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it("pulls with the CA it is given, and asks only for what the metadata names", async () => {
    handler = undefined;
    requested.length = 0;
    const b = await newHost(parent, "b-https");
    const result = await pull(b, `${origin}/site/bundles@${pushed.digest}`, { ca: ca.certPem });
    assert.equal(result.snapshot?.digest, pushedSnapshot.snap.digest);
    const bundle = parseJsonStrict((await readFile(join(staticDir, "blobs", "sha256", pushed.digest.slice(7)))).toString()) as BundleJson;
    const index = parseJsonStrict((await readFile(join(staticDir, "blobs", "sha256", bundle.index.digest.slice(7)))).toString()) as BundleIndex;
    const named = new Set([pushed.digest, bundle.index.digest, ...index.packs.map((p) => p.digest)].map((d) => `/site/bundles/blobs/sha256/${d.slice(7)}`));
    assert.ok(requested.every((url) => named.has(url)), requested.join("\n"));
  });

  it("refuses a server its CA does not vouch for", async () => {
    handler = undefined;
    await refused("b-https-ca", `${origin}/site/bundles@${pushed.digest}`, {}, (err) => assert.ok(err instanceof TransportError, `${err.name}: ${err.message}`));
  });

  it("refuses a redirect to another origin", async () => {
    handler = (_req, res) => {
      res.writeHead(302, { location: "https://127.0.0.2:1/elsewhere" }).end();
      return true;
    };
    await refused("b-https-redirect", `${origin}/site/bundles@${pushed.digest}`, { ca: ca.certPem }, (err) => {
      assert.ok(err instanceof TransportError, `${err.name}: ${err.message}`);
      assert.match(err.message, /another origin/);
    });
  });

  it("refuses an oversized bundle.json, with or without a length", async () => {
    handler = (_req, res) => {
      res.writeHead(200, { "content-length": String(64 * 1024 * 1024) });
      res.end();
      return true;
    };
    await refused("b-https-big", `${origin}/site/bundles@${pushed.digest}`, { ca: ca.certPem }, (err) => assert.match(err.message, /over the/));
    handler = (_req, res) => {
      res.writeHead(200);
      const piece = Buffer.alloc(1024 * 1024, 0x20);
      let sent = 0;
      const more = (): void => {
        while (sent < 20 && res.write(piece)) sent++;
        if (sent < 20) res.once("drain", more);
        else res.end();
      };
      res.on("error", () => {});
      more();
      return true;
    };
    await refused("b-https-big2", `${origin}/site/bundles@${pushed.digest}`, { ca: ca.certPem }, (err) => assert.match(err.message, /over the/));
  });
});
