import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import { renderInitScript } from "./init-script.js";
import { buildInitramfs } from "./initramfs.js";
import { sandboxSeccompProgram } from "../namespace/seccomp.js";

// busybox-static stands in for the guest helper: the test only checks the archive's contents.
const guest = { guestHelperPath: "/bin/busybox", seccompProgram: sandboxSeccompProgram() };

const hasCpio = spawnSync("cpio", ["--version"]).status === 0;

describe("buildInitramfs", () => {
  let root: string;
  const kernel = { modulesDir: "", moduleOrder: ["virtio_ring", "virtio", "virtio_mmio"] };
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "mvm-initramfs-"));
    kernel.modulesDir = join(root, "modules");
    await mkdir(kernel.modulesDir);
    for (const name of kernel.moduleOrder) await writeFile(join(kernel.modulesDir, `${name}.ko`), `module ${name}`);
  });
  after(() => rm(root, { recursive: true, force: true }));

  it("holds busybox, the modules and /init, and is stored by digest", async () => {
    const built = await buildInitramfs({ kernel, outRoot: join(root, "out"), ...guest });
    assert.equal(built.path, join(root, "out", `${built.digest.slice(7)}.cpio.gz`));
    const again = await buildInitramfs({ kernel, outRoot: join(root, "out2"), ...guest });
    assert.equal(again.digest, built.digest);
    if (!hasCpio) return;
    const cpio = gunzipSync(await readFile(built.path));
    const names = execFileSync("cpio", ["-t", "--quiet"], { input: cpio, encoding: "utf8" }).trim().split("\n");
    for (const name of ["bin/busybox", "bin/mvm-guest", "etc/seccomp.bpf", "sbin/dmsetup", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libdevmapper.so.1.02.1", "dev/console", "init", "modules/virtio_ring.ko", "modules/virtio_mmio.ko"]) assert.ok(names.includes(name), name);
    const init = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "init"], { input: cpio, encoding: "utf8" });
    assert.equal(init, renderInitScript(kernel.moduleOrder));
    const busybox = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "bin/busybox"], { input: cpio, maxBuffer: 1 << 26 });
    assert.deepEqual(busybox, await readFile("/bin/busybox"));
  });

  it("rejects a dynamically linked busybox", async () => {
    await assert.rejects(buildInitramfs({ kernel, outRoot: join(root, "out3"), busyboxPath: "/bin/ls", ...guest }), /is not statically linked/);
  });
});

describe("renderInitScript", () => {
  it("is valid shell that loads the modules in order and never runs the agent as root", () => {
    const script = renderInitScript(["virtio_ring", "virtio", "virtio_mmio"]);
    assert.equal(spawnSync("/bin/busybox", ["sh", "-n", "-c", script]).status, 0);
    assert.match(script, /^for m in virtio_ring virtio virtio_mmio; do$/m);
    assert.match(script, /\[ "\$uid" -gt 0 \] \|\| fail/);
    assert.match(script, /mvm-guest sandbox \/etc\/seccomp.bpf \/newroot \/work \$uid -- \\\n/);
    assert.match(script, /--await-start &$/m);
    assert.match(script, /verity 1 \$2 \$2 4096 4096 \$3 \$4 sha256 \$5 \$6 1 panic_on_corruption/);
    for (const mount of script.split("\n").filter((l) => l.includes(" /newroot") && l.includes("mount "))) {
      assert.match(mount, /nosuid/, mount);
    }
  });
  it("rejects a module name that is not a plain word", () => {
    assert.throws(() => renderInitScript(["virtio; reboot"]), TypeError);
  });
});
