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
import { imageCommand, PolicyDeniedError, UnsupportedCapabilityError, type EngineApi } from "@mvm/protocol";
import { openEngine } from "../../open.js";
import { auditFilePath } from "../../audit/log.js";
import { tailAuditEntries } from "../../audit/read.js";
import { sha256Hex, type AuditEvent } from "../../audit/entry.js";
import { registrySkipReason, startRegistry, type TestRegistry } from "../../oci/_test/registry.js";
import { SKOPEO, toolSkipReason, UMOCI, writeUmociLayout, writeUmociUserLayout } from "./_fixture.js";

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
    const app = await writeUmociUserLayout(dir, "app", { user: "app", entrypoint: ["/bin/sh", "-c"], cmd: ['echo "uid $(id -u) gid $(id -g) $(id -un)"'] });
    const numeric = await writeUmociUserLayout(dir, "numeric", { user: "2000:extra" });
    const root = await writeUmociUserLayout(dir, "root", { user: "root" });
    for (const [l, tag] of [[app, "app"], [numeric, "numeric"], [root, "root"]] as const) {
      execFileSync(SKOPEO, ["copy", "--quiet", "--dest-tls-verify=false", `oci:${l}:t1`, `docker://${host}/t/${tag}:1`], { stdio: "pipe" });
    }
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

  /** Runs `argv` in a new sandbox of `image`; its stdout. */
  async function runIn(image: string, argv: string[]): Promise<string> {
    const info = await engine.createSandbox({ backend: "namespace", image, ttlSeconds: 120 });
    try {
      const out: Buffer[] = [];
      const started = await engine.exec(info.id, { argv }, { onStdout: (c) => out.push(Buffer.from(c)) });
      assert.equal((await started.exit).exitCode, 0);
      return Buffer.concat(out).toString("utf8");
    } finally {
      await engine.killSandbox(info.id);
    }
  }

  it("applies the image's user by name and by number, and gives its entrypoint and cmd to callers", async () => {
    const app = await engine.pullImage(`${host}/t/app:1`);
    assert.deepEqual(app.oci?.entrypoint, ["/bin/sh", "-c"]);
    assert.equal(app.oci?.user, "app");
    const inspected = await engine.inspectImage(app.oci!.reference!);
    assert.deepEqual(inspected.oci?.cmd, app.oci?.cmd, "inspect carries the config's cmd");
    // No command: entrypoint + cmd, as docker runs them; a command replaces the cmd only.
    assert.equal(await runIn(app.oci!.reference!, imageCommand(app.oci, [])!), "uid 4321 gid 4322 app\n");
    assert.equal(await runIn(app.oci!.reference!, imageCommand(app.oci, ["id -G; pwd"])!), "4322\n/work\n");
    const numeric = await engine.pullImage(`${host}/t/numeric:1`);
    // uid 2000 has no passwd entry: the sandbox's copy of /etc/passwd names it "user".
    assert.equal(await runIn(numeric.oci!.reference!, ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -un)"]), "2000 4400 user\n");
  });

  it("refuses an image whose user is root with UnsupportedCapabilityError, leaving no sandbox", async () => {
    const root = await engine.pullImage(`${host}/t/root:1`);
    const before = (await engine.listSandboxes()).length;
    await assert.rejects(
      engine.createSandbox({ backend: "namespace", image: root.oci!.reference!, ttlSeconds: 60 }),
      (e: unknown) => e instanceof UnsupportedCapabilityError && /image's user "root"/.test(e.message),
    );
    assert.equal((await engine.listSandboxes()).length, before);
  });

  /** The `image.refused` events of the engine's audit log. */
  async function refusals(): Promise<AuditEvent[]> {
    const stored = await tailAuditEntries(auditFilePath(join(dir, "state")), 100_000);
    return stored.flatMap((s) => (s.entry?.event.type === "image.refused" ? [s.entry.event] : []));
  }

  it("the policy refuses a tag when digests are required, and a registry it does not list; each refusal is audited", async () => {
    await writeFile(policyFile, JSON.stringify({ version: 1, requireDigestPinnedImages: true }));
    await chmod(policyFile, 0o644);
    try {
      const tag = `${host}/t/bb:1`;
      await assert.rejects(engine.createSandbox({ backend: "namespace", image: tag }), (e: unknown) => e instanceof PolicyDeniedError && /requireDigestPinnedImages/.test(e.message));
      assert.deepEqual((await refusals()).at(-1), { type: "image.refused", rule: "requireDigestPinnedImages", at: "create", refDigest: sha256Hex(tag) });
      await writeFile(policyFile, JSON.stringify({ version: 1, allowedRegistries: ["registry.example"] }));
      await assert.rejects(engine.pullImage(tag), (e: unknown) => e instanceof PolicyDeniedError && /allowedRegistries/.test(e.message));
      assert.deepEqual((await refusals()).at(-1), { type: "image.refused", rule: "allowedRegistries", at: "pull", refDigest: sha256Hex(tag) });
      const image = (await engine.listImages()).find((i) => i.oci?.reference !== undefined);
      await assert.rejects(engine.createSandbox({ backend: "namespace", image: image!.oci!.reference! }), (e: unknown) => e instanceof PolicyDeniedError && /allowedRegistries/.test(e.message));
      assert.deepEqual((await refusals()).at(-1), { type: "image.refused", rule: "allowedRegistries", at: "create", refDigest: sha256Hex(image!.oci!.reference!), imageDigest: image!.digest.slice(7) });
      await writeFile(policyFile, JSON.stringify({ version: 1, requireImageProvenance: true }));
      await assert.rejects(engine.createSandbox({ backend: "namespace", image: image!.digest }), (e: unknown) => e instanceof PolicyDeniedError && /requireImageProvenance/.test(e.message));
      assert.deepEqual((await refusals()).at(-1), { type: "image.refused", rule: "requireImageProvenance", at: "create", refDigest: sha256Hex(image!.digest), imageDigest: image!.digest.slice(7) });
      assert.equal((await refusals()).length, 4);
    } finally {
      await rm(policyFile, { force: true });
    }
  });
});
