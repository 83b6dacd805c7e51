import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError, NotFoundError, TransportError, canonicalJson } from "@mvm/protocol";
import { SandboxCa } from "../egress/sandbox-ca.js";
import { MEDIA_TYPE_OCI_EMPTY, MEDIA_TYPE_OCI_MANIFEST, parseOciManifest } from "./manifest.js";
import { OciRegistry, sha256Digest } from "./registry.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "./_test/registry.js";

const skip = registrySkipReason();

describe("OciRegistry against docker-registry on loopback", { skip }, () => {
  let reg: TestRegistry;
  let dir: string;
  before(async () => {
    reg = await startRegistry();
    dir = await mkdtemp(join(tmpdir(), "mvm-oci-test-"));
  });
  after(async () => {
    await reg?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("pings, uploads a small blob in one request and reads it back verified", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/small" });
    await client.ping();
    const bytes = randomBytes(1000);
    const digest = await client.putBlob(bytes);
    assert.equal(digest, sha256Digest(bytes));
    assert.equal(await client.headBlob(digest), 1000);
    assert.ok((await client.getBlob(digest, { sizeBytes: 1000 })).equals(bytes));
    // Uploading again is a HEAD only and returns the same digest.
    assert.equal(await client.putBlob(bytes), digest);
  });

  it("uploads a file in PATCH chunks and streams it back to a file", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/chunked", uploadChunkBytes: 300_000 });
    const bytes = randomBytes(1_000_000);
    const src = join(dir, "src");
    await writeFile(src, bytes);
    const digest = await client.putBlob({ path: src });
    const out = join(dir, "out");
    await client.getBlobToFile(digest, out, { sizeBytes: bytes.length });
    assert.ok((await readFile(out)).equals(bytes));
  });

  it("refuses a blob of another size than expected and leaves no file", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/size" });
    const bytes = randomBytes(5000);
    const digest = await client.putBlob(bytes);
    await assert.rejects(client.getBlob(digest, { sizeBytes: 4999 }), TransportError);
    await assert.rejects(client.getBlob(digest, { sizeBytes: 5001 }), TransportError);
    const out = join(dir, "short");
    await assert.rejects(client.getBlobToFile(digest, out, { sizeBytes: 4000 }), TransportError);
    assert.equal(existsSync(out), false);
  });

  it("says NotFound for a blob or manifest the repository lacks", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/missing" });
    const digest = sha256Digest(Buffer.from("absent"));
    assert.equal(await client.headBlob(digest), undefined);
    await assert.rejects(client.getBlob(digest, { sizeBytes: 6 }), NotFoundError);
    await assert.rejects(client.getManifest("latest"), NotFoundError);
    assert.equal(await client.headManifest("latest"), undefined);
  });

  it("pushes an artifact manifest by tag and pulls it by digest, verified", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/artifact" });
    const empty = Buffer.from("{}");
    const layer = randomBytes(2048);
    await client.putBlob(empty);
    await client.putBlob(layer);
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      artifactType: "application/vnd.mvm.test.v1",
      config: { mediaType: MEDIA_TYPE_OCI_EMPTY, digest: sha256Digest(empty), size: 2 },
      layers: [{ mediaType: "application/octet-stream", digest: sha256Digest(layer), size: layer.length }],
    };
    const bytes = Buffer.from(canonicalJson(manifest));
    const digest = await client.putManifest("v1", bytes, MEDIA_TYPE_OCI_MANIFEST);
    assert.equal(await client.headManifest("v1"), digest);
    const byTag = await client.getManifest("v1");
    assert.equal(byTag.digest, digest);
    const byDigest = await client.getManifest(digest);
    assert.ok(byDigest.bytes.equals(bytes));
    assert.equal(byDigest.mediaType, MEDIA_TYPE_OCI_MANIFEST);
    assert.deepEqual(parseOciManifest(byDigest.bytes), manifest);
  });

  it("detects a blob tampered with in the registry's storage", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/tamper" });
    const bytes = randomBytes(4096);
    const digest = await client.putBlob(bytes);
    const hex = digest.slice("sha256:".length);
    const data = join(reg.storageDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
    const flipped = Buffer.from(bytes);
    flipped[100] = (flipped[100] ?? 0) ^ 1;
    await writeFile(data, flipped);
    await assert.rejects(client.getBlob(digest, { sizeBytes: 4096 }), /does not match/);
    const out = join(dir, "tampered");
    await assert.rejects(client.getBlobToFile(digest, out, { sizeBytes: 4096 }), /does not match/);
    assert.equal(existsSync(out), false);
  });
});

describe("OciRegistry with a hostile server", () => {
  let server: Server;
  let origin: string;
  let handler: (url: string, res: ServerResponse) => void = () => {};
  before(async () => {
    server = createServer((req, res) => handler(req.url ?? "", res));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const address = server.address();
    origin = `http://127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const digest = sha256Digest(Buffer.from("x"));

  it("refuses a redirect to another origin", async () => {
    handler = (_url, res) => {
      res.writeHead(307, { location: "http://127.0.0.2:9/elsewhere" }).end();
    };
    const client = new OciRegistry({ origin, repository: "t/r" });
    await assert.rejects(client.getBlob(digest, { sizeBytes: 1 }), /another origin/);
  });

  it("follows a redirect within the origin, at most a few times", async () => {
    let hops = 0;
    handler = (url, res) => {
      if (url.startsWith("/loop")) {
        hops++;
        res.writeHead(302, { location: `/loop${hops}` }).end();
      } else res.writeHead(302, { location: "/loop" }).end();
    };
    const client = new OciRegistry({ origin, repository: "t/r" });
    await assert.rejects(client.getBlob(digest, { sizeBytes: 1 }), /redirects/);
    assert.ok(hops <= 3);
  });

  it("refuses an oversized manifest before buffering it", async () => {
    handler = (_url, res) => {
      res.writeHead(200, { "content-length": String(5 * 1024 * 1024), "content-type": MEDIA_TYPE_OCI_MANIFEST });
      res.end(Buffer.alloc(5 * 1024 * 1024));
    };
    const client = new OciRegistry({ origin, repository: "t/r" });
    await assert.rejects(client.getManifest("v1"), /over the .*limit/);
  });

  it("refuses an oversized manifest sent without a length", async () => {
    handler = (_url, res) => {
      res.writeHead(200, { "content-type": MEDIA_TYPE_OCI_MANIFEST });
      for (let i = 0; i < 5; i++) res.write(Buffer.alloc(1024 * 1024));
      res.end();
    };
    const client = new OciRegistry({ origin, repository: "t/r" });
    await assert.rejects(client.getManifest("v1"), /over the .*limit/);
  });

  it("refuses a manifest whose bytes do not match the digest asked", async () => {
    handler = (_url, res) => {
      res.writeHead(200, { "content-type": MEDIA_TYPE_OCI_MANIFEST }).end("{}");
    };
    const client = new OciRegistry({ origin, repository: "t/r" });
    await assert.rejects(client.getManifest(digest), /does not match/);
  });

  it("refuses an upload location on another origin", async () => {
    handler = (_url, res) => {
      if (_url.includes("/blobs/uploads/")) res.writeHead(202, { location: "http://127.0.0.2:1/upload" }).end();
      else res.writeHead(404).end();
    };
    const client = new OciRegistry({ origin, repository: "t/r" });
    await assert.rejects(client.putBlob(Buffer.from("x")), /another origin/);
  });

  it("times out a server that never answers", async () => {
    handler = () => {};
    const client = new OciRegistry({ origin, repository: "t/r", timeoutMs: 200 });
    await assert.rejects(client.getBlob(digest, { sizeBytes: 1 }), { name: "TimeoutError" });
  });
});

describe("OciRegistry origins and names", () => {
  it("allows plain http only to loopback and refuses userinfo, query and paths", () => {
    assert.throws(() => new OciRegistry({ origin: "http://registry.example", repository: "a" }), InvalidArgumentError);
    assert.throws(() => new OciRegistry({ origin: "https://u:p@registry.example", repository: "a" }), InvalidArgumentError);
    assert.throws(() => new OciRegistry({ origin: "https://registry.example/?q", repository: "a" }), InvalidArgumentError);
    assert.throws(() => new OciRegistry({ origin: "https://registry.example/v2", repository: "a" }), InvalidArgumentError);
    assert.throws(() => new OciRegistry({ origin: "ftp://registry.example", repository: "a" }), InvalidArgumentError);
    assert.throws(() => new OciRegistry({ origin: "https://registry.example", repository: "A/b" }), InvalidArgumentError);
    assert.throws(() => new OciRegistry({ origin: "https://registry.example", repository: "a/../b" }), InvalidArgumentError);
    new OciRegistry({ origin: "https://registry.example", repository: "team/bundles" });
    new OciRegistry({ origin: "http://127.0.0.1:5000", repository: "a" });
    new OciRegistry({ origin: "http://[::1]:5000", repository: "a" });
  });
});

describe("OciRegistry over https with a test CA", { skip }, () => {
  it("talks to a registry serving a certificate from the CA it is given, and refuses without it", async () => {
    const ca = await SandboxCa.create({ sandboxId: "registry-test" });
    const leaf = await ca.leaf("localhost");
    await using reg = await startRegistry({ tls: leaf });
    const trusted = new OciRegistry({ origin: reg.origin, repository: "t/tls", ca: ca.certPem });
    const digest = await trusted.putBlob(Buffer.from("over tls"));
    assert.equal(await trusted.headBlob(digest), 8);
    const untrusted = new OciRegistry({ origin: reg.origin, repository: "t/tls" });
    await assert.rejects(untrusted.ping(), TransportError);
  });
});
