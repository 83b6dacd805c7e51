import { test } from "node:test";
import assert from "node:assert/strict";
import { UnsupportedCapabilityError } from "@mvm/protocol";
import { listSharedLibraries, parseLddOutput } from "./shared-libs.js";

const SAMPLE = `
	linux-vdso.so.1 (0x00007fff5a9e4000)
	libdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f1e6a1f0000)
	libstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f1e69e00000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1e69c1e000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f1e6a217000)
`;

test("parseLddOutput lists libraries by soname and finds the loader", () => {
  assert.deepEqual(parseLddOutput(SAMPLE, "node"), {
    loader: "/lib64/ld-linux-x86-64.so.2",
    libraries: [
      { name: "libdl.so.2", path: "/lib/x86_64-linux-gnu/libdl.so.2" },
      { name: "libstdc++.so.6", path: "/lib/x86_64-linux-gnu/libstdc++.so.6" },
      { name: "libc.so.6", path: "/lib/x86_64-linux-gnu/libc.so.6" },
    ],
  });
});

test("parseLddOutput rejects missing libraries, static binaries, odd names and foreign loaders", () => {
  assert.throws(() => parseLddOutput("\tlibfoo.so.1 => not found\n", "x"), /library "libfoo.so.1" of "x" not found/);
  assert.throws(() => parseLddOutput("\tstatically linked\n", "x"), UnsupportedCapabilityError);
  assert.throws(() => parseLddOutput("\tnot a dynamic executable\n", "x"), UnsupportedCapabilityError);
  assert.throws(() => parseLddOutput("\t../evil => /tmp/evil (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n", "x"), /unexpected library name/);
  assert.throws(() => parseLddOutput("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n", "x"), /no dynamic loader/);
  assert.throws(() => parseLddOutput("\t/lib/ld-linux-aarch64.so.1 (0x1)\n", "x"), UnsupportedCapabilityError);
});

test("listSharedLibraries on this host's node names libc and the x86_64 loader", async () => {
  const list = await listSharedLibraries(process.execPath);
  assert.match(list.loader, /\/ld-linux-x86-64\.so\.2$/);
  assert.ok(list.libraries.some((lib) => lib.name === "libc.so.6"));
});
