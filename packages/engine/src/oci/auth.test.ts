/**
 * Registry authentication against Debian's `docker-registry` on loopback: HTTP basic (an
 * htpasswd file with bcrypt entries made by hash-wasm) and the bearer-token flow (`auth: token`
 * with a root certificate made by the openssl CLI, and a token server written here that signs
 * ES256 tokens). Plus the credentials file rules, the challenge parser, and where credentials
 * may go.
 */
import { describe, it, before, after, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID, sign, createPrivateKey } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { bcrypt } from "hash-wasm";
import { InvalidArgumentError, TransportError } from "@mvm/protocol";
import { loadRegistryCredentials, parseChallenge, REGISTRY_AUTH_FILE } from "./auth.js";
import { OciRegistry } from "./registry.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "./_test/registry.js";

const USER = "alice";
const PASSWORD = "s3cret-pass:with-colon";

async function htpasswd(user: string, password: string): Promise<string> {
  const hash = await bcrypt({ password, salt: randomBytes(16), costFactor: 5 });
  return `${user}:${hash}\n`;
}

/** A server on loopback; `handler` answers each request; `seen` keeps every request's method, path and authorization. */
async function loopbackServer(handler: (req: IncomingMessage, res: import("node:http").ServerResponse) => void): Promise<{ server: Server; origin: string; seen: { url: string; authorization: string | undefined }[] }> {
  const seen: { url: string; authorization: string | undefined }[] = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? "", authorization: req.headers.authorization });
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  return { server, origin: `http://127.0.0.1:${port}`, seen };
}

function close(server: Server | undefined): Promise<void> {
  return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
}

test("challenges: Basic and Bearer with quoted and bare parameters; anything else is undefined", () => {
  assert.deepEqual(parseChallenge('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'), {
    scheme: "bearer",
    params: Object.assign(Object.create(null), { realm: "https://auth.example/token", service: "registry.example", scope: "repository:a/b:pull,push" }),
  });
  assert.equal(parseChallenge('Basic realm="x"')?.scheme, "basic");
  assert.equal(parseChallenge('Basic realm=x, charset="UTF-8"')?.params["charset"], "UTF-8");
  for (const bad of ["", "Digest realm=x", 'Bearer realm="a", realm="b"', 'Bearer realm="unterminated', "Bearer =x", `Bearer realm="${"a".repeat(5000)}"`]) {
    assert.equal(parseChallenge(bad), undefined, bad);
  }
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), (s) => {
      const c = parseChallenge(s);
      if (c !== undefined) assert.ok(c.scheme === "basic" || c.scheme === "bearer");
    }),
    { numRuns: 2000 },
  );
});

test("the credentials file: docker auths format, 0600 and owned by the engine's user, never through a symlink", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mvm-auth-file-"));
  try {
    const file = join(dir, REGISTRY_AUTH_FILE);
    assert.equal(await loadRegistryCredentials("r.example", { stateDir: dir, env: {} }), undefined, "no file: anonymous");
    const auths = {
      auths: {
        "r.example:5000": { auth: Buffer.from(`${USER}:${PASSWORD}`).toString("base64") },
        "https://other.example/v1/": { username: "bob", password: "pw" },
      },
      credsStore: "ignored",
    };
    await writeFile(file, JSON.stringify(auths), { mode: 0o600 });
    assert.deepEqual(await loadRegistryCredentials("r.example:5000", { stateDir: dir, env: {} }), { username: USER, password: PASSWORD });
    assert.deepEqual(await loadRegistryCredentials("other.example", { stateDir: dir, env: {} }), { username: "bob", password: "pw" });
    assert.equal(await loadRegistryCredentials("r.example", { stateDir: dir, env: {} }), undefined, "the port is part of the host");
    await chmod(file, 0o640);
    await assert.rejects(loadRegistryCredentials("r.example:5000", { stateDir: dir, env: {} }), (e: unknown) => e instanceof InvalidArgumentError && /accessible to others/.test(e.message) && !e.message.includes(PASSWORD));
    await chmod(file, 0o600);
    const link = join(dir, "link.json");
    await symlink(file, link);
    await assert.rejects(loadRegistryCredentials("r.example:5000", { stateDir: dir, env: { MVM_REGISTRY_AUTH_FILE: link } }), InvalidArgumentError);
    const explicit = join(dir, "config.json");
    await writeFile(explicit, '{"auths":{"r.example:5000":{"auth":"bm9jb2xvbg=="}}}', { mode: 0o600 });
    await assert.rejects(loadRegistryCredentials("r.example:5000", { stateDir: dir, env: { MVM_REGISTRY_AUTH_FILE: explicit } }), /not base64 of user:password/);
    await writeFile(explicit, `{"auths":{"r.example:5000":{"auth":"x","auth":"y"}}}`, { mode: 0o600 });
    await assert.rejects(loadRegistryCredentials("r.example:5000", { stateDir: dir, env: { MVM_REGISTRY_AUTH_FILE: explicit } }), (e: unknown) => e instanceof InvalidArgumentError && /malformed/.test(e.message));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a token realm on plain http off loopback is refused before anything is sent; credentials never leave for it", async () => {
  const { server, origin, seen } = await loopbackServer((_req, res) => {
    res.writeHead(401, { "www-authenticate": 'Bearer realm="http://auth.example/token",service="x"' });
    res.end();
  });
  try {
    const reg = new OciRegistry({ origin, repository: "t/a", credentials: { username: USER, password: PASSWORD } });
    await assert.rejects(reg.ping(), (e: unknown) => e instanceof TransportError && /token realm that is refused/.test(e.message) && !e.message.includes(PASSWORD));
    assert.ok(seen.every((s) => s.authorization === undefined), "nothing was sent with credentials");
  } finally {
    await close(server);
  }
});

const skip = registrySkipReason() ?? (existsSync("/usr/bin/openssl") ? undefined : "openssl is not installed");

describe("HTTP basic against docker-registry with an htpasswd file", { skip }, () => {
  let reg: TestRegistry;
  before(async () => {
    reg = await startRegistry({ auth: { htpasswd: await htpasswd(USER, PASSWORD) } });
  });
  after(async () => reg?.close());

  it("anonymous and wrong credentials are refused with a TransportError that does not quote them; the right ones push and pull", async () => {
    await assert.rejects(new OciRegistry({ origin: reg.origin, repository: "t/a" }).ping(), (e: unknown) => e instanceof TransportError && /HTTP 401/.test(e.message));
    await assert.rejects(new OciRegistry({ origin: reg.origin, repository: "t/a", credentials: { username: USER, password: "wrong-one" } }).ping(), (e: unknown) => e instanceof TransportError && !e.message.includes("wrong-one"));
    const client = new OciRegistry({ origin: reg.origin, repository: "t/a", credentials: { username: USER, password: PASSWORD } });
    const bytes = Buffer.from("hello through basic auth");
    const digest = await client.putBlob(bytes);
    assert.deepEqual(await client.getBlob(digest, { sizeBytes: bytes.length }), bytes);
  });
});

describe("bearer tokens against docker-registry with auth: token and a token server on loopback", { skip }, () => {
  let dir: string;
  let reg: TestRegistry;
  let tokens: Awaited<ReturnType<typeof loopbackServer>>;
  const issued: { scope: string[]; basic: boolean }[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "mvm-token-"));
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=mvm-test-token"], { stdio: "pipe" });
    const key = createPrivateKey(await readFile(join(dir, "key.pem")));
    const certPem = await readFile(join(dir, "cert.pem"), "utf8");
    const certDer = Buffer.from(certPem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
    const expected = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString("base64")}`;
    tokens = await loopbackServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://x");
      const basic = req.headers.authorization === expected;
      if (req.headers.authorization !== undefined && !basic) {
        res.writeHead(401).end();
        return;
      }
      const scopes = url.searchParams.getAll("scope");
      issued.push({ scope: scopes, basic });
      // Anonymous callers may pull; only alice may push.
      const access = scopes.map((s) => {
        const [type, name, actions] = s.split(":");
        return { type, name, actions: (actions ?? "").split(",").filter((a) => basic || a === "pull") };
      });
      const now = Math.floor(Date.now() / 1000);
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
      const head = b64({ typ: "JWT", alg: "ES256", x5c: [certDer.toString("base64")] });
      const claims = b64({ iss: "mvm-test-issuer", sub: basic ? USER : "", aud: "mvm-test-registry", exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access });
      const sig = sign("sha256", Buffer.from(`${head}.${claims}`), { key, dsaEncoding: "ieee-p1363" }).toString("base64url");
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ token: `${head}.${claims}.${sig}`, expires_in: 300 }));
    });
    reg = await startRegistry({ auth: { token: { realm: `${tokens.origin}/token`, service: "mvm-test-registry", issuer: "mvm-test-issuer", rootCertPem: certPem } } });
  });
  after(async () => {
    await reg?.close();
    await close(tokens?.server);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("pushes with credentials (sent as Basic to the realm only), pulls anonymously, and refuses an anonymous push", async () => {
    const client = new OciRegistry({ origin: reg.origin, repository: "t/tok", credentials: { username: USER, password: PASSWORD } });
    const bytes = Buffer.from("hello through a bearer token");
    const digest = await client.putBlob(bytes);
    assert.ok(issued.some((i) => i.basic && i.scope.some((s) => s === "repository:t/tok:pull,push")), JSON.stringify(issued));
    const anonymous = new OciRegistry({ origin: reg.origin, repository: "t/tok" });
    assert.deepEqual(await anonymous.getBlob(digest, { sizeBytes: bytes.length }), bytes);
    await assert.rejects(anonymous.putBlob(Buffer.from("not allowed")), TransportError);
  });
});
