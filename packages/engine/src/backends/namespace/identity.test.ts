/** The sandbox user's passwd and group copies: added only when the image lacks the uid, the image untouched. */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { prepareIdentity } from "./identity.js";

function rootfs(t: { after(fn: () => void): void }, passwd: string | undefined, home = true): { root: string; out: string } {
  const root = mkdtempSync(join(tmpdir(), "mvm-identity-"));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, "etc"));
  mkdirSync(join(root, "out"));
  if (home) mkdirSync(join(root, "home"));
  if (passwd !== undefined) writeFileSync(join(root, "etc", "passwd"), passwd);
  writeFileSync(join(root, "etc", "group"), "root:x:0:\n");
  return { root, out: join(root, "out") };
}

describe("prepareIdentity", () => {
  it("adds user (uid and gid 1000, home /home/user) to an image without them, leaving the image's files as they were", async (t) => {
    const { root, out } = rootfs(t, "root:x:0:0:root:/root:/bin/sh");
    const id = await prepareIdentity(root, out);
    assert.equal(id.home, true);
    assert.equal(readFileSync(id.passwd!, "utf8"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n");
    assert.equal(readFileSync(id.group!, "utf8"), "root:x:0:\nuser:x:1000:\n");
    assert.equal(readFileSync(join(root, "etc", "passwd"), "utf8"), "root:x:0:0:root:/root:/bin/sh");
  });

  it("keeps an image's own entry for the uid, and skips what the image lacks", async (t) => {
    const { root, out } = rootfs(t, "root:x:0:0::/:/bin/sh\nsandbox:x:1000:1000::/work:/bin/sh\n", false);
    const id = await prepareIdentity(root, out);
    assert.equal(id.passwd, undefined);
    assert.equal(id.home, false);
    assert.ok(id.group !== undefined);
    const none = rootfs(t, undefined);
    const noPasswd = await prepareIdentity(none.root, none.out);
    assert.equal(noPasswd.passwd, undefined);
    assert.ok(!existsSync(join(none.out, "passwd")));
  });
});
