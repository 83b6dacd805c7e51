import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { InvalidArgumentError, UnsupportedCapabilityError } from "@mvm/protocol";
import { resolveImageUser } from "./user.js";

async function withRoot(files: Record<string, string>, fn: (root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "mvm-user-"));
  try {
    await mkdir(join(root, "etc"));
    for (const [name, text] of Object.entries(files)) await writeFile(join(root, "etc", name), text);
    await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:4321:4322::/app:/bin/sh\nbad:x:12x:1::/:/bin/sh\n";
const GROUP = "root:x:0:\napp:x:4322:\nextra:x:4400:\n";

test("resolves numbers, names and mixes against the image's passwd and group", async () => {
  await withRoot({ passwd: PASSWD, group: GROUP }, async (root) => {
    assert.deepEqual(await resolveImageUser(root, "1000"), { uid: 1000, gid: 1000 });
    assert.deepEqual(await resolveImageUser(root, "4321"), { uid: 4321, gid: 4322 }, "a numeric user takes its passwd entry's group");
    assert.deepEqual(await resolveImageUser(root, "1000:5"), { uid: 1000, gid: 5 });
    assert.deepEqual(await resolveImageUser(root, "app"), { uid: 4321, gid: 4322 });
    assert.deepEqual(await resolveImageUser(root, "app:extra"), { uid: 4321, gid: 4400 });
    assert.deepEqual(await resolveImageUser(root, "1000:extra"), { uid: 1000, gid: 4400 });
  });
});

test("root is UnsupportedCapabilityError; unknown, malformed and out-of-range users are InvalidArgumentError", async () => {
  await withRoot({ passwd: PASSWD, group: GROUP }, async (root) => {
    for (const u of ["root", "0", "app:root", "1000:0", "0:1000"]) {
      await assert.rejects(resolveImageUser(root, u), UnsupportedCapabilityError, u);
    }
    for (const u of ["nobody", "app:nogroup", "bad", "", ":", "a b", "../x", "app:", "99999999999", "4294967295", "1:2:3"]) {
      await assert.rejects(resolveImageUser(root, u), InvalidArgumentError, u);
    }
  });
});

test("passwd and group are never read through a symlink", async () => {
  await withRoot({}, async (root) => {
    const outside = await mkdtemp(join(tmpdir(), "mvm-user-out-"));
    try {
      await writeFile(join(outside, "passwd"), "evil:x:4242:4242::/:/bin/sh\n");
      await symlink(join(outside, "passwd"), join(root, "etc", "passwd"));
      await assert.rejects(resolveImageUser(root, "evil"), InvalidArgumentError);
      await rm(join(root, "etc"), { recursive: true });
      await symlink(outside, join(root, "etc"));
      await assert.rejects(resolveImageUser(root, "evil"), InvalidArgumentError);
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });
});

test("any user string resolves to a non-root identity or fails with a typed error", async () => {
  await withRoot({ passwd: PASSWD, group: GROUP }, async (root) => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 40 }), async (u) => {
        try {
          const r = await resolveImageUser(root, u);
          assert.ok(r.uid > 0 && r.gid > 0);
        } catch (e) {
          assert.ok(e instanceof InvalidArgumentError || e instanceof UnsupportedCapabilityError, String(e));
        }
      }),
      { numRuns: 300 },
    );
  });
});
