/**
 * Test fixture: a real OCI registry (Debian's `docker-registry`, the CNCF distribution server) on
 * a free loopback port, storing into a temp directory of its own. Plain http by default; with
 * `tls`, it serves https with the given key and certificate. `close()` (or `await using`) stops it
 * (TERM, then KILL after a grace) and removes the directory.
 *
 * @example
 * await using reg = await startRegistry();
 * const client = new OciRegistry({ origin: reg.origin, repository: "t/bundles" });
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

/** Where Debian installs the registry server. */
export const REGISTRY_BINARY = "/usr/bin/docker-registry";

/** Why registry tests cannot run here, or undefined when they can. */
export function registrySkipReason(): string | undefined {
  return existsSync(REGISTRY_BINARY) ? undefined : `${REGISTRY_BINARY} is not installed (apt-get install docker-registry)`;
}

/** A running registry. */
export interface TestRegistry extends AsyncDisposable {
  /** `http://127.0.0.1:PORT` (or `https://localhost:PORT` with tls). */
  readonly origin: string;
  readonly port: number;
  /** The registry's storage root (blobs under docker/registry/v2/blobs/sha256/). */
  readonly storageDir: string;
  close(): Promise<void>;
}

/** Options of {@link startRegistry}. */
export interface StartRegistryOptions {
  /** Serve https with this key and certificate (PEM); the origin's host is then `localhost`. */
  readonly tls?: { readonly keyPem: string; readonly certPem: string };
  /** How long to wait for the registry to answer `/v2/`, in milliseconds. @default 15000 */
  readonly startTimeoutMs?: number;
  /**
   * Require authentication: `htpasswd` (the file's text, bcrypt entries) for HTTP basic, or
   * `token` for the bearer-token flow (tokens signed by the key of `rootCertPem`'s certificate).
   */
  readonly auth?:
    | { readonly htpasswd: string }
    | { readonly token: { readonly realm: string; readonly service: string; readonly issuer: string; readonly rootCertPem: string } };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Starts a registry; retries on another port when the one picked was taken meanwhile. */
export async function startRegistry(options: StartRegistryOptions = {}): Promise<TestRegistry> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(options);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startOnce(options: StartRegistryOptions): Promise<TestRegistry> {
  const dir = await mkdtemp(join(tmpdir(), "mvm-test-registry-"));
  const storageDir = join(dir, "storage");
  const port = await freePort();
  const lines = [
    "version: 0.1",
    "log:",
    "  level: error",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${storageDir}`,
    "  delete:",
    "    enabled: true",
    "http:",
    `  addr: 127.0.0.1:${port}`,
  ];
  if (options.auth !== undefined && "htpasswd" in options.auth) {
    await writeFile(join(dir, "htpasswd"), options.auth.htpasswd, { mode: 0o600 });
    lines.splice(lines.indexOf("http:"), 0, "auth:", "  htpasswd:", "    realm: mvm-test", `    path: ${join(dir, "htpasswd")}`);
  } else if (options.auth !== undefined) {
    const t = options.auth.token;
    await writeFile(join(dir, "token-root.pem"), t.rootCertPem);
    lines.splice(lines.indexOf("http:"), 0, "auth:", "  token:", `    realm: ${t.realm}`, `    service: ${t.service}`, `    issuer: ${t.issuer}`, `    rootcertbundle: ${join(dir, "token-root.pem")}`);
  }
  if (options.tls !== undefined) {
    await writeFile(join(dir, "key.pem"), options.tls.keyPem, { mode: 0o600 });
    await writeFile(join(dir, "cert.pem"), options.tls.certPem);
    lines.push("  tls:", `    certificate: ${join(dir, "cert.pem")}`, `    key: ${join(dir, "key.pem")}`);
  }
  await writeFile(join(dir, "config.yml"), `${lines.join("\n")}\n`);
  const child = spawn(REGISTRY_BINARY, ["serve", join(dir, "config.yml")], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    if (stderr.length < 8192) stderr += d.toString("utf8");
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const close = async (): Promise<void> => {
    await stop(child, exited);
    await rm(dir, { recursive: true, force: true });
  };
  const origin = options.tls === undefined ? `http://127.0.0.1:${port}` : `https://localhost:${port}`;
  try {
    await waitReady(port, child, options.startTimeoutMs ?? 15_000, () => stderr);
  } catch (err) {
    await close();
    throw err;
  }
  return { origin, port, storageDir, close, [Symbol.asyncDispose]: close };
}

/** Waits until the port accepts connections and the registry answers (any HTTP status). */
async function waitReady(port: number, child: ChildProcess, timeoutMs: number, stderr: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`docker-registry exited early: ${stderr().slice(0, 2000)}`);
    if (await connects(port)) return;
    await delay(50);
  }
  throw new Error(`docker-registry did not listen on 127.0.0.1:${port} within ${timeoutMs} ms: ${stderr().slice(0, 2000)}`);
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function stop(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const done = await Promise.race([exited.then(() => true), delay(3000).then(() => false)]);
  if (!done) {
    child.kill("SIGKILL");
    await exited;
  }
}
