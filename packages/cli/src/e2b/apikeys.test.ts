import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { accessTokenFor, accessTokenMatches, apiKeyMatches, createApiKey, listApiKeys, loadTokenSecret, removeApiKey } from "./apikeys.js";

describe("E2B API keys and access tokens", () => {
  test("a key is stored as its hash only, file mode 0600; it matches until removed", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mvm-e2b-keys-"));
    try {
      const { key, record } = await createApiKey(dir, "ci");
      const file = join(dir, "e2b", "apikeys.json");
      assert.equal((await stat(file)).mode & 0o777, 0o600);
      assert.equal((await stat(join(dir, "e2b"))).mode & 0o777, 0o700);
      assert.ok(!(await readFile(file, "utf8")).includes(key));
      assert.equal(await apiKeyMatches(dir, key), true);
      assert.equal(await apiKeyMatches(dir, key.slice(0, -1)), false);
      assert.equal(await apiKeyMatches(dir, undefined), false);
      assert.equal(await apiKeyMatches(dir, ""), false);
      assert.deepEqual((await listApiKeys(dir)).map((k) => k.id), [record.id]);
      await removeApiKey(dir, record.id);
      assert.equal(await apiKeyMatches(dir, key), false);
      await assert.rejects(removeApiKey(dir, record.id), /No API key/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a store edited into something else is refused, not half-read", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mvm-e2b-keys-"));
    try {
      await createApiKey(dir, "");
      await writeFile(join(dir, "e2b", "apikeys.json"), JSON.stringify({ version: 1, keys: [], extra: true }));
      await assert.rejects(apiKeyMatches(dir, "e2b_x"));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("access tokens are per sandbox and survive a restart (same secret file)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mvm-e2b-keys-"));
    try {
      const secret = await loadTokenSecret(dir);
      assert.deepEqual(await loadTokenSecret(dir), secret);
      assert.equal((await stat(join(dir, "e2b", "token.key"))).mode & 0o777, 0o600);
      const t = accessTokenFor(secret, "sbx_a");
      assert.equal(accessTokenMatches(secret, "sbx_a", t), true);
      assert.equal(accessTokenMatches(secret, "sbx_b", t), false);
      assert.equal(accessTokenMatches(secret, "sbx_a", undefined), false);
      assert.equal(accessTokenMatches(secret, "sbx_a", ""), false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
