/**
 * One real microVM (TCG here) with a busybox image that has /run and a system CA bundle, started
 * with a trust bundle: the relay port reaches the agent's proxy listener (a guest connection to
 * 127.0.0.1:3128 becomes a relay stream on the host, bytes flow back), and the bundle is readable
 * at TRUST_BUNDLE_PATH and over the system bundle, read-only.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { after, before, describe, it } from "node:test";
import { RelayMux, SYSTEM_TRUST_BUNDLE_PATH, TRUST_BUNDLE_PATH, type RelayStreamInfo } from "@mvm/protocol";
import { AgentClient } from "../../agent/client.js";
import { assembleAgentRuntime } from "../../runtime/agent-runtime.js";
import { buildBusyboxRootfs, makeSpec, makeTestRoot, removeTestRoot } from "../namespace/_fixtures.js";
import { VmBackend } from "./vm-backend.js";

const CACHE = process.env["MVM_TEST_VM_CACHE"] ?? "/var/tmp/mvm-test-vm-cache";
const skip = existsSync("/usr/bin/qemu-system-x86_64") ? undefined : "needs qemu-system-x86_64 (scripts/setup.sh installs it)";

const PEM = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdCBidW5kbGU=\n-----END CERTIFICATE-----\n";

async function run(client: AgentClient, argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const proc = await client.exec(
    { argv, env: { PATH: "/usr/bin:/bin" }, cwd: "/work", timeoutMs: 60_000, killGraceMs: 1_000, maxOutputBytes: 1 << 20 },
    { openStdin: false, output: { onStdout: (c) => (stdout += Buffer.from(c).toString()), onStderr: (c) => (stderr += Buffer.from(c).toString()) } },
  );
  const exit = await proc.exit;
  return { code: exit.exitCode, stdout, stderr };
}

describe("VM egress plumbing", { skip, timeout: 600_000 }, () => {
  let root: string;
  let agentDir: string;
  let rootfsDir: string;
  before(async () => {
    root = await makeTestRoot("mvm-vm-egress-");
    rootfsDir = await buildBusyboxRootfs(join(root, "rootfs"));
    await mkdir(join(rootfsDir, "run"), { mode: 0o755 });
    await mkdir(join(rootfsDir, "etc/ssl/certs"), { recursive: true, mode: 0o755 });
    await writeFile(join(rootfsDir, SYSTEM_TRUST_BUNDLE_PATH), "the image's own bundle\n", { mode: 0o644 });
    const agentBundlePath = createRequire(import.meta.url).resolve("@mvm/agent/agent.cjs");
    agentDir = (await assembleAgentRuntime({ agentBundlePath, outRoot: join(root, "runtime") })).dir;
  });
  after(() => removeTestRoot(root));

  it("relays a guest connection to the proxy port and installs the trust bundle", async () => {
    const backend = new VmBackend({ cacheRoot: CACHE, diskRoot: join(root, "disks"), savedVms: false });
    const spec = { ...(await makeSpec({ root, rootfsDir, agentDir, resources: { memoryMiB: 384 } })), trustBundlePem: PEM };
    const sandbox = await backend.launch(spec);
    try {
      const relay = await sandbox.relay;
      const mux = new RelayMux(relay, relay, { role: "host" });
      mux.on("error", () => undefined);
      const opened = new Promise<[Duplex, RelayStreamInfo]>((resolve) =>
        mux.once("stream", (stream: Duplex, info: RelayStreamInfo) => {
          // Closing the mux at the end resets this stream.
          stream.on("error", () => undefined);
          resolve([stream, info]);
        }),
      );
      const client = await AgentClient.connect(sandbox.channel, { helloTimeoutMs: 120_000, requestTimeoutMs: 60_000, label: spec.sandboxId });

      const trust = await run(client, ["/bin/sh", "-c", `cat ${TRUST_BUNDLE_PATH}; stat -c '%a %u' ${TRUST_BUNDLE_PATH}`]);
      assert.equal(trust.code, 0, trust.stderr);
      assert.equal(trust.stdout, `${PEM}444 0\n`);
      assert.equal((await run(client, ["/bin/cat", SYSTEM_TRUST_BUNDLE_PATH])).stdout, PEM);
      for (const path of [TRUST_BUNDLE_PATH, SYSTEM_TRUST_BUNDLE_PATH, "/run/x"]) {
        const ro = await run(client, ["/bin/sh", "-c", `echo x > ${path} 2>/dev/null && echo writable || echo ro`]);
        assert.equal(ro.stdout, "ro\n", path);
      }

      const connect = run(client, ["/bin/sh", "-c", "nc 127.0.0.1 3128 </dev/null; echo exited"]);
      const [stream, info] = await opened;
      assert.equal(info.port, undefined);
      assert.equal(info.id % 2, 1);
      stream.end("pong\n");
      const nc = await connect;
      assert.equal(nc.code, 0, nc.stderr);
      assert.equal(nc.stdout, "pong\nexited\n");
      mux.close("test over");
    } finally {
      await sandbox.destroy();
    }
  });

  it("refuses a trust bundle for an image without /run before starting anything", async () => {
    const backend = new VmBackend({ cacheRoot: CACHE, diskRoot: join(root, "disks"), savedVms: false });
    const spec = { ...(await makeSpec({ root, rootfsDir: join(root, "runtime"), agentDir })), trustBundlePem: PEM };
    await assert.rejects(backend.launch(spec), /the image has no \/run directory for the trust bundle/);
  });
});
