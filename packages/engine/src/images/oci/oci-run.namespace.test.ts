/**
 * A pulled OCI image runs: umoci builds it, skopeo pushes it to a real registry on loopback, the
 * engine pulls it and starts a namespace sandbox from its pinned reference. The sandbox's info
 * records the image's digests and what its config supplied; the operator policy's image rules
 * refuse a tag when digests are required and a registry that is not listed.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PolicyDeniedError, type EngineApi } from "@mvm/protocol";
import { openEngine } from "../../open.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "../../oci/_test/registry.js";
import { SKOPEO, toolSkipReason, UMOCI, writeUmociLayout } from "./_fixture.js";

const skip = toolSkipReason(UMOCI, SKOPEO) ?? registrySkipReason() ?? (existsSync("/usr/bin/bwrap") ? undefined : "bwrap is not installed");

describe("a pulled OCI image runs in a namespace sandbox", { skip }, () => {
  let dir: string;
  let reg: TestRegistry;
  let engine: EngineApi;
  let host: string;
  let policyFile: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "mvm-oci-run-"));
    await chmod(dir, 0o755); // the sandbox uid reaches the image store below it
    const layout = await writeUmociLayout(dir);
    reg = await startRegistry();
    host = reg.origin.replace(/^http:\/\//, "");
    execFileSync(SKOPEO, ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:t1`, `docker://${host}/t/bb:1`], { stdio: "pipe" });
    policyFile = join(dir, "policy.json");
    engine = await openEngine({ stateDir: join(dir, "state"), imagesDir: join(dir, "images"), policyFile });
  });
  after(async () => {
    await engine?.close();
    await reg?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("runs from its pinned reference with the image's env and working dir, and records its digests", async () => {
    const image = await engine.pullImage(`${host}/t/bb:1`);
    const pinned = image.oci?.reference ?? "";
    assert.match(pinned, /@sha256:[0-9a-f]{64}$/);
    const info = await engine.createSandbox({ backend: "namespace", image: pinned, env: { MINE: "1" }, ttlSeconds: 120 });
    try {
      assert.equal(info.image.digest, image.digest);
      assert.equal(info.image.oci?.reference, pinned);
      assert.equal(info.image.oci?.manifestDigest, image.oci?.manifestDigest);
      assert.deepEqual(info.image.fromImage?.envNames, ["FROM_IMAGE", "PATH"]);
      assert.equal(info.image.fromImage?.workingDir, "/srv");
      assert.equal(info.image.fromImage?.user, "1000", "the user is recorded");
      assert.ok(info.receipt?.planId !== undefined);
      const out: Buffer[] = [];
      const started = await engine.exec(info.id, { argv: ["/bin/sh", "-c", 'echo "$FROM_IMAGE $MINE"; pwd; cat /etc/motd; ls /gone 2>&1 || true'] }, { onStdout: (c) => out.push(Buffer.from(c)) });
      const exit = await started.exit;
      assert.equal(exit.exitCode, 0);
      const lines = Buffer.concat(out).toString("utf8").split("\n");
      assert.equal(lines[0], "yes 1");
      assert.equal(lines[1], "/srv");
      assert.equal(lines[2], "v2");
      assert.match(lines[3] ?? "", /No such file|can't access|cannot access/);
    } finally {
      await engine.killSandbox(info.id);
    }
  });

  it("the policy refuses a tag when digests are required, and a registry it does not list", async () => {
    await writeFile(policyFile, JSON.stringify({ version: 1, requireDigestPinnedImages: true }));
    await chmod(policyFile, 0o644);
    try {
      await assert.rejects(engine.createSandbox({ backend: "namespace", image: `${host}/t/bb:1` }), (e: unknown) => e instanceof PolicyDeniedError && /requireDigestPinnedImages/.test(e.message));
      await writeFile(policyFile, JSON.stringify({ version: 1, allowedRegistries: ["registry.example"] }));
      await assert.rejects(engine.pullImage(`${host}/t/bb:1`), (e: unknown) => e instanceof PolicyDeniedError && /allowedRegistries/.test(e.message));
      const image = (await engine.listImages()).find((i) => i.oci?.reference !== undefined);
      await assert.rejects(engine.createSandbox({ backend: "namespace", image: image!.oci!.reference! }), (e: unknown) => e instanceof PolicyDeniedError && /allowedRegistries/.test(e.message));
      await writeFile(policyFile, JSON.stringify({ version: 1, requireImageProvenance: true }));
      await assert.rejects(engine.createSandbox({ backend: "namespace", image: image!.digest }), (e: unknown) => e instanceof PolicyDeniedError && /requireImageProvenance/.test(e.message));
    } finally {
      await rm(policyFile, { force: true });
    }
  });
});
