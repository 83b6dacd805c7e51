/**
 * The egress parts of a real namespace launch: the relay socket at /dev/mvm-relay (one connection,
 * then refused; gone after destroy; rejected when the sandbox ends first) and the trust bundle
 * at /run/mvm and over the image's system bundle.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { dirname, join } from "node:path";
import type { Duplex } from "node:stream";
import { AdmissionError, NAMESPACE_RELAY_PATH, SYSTEM_TRUST_BUNDLE_PATH, TRUST_BUNDLE_PATH, TransportError } from "@mvm/protocol";
import { AGENT_MOUNT_POINT } from "../../runtime/agent-runtime.js";
import { LOADER_NAME } from "../../runtime/shared-libs.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { StandInClient, buildBusyboxRootfs, buildStandInRuntime, footprint, makeSpec, makeTestRoot, removeTestRoot, type SpecInput } from "./_fixtures.js";

const skip = (!existsSync("/usr/bin/bwrap") || !existsSync("/bin/busybox")) && "needs bubblewrap and busybox-static";
const TIMEOUT = { timeout: 120_000 };
const PEM = "-----BEGIN CERTIFICATE-----\nTUlJQnNhbmRib3g=\n-----END CERTIFICATE-----\n";
const SYSTEM_PEM = "-----BEGIN CERTIFICATE-----\nc3lzdGVt\n-----END CERTIFICATE-----\n";

let root = "";
let base: SpecInput;
/** An image with /run and a system CA bundle, like Debian's. */
let debianLike = "";
/** An image with /run and no system CA bundle. */
let withRun = "";
const backend = new NamespaceBackend();

before(async () => {
  if (skip) return;
  root = await makeTestRoot();
  base = { root, rootfsDir: await buildBusyboxRootfs(join(root, "rootfs")), agentDir: (await buildStandInRuntime(root)).dir };
  withRun = await buildBusyboxRootfs(join(root, "rootfs-run"));
  await mkdir(join(withRun, "run"), { mode: 0o755 });
  debianLike = await buildBusyboxRootfs(join(root, "rootfs-debian"));
  await mkdir(join(debianLike, "run"), { mode: 0o755 });
  await mkdir(join(debianLike, "etc", "ssl", "certs"), { recursive: true, mode: 0o755 });
  await writeFile(join(debianLike, SYSTEM_TRUST_BUNDLE_PATH), SYSTEM_PEM, { mode: 0o644 });
});
after(async () => {
  if (root !== "") await removeTestRoot(root);
});

/** A shell command that runs node (from the agent runtime) with `script` inside the sandbox. */
function nodeInside(script: string): string {
  const node = [`${AGENT_MOUNT_POINT}/bin/${LOADER_NAME}`, "--library-path", `${AGENT_MOUNT_POINT}/lib`, `${AGENT_MOUNT_POINT}/bin/node`];
  return `${node.join(" ")} -e '${script}'`;
}

/** Inside: connects to the relay, sends "ping", prints what comes back or the error code. */
const CONNECT_SCRIPT = `const s = require("net").connect("${NAMESPACE_RELAY_PATH}");
s.on("connect", () => s.write("ping"));
s.on("data", (d) => { console.log("got " + d); s.end(); });
s.on("error", (e) => console.log(e.code));`;

async function readSome(socket: Duplex): Promise<string> {
  const [chunk] = (await once(socket, "data")) as [Buffer];
  return chunk.toString("utf8");
}

test("the relay accepts one connection from inside, refuses the next, and destroy leaves no socket", { skip, ...TIMEOUT }, async () => {
  const spec = await makeSpec(base);
  const sandbox = await backend.launch(spec);
  try {
    const client = new StandInClient(sandbox.channel);
    const hello = await client.hello;
    assert.deepEqual(hello.argv.slice(-2), ["--relay", NAMESPACE_RELAY_PATH], "the agent is told where its relay is");
    const relayDir = sandbox.reapRecord.extra["relayDir"] ?? "";
    assert.ok(existsSync(join(relayDir, "relay.sock")));

    const first = client.sh(nodeInside(CONNECT_SCRIPT));
    const relay = await sandbox.relay;
    assert.equal(await readSome(relay), "ping");
    relay.write("pong");
    const result = await first;
    assert.equal(result.stdout.trim(), "got pong", result.stderr);
    assert.deepEqual(await readdir(relayDir), [], "the socket file is unlinked once the agent is connected");

    const second = await client.sh(nodeInside(CONNECT_SCRIPT));
    assert.equal(second.stdout.trim(), "ECONNREFUSED", second.stderr);

    await sandbox.destroy();
    assert.equal(relay.destroyed, true);
    assert.equal(existsSync(relayDir), false);
  } finally {
    await sandbox.destroy();
  }
  assert.deepEqual(await footprint(sandbox.reapRecord, spec.sandboxId), { processes: [], cgroups: [] });
});

test("relay rejects when the sandbox is destroyed before the agent connects", { skip, ...TIMEOUT }, async () => {
  const sandbox = await backend.launch(await makeSpec(base));
  await new StandInClient(sandbox.channel).hello;
  await sandbox.destroy();
  await assert.rejects(sandbox.relay, TransportError);
  assert.equal(existsSync(sandbox.reapRecord.extra["relayDir"] ?? "/"), false);
});

test("relay rejects when the sandbox exits before the agent connects", { skip, ...TIMEOUT }, async () => {
  const broken = join(root, "broken-runtime");
  await mkdir(join(broken, "bin"), { recursive: true, mode: 0o755 });
  await writeFile(join(broken, "bin", LOADER_NAME), "not executable\n", { mode: 0o644 });
  const sandbox = await backend.launch(await makeSpec({ ...base, agentDir: broken }));
  try {
    await assert.rejects(sandbox.relay, (err: unknown) => err instanceof TransportError && /exited before its agent connected/.test(err.message));
  } finally {
    await sandbox.destroy();
  }
  assert.equal(existsSync(sandbox.reapRecord.extra["relayDir"] ?? "/"), false);
});

test("a launch that fails after the relay socket was made removes it", { skip, ...TIMEOUT }, async () => {
  // A bubblewrap stand-in that writes down the socket it was asked to bind (its options come
  // NUL-separated from the fd after --args), then fails.
  const seen = join(root, "seen-relay");
  const fake = join(root, "relay-failing-bwrap");
  const script = `[ "$1 $2" = "--args 5" ] || exit 2\ntr '\\0' '\\n' <&5 | grep -x -B1 '${NAMESPACE_RELAY_PATH}' | head -1 > ${seen}\nexit 1\n`;
  await writeFile(fake, `#!/bin/sh\n${script}`, { mode: 0o755 });
  await writeFile(seen, "");
  await chmod(seen, 0o666); // bubblewrap runs as the sandbox's uid when the tests run as root
  const spec = await makeSpec(base);
  await assert.rejects(new NamespaceBackend({ bwrapPath: fake }).launch(spec), AdmissionError);
  const socketPath = (await readFile(seen, "utf8")).trim();
  assert.match(socketPath, /\/mvm-relay-[A-Za-z0-9]{6}\/relay\.sock$/);
  assert.equal(existsSync(dirname(socketPath)), false);
});

test("the trust bundle is readable, read-only, at /run/mvm and over the image's system bundle", { skip, ...TIMEOUT }, async () => {
  const spec = { ...(await makeSpec({ ...base, rootfsDir: debianLike })), trustBundlePem: PEM };
  const sandbox = await backend.launch(spec);
  try {
    const client = new StandInClient(sandbox.channel);
    await client.hello;
    assert.equal((await client.sh(`cat ${TRUST_BUNDLE_PATH}`)).stdout, PEM);
    assert.equal((await client.sh(`cat ${SYSTEM_TRUST_BUNDLE_PATH}`)).stdout, PEM);
    const write = await client.sh(`echo x > ${TRUST_BUNDLE_PATH} || echo refused; echo x > ${SYSTEM_TRUST_BUNDLE_PATH} || echo refused`);
    assert.equal(write.stdout, "refused\nrefused\n");
    assert.deepEqual(await readdir(spec.stateDir).then((names) => names.filter((n) => n.includes("trust"))), [], "no copy left in stateDir");
  } finally {
    await sandbox.destroy();
  }
});

test("without a system bundle in the image only /run/mvm gets the trust bundle", { skip, ...TIMEOUT }, async () => {
  const sandbox = await backend.launch({ ...(await makeSpec({ ...base, rootfsDir: withRun })), trustBundlePem: PEM });
  try {
    const client = new StandInClient(sandbox.channel);
    await client.hello;
    assert.equal((await client.sh(`cat ${TRUST_BUNDLE_PATH}`)).stdout, PEM);
    assert.equal((await client.sh(`test -e ${SYSTEM_TRUST_BUNDLE_PATH} || echo absent`)).stdout, "absent\n");
  } finally {
    await sandbox.destroy();
  }
});

test("a trust bundle for an image without /run is refused, and nothing is left", { skip, ...TIMEOUT }, async () => {
  const spec = { ...(await makeSpec(base)), trustBundlePem: PEM };
  await assert.rejects(
    backend.launch(spec),
    (err: unknown) => err instanceof AdmissionError && err.message === `Cannot start sandbox "${spec.sandboxId}": the image has no /run directory for the trust bundle`,
  );
  assert.deepEqual(await readdir(spec.stateDir), []);
});
