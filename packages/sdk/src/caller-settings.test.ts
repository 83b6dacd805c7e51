/**
 * The caller's settings travel with its requests: through a real daemon in its own process, whose
 * environment has none of MVM_ACK_CONTAINER_TIER, MVM_MINIMUM_TIER and MVM_STRICT_SECRETS, and
 * which offers only the namespace backend (container tier).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  CONTAINER_TIER_CAVEATS,
  InvalidArgumentError,
  PolicyDeniedError,
  UnsupportedCapabilityError,
  callerSettingsFromEnv,
} from "@mvm/protocol";
import { DaemonClient } from "./daemon-client.js";
import { Sandbox } from "./sandbox.js";

const IMAGES = "/var/lib/mvm/images";
const IMAGE = "debian:bookworm+python3";
const imagePresent = existsSync(join(IMAGES, "refs.json")) && readFileSync(join(IMAGES, "refs.json"), "utf8").includes(`"${IMAGE}"`);
const CALLER_VARS = ["MVM_ACK_CONTAINER_TIER", "MVM_MINIMUM_TIER", "MVM_STRICT_SECRETS", "MVM_DEFAULT_BACKEND"] as const;

/** Runs `body` with this process's caller settings set to `vars` (the others unset), then restores them. */
async function withCallerEnv<T>(vars: Partial<Record<(typeof CALLER_VARS)[number], string>>, body: () => Promise<T>): Promise<T> {
  const saved = CALLER_VARS.map((k) => [k, process.env[k]] as const);
  for (const k of CALLER_VARS) delete process.env[k];
  Object.assign(process.env, vars);
  try {
    return await body();
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test("callerSettingsFromEnv reads the three settings; a bad tier is an error naming the variable", () => {
  assert.deepEqual(callerSettingsFromEnv({}), {});
  assert.deepEqual(callerSettingsFromEnv({ MVM_MINIMUM_TIER: "", MVM_ACK_CONTAINER_TIER: "0", MVM_STRICT_SECRETS: "no" }), {});
  assert.deepEqual(callerSettingsFromEnv({ MVM_MINIMUM_TIER: "vm-hardware", MVM_ACK_CONTAINER_TIER: "1", MVM_STRICT_SECRETS: "true" }), {
    minimumTier: "vm-hardware",
    acknowledgeContainerTier: true,
    strictSecrets: true,
  });
  assert.throws(() => callerSettingsFromEnv({ MVM_MINIMUM_TIER: "vm" }), (err: unknown) => err instanceof InvalidArgumentError && /^Invalid MVM_MINIMUM_TIER "vm"/.test(err.message));
});

test(
  "through a daemon whose environment sets nothing: the container tier needs the caller's acknowledgment, minimumTier is enforced, and the caller's MVM_STRICT_SECRETS refuses plain-text secrets",
  { skip: imagePresent ? false : "needs the default image in /var/lib/mvm: run scripts/setup.sh" },
  async (t) => {
    const root = await mkdtemp(join(tmpdir(), "mvm-sdk-caller-"));
    await chmod(root, 0o711);
    const stateDir = join(root, "state");
    const socketPath = join(root, "run", "mvmd.sock");
    const env = { ...process.env };
    for (const k of CALLER_VARS) delete env[k];
    const child = spawn(process.execPath, [fileURLToPath(new URL("./_test/daemon-child.js", import.meta.url)), socketPath, stateDir, IMAGES], {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    t.after(async () => {
      child.kill("SIGTERM");
      await exited;
      await rm(root, { recursive: true, force: true });
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (c: Buffer) => (c.toString().includes("ready") ? resolve() : undefined));
      child.once("exit", (code) => reject(new Error(`daemon exited with ${code}`)));
    });
    const client = new DaemonClient({ socketPath });
    t.after(() => client.close());
    const sandboxDirs = async (): Promise<string[]> => readdir(join(stateDir, "sandboxes")).catch(() => []);

    // Named no backend, landed on the container tier, not acknowledged: refused before anything boots.
    await withCallerEnv({}, async () => {
      await assert.rejects(Sandbox.create({ engine: client, image: IMAGE }), (err: unknown) => {
        assert.ok(err instanceof UnsupportedCapabilityError, String(err));
        assert.match(err.message, /^Refusing the container tier for a create that names no backend/);
        for (const caveat of CONTAINER_TIER_CAVEATS) assert.ok(err.message.includes(caveat), `names: ${caveat}`);
        return true;
      });
      // A minimum above the tier is refused even for a named backend, from the option or the caller's env.
      await assert.rejects(Sandbox.create({ engine: client, image: IMAGE, backend: "namespace", minimumTier: "vm-emulated" }), (err: unknown) => {
        assert.ok(err instanceof UnsupportedCapabilityError, String(err));
        assert.match(err.message, /^Backend "namespace" gives the container tier, below the minimum "vm-emulated" set by minimumTier/);
        return true;
      });
    });
    await withCallerEnv({ MVM_MINIMUM_TIER: "vm-hardware", MVM_ACK_CONTAINER_TIER: "1" }, async () => {
      await assert.rejects(Sandbox.create({ engine: client, image: IMAGE }), /below the minimum "vm-hardware"/);
    });
    // The caller's MVM_STRICT_SECRETS refuses a plain-text secret at create, though the daemon's env lacks it.
    await withCallerEnv({ MVM_STRICT_SECRETS: "1" }, async () => {
      await assert.rejects(
        Sandbox.create({ engine: client, image: IMAGE, backend: "namespace", env: { GH_TOKEN: "ghp_abcdef123456" } }),
        (err: unknown) => err instanceof PolicyDeniedError && /strict secret mode is on/.test(err.message) && !err.message.includes("ghp_abcdef123456"),
      );
    });
    assert.deepEqual(await client.listSandboxes(), []);
    assert.deepEqual(await sandboxDirs(), [], "no refused create left anything behind");

    // Acknowledged through the caller's env: it runs, on the container tier.
    await withCallerEnv({ MVM_ACK_CONTAINER_TIER: "1" }, async () => {
      await using sb = await Sandbox.create({ engine: client, image: IMAGE, ttlSeconds: 120 });
      assert.equal(sb.info.tier, "container");
      const argv = ["/bin/echo", "--api-key", "sk-abcdef123456"];
      const warned = await sb.commands.run(argv);
      assert.equal(warned.exitCode, 0, "without strict mode a secret-looking argument only warns");
      process.env["MVM_STRICT_SECRETS"] = "1";
      await assert.rejects(sb.commands.run(argv), (err: unknown) => err instanceof PolicyDeniedError && /argv\[2\]/.test(err.message));
      delete process.env["MVM_STRICT_SECRETS"];
      await assert.rejects(sb.commands.run(argv, { strictSecrets: true }), PolicyDeniedError);
    });
    // Naming the backend chooses the tier: no acknowledgment needed.
    await withCallerEnv({}, async () => {
      await using sb = await Sandbox.create({ engine: client, image: IMAGE, backend: "namespace", ttlSeconds: 120 });
      assert.equal(sb.info.tier, "container");
    });
  },
);
