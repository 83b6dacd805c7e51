import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InternalError, InvalidArgumentError, NotFoundError } from "@mvm/protocol";
import { fetchGuestKernel, importGuestKernel, moduleLoadOrder, openGuestKernel, parseKernelPackage, parseModuleDepends } from "./kernel.js";

/** A fake module file: some bytes, then a .modinfo-like run of NUL-separated key=value strings. */
function fakeKo(fields: readonly string[]): Buffer {
  return Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]), Buffer.from(`\0${fields.join("\0")}\0`, "latin1")]);
}

describe("parseModuleDepends", () => {
  it("reads the comma-separated list and normalizes dashes", () => {
    assert.deepEqual(parseModuleDepends(fakeKo(["license=GPL", "depends=reed_solomon,dm-mod,dm-bufio", "vermagic=6.1"])), ["reed_solomon", "dm_mod", "dm_bufio"]);
  });
  it("returns [] for an empty entry", () => {
    assert.deepEqual(parseModuleDepends(fakeKo(["depends=", "intree=Y"])), []);
  });
  it("rejects a module without the entry", () => {
    assert.throws(() => parseModuleDepends(fakeKo(["license=GPL"])), InvalidArgumentError);
  });
  it("rejects an unterminated entry", () => {
    assert.throws(() => parseModuleDepends(Buffer.from("\0depends=a,b", "latin1")), InvalidArgumentError);
  });
});

describe("moduleLoadOrder", () => {
  const deps: Record<string, string[]> = {
    virtio_ring: [], virtio: ["virtio_ring"], virtio_mmio: ["virtio", "virtio_ring"], virtio_blk: ["virtio", "virtio_ring"],
    dm_mod: [], dm_bufio: ["dm-mod"], reed_solomon: [], dm_verity: ["reed_solomon", "dm-mod", "dm_bufio"],
  };
  const dependsOf = (n: string) => deps[n] ?? assert.fail(`unknown module ${n}`);
  it("puts every module after its dependencies, each once", () => {
    const order = moduleLoadOrder(["virtio_mmio", "virtio_blk", "dm-verity"], dependsOf);
    assert.deepEqual(order, ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "reed_solomon", "dm_mod", "dm_bufio", "dm_verity"]);
    for (const [i, name] of order.entries()) {
      for (const dep of deps[name] ?? []) assert.ok(order.indexOf(dep.replaceAll("-", "_")) < i, `${dep} before ${name}`);
    }
  });
  it("rejects a cycle", () => {
    const cyclic: Record<string, string[]> = { a: ["b"], b: ["c"], c: ["a"] };
    assert.throws(() => moduleLoadOrder(["a"], (n) => cyclic[n] ?? []), /cycle "a -> b -> c -> a"/);
  });
});

describe("parseKernelPackage", () => {
  it("finds the versioned package", () => {
    assert.equal(parseKernelPackage("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"), "linux-image-6.1.0-56-cloud-amd64");
    assert.equal(parseKernelPackage("foo, linux-image-6.12.9+bpo-cloud-amd64 (= 6.12.9-1~bpo12+1)"), "linux-image-6.12.9+bpo-cloud-amd64");
  });
  it("rejects anything else", () => {
    assert.throws(() => parseKernelPackage("linux-image-6.1.0-56-amd64 (= 6.1.192-2)"), InvalidArgumentError);
    assert.throws(() => parseKernelPackage("linux-image-../../x-cloud-amd64"), InvalidArgumentError);
  });
});

describe("openGuestKernel", () => {
  it("rejects a malformed digest and reports a missing kernel", async () => {
    await assert.rejects(openGuestKernel("/nonexistent", "sha256:xyz"), InvalidArgumentError);
    await assert.rejects(openGuestKernel("/nonexistent", `sha256:${"0".repeat(64)}`), NotFoundError);
  });
});

describe("fetchGuestKernel (network: Debian mirror)", { skip: process.env["MVM_SKIP_NETWORK_TESTS"] === "1" }, () => {
  it("stores the kernel and modules by digest, and detects tampering", async () => {
    const root = await mkdtemp(join(tmpdir(), "mvm-kernel-"));
    try {
      const kernel = await fetchGuestKernel(root);
      assert.match(kernel.digest, /^sha256:[0-9a-f]{64}$/);
      assert.match(kernel.version, /-cloud-amd64$/);
      assert.ok(kernel.kernelPath.startsWith(join(root, kernel.digest.slice(7))));
      for (const name of ["virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk", "dm_mod", "dm_verity"]) {
        assert.ok(kernel.moduleOrder.includes(name), name);
      }
      assert.ok(kernel.moduleOrder.indexOf("virtio_ring") < kernel.moduleOrder.indexOf("virtio_mmio"));
      assert.ok(kernel.moduleOrder.indexOf("dm_mod") < kernel.moduleOrder.indexOf("dm_verity"));
      const again = await openGuestKernel(root, kernel.digest);
      assert.deepEqual(again, kernel);
      await writeFile(join(kernel.modulesDir, "virtio.ko"), "tampered");
      await assert.rejects(openGuestKernel(root, kernel.digest), InternalError);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe("importGuestKernel (a kernel the user names)", { skip: process.env["MVM_SKIP_NETWORK_TESTS"] === "1" }, () => {
  it("stores a named kernel with the modules the guest needs, and refuses a tree without them", async () => {
    const root = await mkdtemp(join(tmpdir(), "mvm-kernel-named-"));
    try {
      // A stand-in for /boot + /lib/modules: the Debian kernel fetched into a first store.
      const fetched = await fetchGuestKernel(join(root, "fetched"));
      const tree = join(root, "lib", "modules", fetched.version, "kernel");
      await mkdir(tree, { recursive: true });
      for (const name of fetched.moduleOrder) await copyFile(join(fetched.modulesDir, `${name}.ko`), join(tree, `${name}.ko`));
      const named = await importGuestKernel(join(root, "store"), fetched.kernelPath, join(root, "lib", "modules", fetched.version));
      assert.equal(named.digest, fetched.digest);
      assert.equal(named.version, fetched.version);
      assert.deepEqual(named.moduleOrder, fetched.moduleOrder);
      await rm(join(tree, "dm_verity.ko"));
      await assert.rejects(importGuestKernel(join(root, "store2"), fetched.kernelPath, join(root, "lib", "modules", fetched.version)), /has no module "dm_verity"/);
      await assert.rejects(importGuestKernel(join(root, "store3"), join(root, "missing"), join(root, "lib", "modules", fetched.version)), NotFoundError);
      await assert.rejects(importGuestKernel(join(root, "store4"), "relative", "/lib/modules/x"), InvalidArgumentError);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
