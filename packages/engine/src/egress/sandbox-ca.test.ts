/**
 * SandboxCa: the CA signs its leaves, node:tls accepts a leaf for its own name only, leaves are
 * cached and shared, host names are checked (fast-check), and two CAs never trust each other.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import tls from "node:tls";
import { describe, it } from "node:test";
import * as x509 from "@peculiar/x509";
import { InvalidArgumentError } from "@mvm/protocol";
import fc from "fast-check";
import { MAX_CACHED_LEAVES, SandboxCa } from "./sandbox-ca.js";

/** Serves one TLS handshake with `leaf` and reports whether a client trusting `caPem` accepted it for `servername`. */
async function handshake(leaf: { keyPem: string; certPem: string }, caPem: string, servername: string): Promise<Error | undefined> {
  const server = tls.createServer({ key: leaf.keyPem, cert: leaf.certPem }, (socket) => socket.end());
  server.on("tlsClientError", () => undefined);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  try {
    return await new Promise<Error | undefined>((resolve) => {
      const socket = tls.connect({ host: "127.0.0.1", port, servername, ca: [caPem] });
      socket.once("secureConnect", () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.once("error", (err) => {
        socket.destroy();
        resolve(err);
      });
    });
  } finally {
    server.close();
  }
}

describe("SandboxCa", () => {
  it("makes a CA certificate with the sandbox's name, CA:true pathlen 0 and keyCertSign", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_1" });
    const cert = new x509.X509Certificate(ca.certPem);
    assert.equal(cert.subject, "CN=mvm sandbox CA sbx_1");
    const basic = cert.getExtension(x509.BasicConstraintsExtension);
    assert.equal(basic?.ca, true);
    assert.equal(basic?.pathLength, 0);
    const usage = cert.getExtension(x509.KeyUsagesExtension);
    assert.ok(((usage?.usages ?? 0) & x509.KeyUsageFlags.keyCertSign) !== 0);
    assert.equal(new X509Certificate(ca.certPem).ca, true);
    const validMs = cert.notAfter.getTime() - Date.now();
    assert.ok(validMs > 29 * 86_400_000 && validMs <= 30 * 86_400_000);
    assert.equal(Buffer.from(cert.serialNumber, "hex").length, 16);
  });

  it("signs leaves it issues, with the host as SAN and serverAuth", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_2", validityDays: 2 });
    const leaf = await ca.leaf("api.example.com");
    const cert = new x509.X509Certificate(leaf.certPem);
    assert.equal(await cert.verify({ publicKey: ca.publicKey, signatureOnly: true }), true);
    const native = new X509Certificate(leaf.certPem);
    assert.equal(native.checkIssued(new X509Certificate(ca.certPem)), true);
    assert.equal(native.verify(new X509Certificate(ca.certPem).publicKey), true);
    assert.equal(native.checkHost("api.example.com"), "api.example.com");
    assert.equal(native.checkHost("other.example.com"), undefined);
    assert.equal(native.ca, false);
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
    assert.deepEqual([...(eku?.usages ?? [])], [x509.ExtendedKeyUsage.serverAuth]);
    const days = (cert.notAfter.getTime() - cert.notBefore.getTime()) / 86_400_000;
    assert.ok(days > 7.99 && days < 8.01);
    assert.ok(cert.notBefore.getTime() < Date.now() - 23 * 3_600_000);
    assert.match(leaf.keyPem, /^-----BEGIN PRIVATE KEY-----/);
  });

  it("a leaf passes node:tls for its own name and fails for another name", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_3" });
    const leaf = await ca.leaf("localhost.test");
    assert.equal(await handshake(leaf, ca.certPem, "localhost.test"), undefined);
    const wrong = await handshake(leaf, ca.certPem, "evil.test");
    assert.equal((wrong as NodeJS.ErrnoException | undefined)?.code, "ERR_TLS_CERT_ALTNAME_INVALID");
  });

  it("two CAs differ and do not trust each other's leaves", async () => {
    const a = await SandboxCa.create({ sandboxId: "sbx_same" });
    const b = await SandboxCa.create({ sandboxId: "sbx_same" });
    assert.notEqual(a.certPem, b.certPem);
    const leaf = await a.leaf("api.example.com");
    assert.equal(new X509Certificate(leaf.certPem).checkIssued(new X509Certificate(b.certPem)), false);
    const err = await handshake(leaf, b.certPem, "api.example.com");
    assert.ok(err !== undefined);
  });

  it("caches leaves per host and shares one promise between concurrent calls", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_4" });
    const first = ca.leaf("a.example.com");
    const second = ca.leaf("a.example.com");
    assert.equal(first, second);
    const other = ca.leaf("b.example.com");
    assert.notEqual(first, other);
    assert.notEqual((await first).certPem, (await other).certPem);
    assert.equal(ca.leaf("a.example.com"), first);
    const serials = new Set([await first, await other].map((l) => new x509.X509Certificate(l.certPem).serialNumber));
    assert.equal(serials.size, 2);
  });

  it("evicts the least recently used leaf beyond the cache limit", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_5" });
    const first = ca.leaf("h0.example");
    const kept = ca.leaf("h1.example");
    const leaves = [];
    for (let i = 2; i <= MAX_CACHED_LEAVES; i++) {
      if (i === 100) assert.equal(ca.leaf("h1.example"), kept);
      leaves.push(ca.leaf(`h${i}.example`));
    }
    await Promise.all([first, kept, ...leaves]);
    assert.equal(ca.leaf("h1.example"), kept);
    assert.notEqual(ca.leaf("h0.example"), first);
  });

  it("refuses names that are not lowercase DNS names and bad validity", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_6" });
    for (const host of ["", "Example.com", "a..b", "a b", "-a.com", "a,CN=x", `${"a".repeat(64)}.com`, "x".repeat(254)]) {
      assert.throws(() => ca.leaf(host), InvalidArgumentError, host);
    }
    await assert.rejects(SandboxCa.create({ sandboxId: "s", validityDays: 0 }), InvalidArgumentError);
  });

  it("leaf() either throws InvalidArgumentError or issues a certificate naming exactly that host (property)", async () => {
    const ca = await SandboxCa.create({ sandboxId: "sbx_7" });
    const label = fc.stringMatching(/^[a-z0-9-]{1,12}$/);
    const host = fc.oneof(fc.string({ maxLength: 40 }), fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join(".")));
    await fc.assert(
      fc.asyncProperty(host, async (h) => {
        let leaf;
        try {
          leaf = await ca.leaf(h);
        } catch (err) {
          assert.ok(err instanceof InvalidArgumentError);
          return;
        }
        const native = new X509Certificate(leaf.certPem);
        assert.equal(native.subjectAltName, `DNS:${h}`);
        assert.equal(native.checkIssued(new X509Certificate(ca.certPem)), true);
      }),
      { numRuns: 60 },
    );
  });
});
