/**
 * End-to-end: `mvmctl run --image IMAGE` of an OCI image made by umoci runs the image's
 * entrypoint and cmd as the image's user, a command after "--" replaces the cmd only, and an
 * image whose user is root is refused with a clear error.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cliEnv, run } from "./_test/e2e-env.js";

const UMOCI = "/usr/bin/umoci";
const skip = !existsSync(UMOCI) ? "umoci is not installed" : !existsSync("/usr/bin/bwrap") ? "bwrap is not installed" : undefined;

let dir: string;
let env: NodeJS.ProcessEnv;

/** An OCI layout of one busybox image with `app` (4321:4322) in its passwd, and the given config. */
async function layout(name: string, config: string[]): Promise<string> {
  const l = join(dir, name);
  const bundle = join(dir, `${name}-bundle`);
  const umoci = (...args: string[]): void => void execFileSync(UMOCI, args, { stdio: "pipe" });
  umoci("init", "--layout", l);
  umoci("new", "--image", `${l}:t1`);
  umoci("unpack", "--rootless", "--image", `${l}:t1`, bundle);
  const rootfs = join(bundle, "rootfs");
  await mkdir(join(rootfs, "bin"), { recursive: true });
  await mkdir(join(rootfs, "etc"), { recursive: true });
  await cp("/bin/busybox", join(rootfs, "bin", "busybox"));
  for (const tool of ["sh", "id", "echo"]) execFileSync("ln", ["-s", "busybox", join(rootfs, "bin", tool)]);
  await writeFile(join(rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:4321:4322:app:/work:/bin/sh\n");
  await writeFile(join(rootfs, "etc", "group"), "root:x:0:\napp:x:4322:\n");
  umoci("repack", "--image", `${l}:t1`, bundle);
  umoci("config", "--image", `${l}:t1`, "--config.env", "PATH=/bin", ...config);
  await rm(bundle, { recursive: true, force: true });
  return l;
}

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), "mvmctl-oci-run-"));
  await chmod(dir, 0o755); // the sandbox uid reaches the image store below it
  env = { ...cliEnv(dir), MVM_IMAGES_DIR: join(dir, "images") };
  const app = await layout("app", ["--config.user", "app", "--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.cmd", 'echo "$(id -u):$(id -g) $0"']);
  const root = await layout("root", ["--config.user", "0", "--config.cmd", "id"]);
  for (const [l, name] of [[app, "t/app"], [root, "t/root"]] as const) {
    const r = await run(env, ["image", "import", `oci-layout:${l}`, name]);
    assert.equal(r.code, 0, r.stderr);
  }
});

after(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

test("run IMAGE with no command runs its entrypoint and cmd as its user; a command replaces the cmd", { skip }, async () => {
  const bare = await run(env, ["run", "--image", "t/app"]);
  assert.equal(bare.code, 0, bare.stderr);
  assert.equal(bare.stdout, "4321:4322 /bin/sh\n");
  const given = await run(env, ["run", "--image", "t/app", "--", "echo replaced $(id -un)"]);
  assert.equal(given.code, 0, given.stderr);
  assert.equal(given.stdout, "replaced app\n");
  const planned = await run(env, ["run", "--mode", "plan", "--image", "t/app"]);
  assert.equal(planned.code, 0, planned.stderr);
  assert.match(planned.stdout, /"\/bin\/sh","-c","echo /, "the plan names the image's command");
});

test("run of an image whose user is root fails with UnsupportedCapabilityError and a clear message", { skip }, async () => {
  const r = await run(env, ["run", "--image", "t/root"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /image's user "0"/);
  assert.match(r.stderr, /never run workloads as root/);
});
