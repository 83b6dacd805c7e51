import { test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, readdir, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { AdmissionError, InvalidArgumentError, MAX_SECRET_VALUE_BYTES, MIN_SECRET_VALUE_BYTES } from "@mvm/protocol";
import { SecretStore, secretValueProblem, trimOneNewline } from "./store.js";

async function withStore(fn: (store: SecretStore, dir: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "mvm-secrets-"));
  try {
    await fn(new SecretStore(join(root, "secrets")), join(root, "secrets"));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

test("set creates a 0700 directory and a 0600 file; get returns value and meta", () =>
  withStore(async (store, dir) => {
    assert.equal(await store.get("openai-key"), undefined);
    const meta = await store.set("openai-key", "sk-test-1234\n", { hosts: ["api.openai.com", "api.openai.com"] });
    assert.equal(meta.name, "openai-key");
    assert.deepEqual(meta.hosts, ["api.openai.com"]);
    assert.equal(meta.bytes, "sk-test-1234".length);
    assert.equal(meta.createdAt, meta.updatedAt);
    assert.equal(await mode(dir), 0o700);
    assert.equal(await mode(join(dir, "openai-key.json")), 0o600);
    const got = await store.get("openai-key");
    assert.equal(got?.value, "sk-test-1234");
    assert.deepEqual(got?.meta, meta);
    const onDisk = JSON.parse(await readFile(join(dir, "openai-key.json"), "utf8")) as Record<string, unknown>;
    assert.deepEqual(Object.keys(onDisk).sort(), ["createdAt", "hosts", "name", "updatedAt", "value", "version"]);
    assert.equal(onDisk["version"], 1);
    assert.equal(await store.get("other"), undefined);
  }));

test("replacing a secret keeps createdAt and leaves no temp file", () =>
  withStore(async (store, dir) => {
    const first = await store.set("k1", "value-one");
    const second = await store.set("k1", "value-two", { hosts: ["*.example.com"] });
    assert.equal(second.createdAt, first.createdAt);
    assert.equal((await store.get("k1"))?.value, "value-two");
    assert.deepEqual(await readdir(dir), ["k1.json"]);
  }));

test("list is sorted, never holds values, and is empty for a missing directory", () =>
  withStore(async (store) => {
    assert.deepEqual(await store.list(), []);
    await store.set("zeta", "secret-zeta-value");
    await store.set("alpha", "secret-alpha-value", { hosts: ["a.example.com"] });
    const list = await store.list();
    assert.deepEqual(list.map((m) => m.name), ["alpha", "zeta"]);
    const text = JSON.stringify(list);
    assert.ok(!text.includes("secret-zeta-value") && !text.includes("secret-alpha-value"));
    for (const m of list) assert.deepEqual(Object.keys(m).sort(), ["bytes", "createdAt", "hosts", "name", "updatedAt"]);
  }));

test("remove deletes once", () =>
  withStore(async (store) => {
    assert.equal(await store.remove("nope"), false);
    await store.set("gone", "some-value");
    assert.equal(await store.remove("gone"), true);
    assert.equal(await store.remove("gone"), false);
    assert.equal(await store.get("gone"), undefined);
  }));

test("leftover temp files are ignored; stale ones are cleaned", () =>
  withStore(async (store, dir) => {
    await store.set("real", "real-value");
    const fresh = join(dir, ".real.0123456789abcdef.tmp");
    const stale = join(dir, ".half.fedcba9876543210.tmp");
    await writeFile(fresh, "{partial", { mode: 0o600 });
    await writeFile(stale, "{partial", { mode: 0o600 });
    const old = new Date(Date.now() - 10 * 60_000);
    await utimes(stale, old, old);
    assert.deepEqual((await store.list()).map((m) => m.name), ["real"]);
    const left = await readdir(dir);
    assert.ok(left.includes(".real.0123456789abcdef.tmp"), "a fresh temp may belong to a running set");
    assert.ok(!left.includes(".half.fedcba9876543210.tmp"));
    assert.equal((await store.get("real"))?.value, "real-value");
  }));

test("bad names, values and hosts are refused before anything is written", () =>
  withStore(async (store, dir) => {
    for (const name of ["", "Upper", "a/b", "../x", ".hidden", "a b", "x".repeat(129)]) {
      await assert.rejects(store.set(name, "value"), InvalidArgumentError, name);
      await assert.rejects(store.get(name), InvalidArgumentError, name);
      await assert.rejects(store.remove(name), InvalidArgumentError, name);
    }
    for (const value of ["", "\n", "a-value\0b", "\nleading-value", "two-values\n\n", "x".repeat(MAX_SECRET_VALUE_BYTES + 1), "bad-value\ud800"]) {
      await assert.rejects(store.set("k", value), (e: unknown) => e instanceof InvalidArgumentError && (value.length < 4 || !e.message.includes(value)));
    }
    await assert.rejects(store.set("k", "long-enough-value", { hosts: ["1.2.3.4"] }), InvalidArgumentError);
    await assert.rejects(store.set("k", "long-enough-value", { hosts: Array.from({ length: 33 }, (_, i) => `h${i}.example.com`) }), InvalidArgumentError);
    await assert.rejects(stat(dir), { code: "ENOENT" });
    await store.set("k", "x".repeat(MAX_SECRET_VALUE_BYTES));
    assert.equal((await store.get("k"))?.meta.bytes, MAX_SECRET_VALUE_BYTES);
  }));

test("group/world-readable files and directories are refused, naming the file, not the value", () =>
  withStore(async (store, dir) => {
    await store.set("k", "very-secret-value");
    await chmod(join(dir, "k.json"), 0o644);
    for (const op of [store.get("k"), store.list()]) {
      await assert.rejects(op, (e: unknown) => e instanceof AdmissionError && e.message.includes("k.json") && e.message.includes("644") && !e.message.includes("very-secret-value"));
    }
    await chmod(join(dir, "k.json"), 0o600);
    await chmod(dir, 0o755);
    await assert.rejects(store.set("k2", "long-enough-value"), (e: unknown) => e instanceof AdmissionError && e.message.includes("755") && e.hint?.includes("chmod 700") === true);
    await assert.rejects(store.list(), AdmissionError);
    await assert.rejects(store.get("k"), AdmissionError);
  }));

test("symlinked and corrupt secret files are refused without quoting their content", () =>
  withStore(async (store, dir) => {
    await store.set("target", "target-value");
    await symlink(join(dir, "target.json"), join(dir, "link.json"));
    await assert.rejects(store.get("link"), AdmissionError);
    await writeFile(join(dir, "broken.json"), '{"version":1,"value":"leaky-value-123', { mode: 0o600 });
    await assert.rejects(store.get("broken"), (e: unknown) => e instanceof AdmissionError && !e.message.includes("leaky-value-123"));
    const wrongName = { version: 1, name: "other", value: "v-value-long", hosts: [], createdAt: new Date().toISOString(), updatedAt: new Date().toISOString() };
    await writeFile(join(dir, "named.json"), JSON.stringify(wrongName), { mode: 0o600 });
    await assert.rejects(store.get("named"), AdmissionError);
    await writeFile(join(dir, "extra.json"), JSON.stringify({ ...wrongName, name: "extra", more: 1 }), { mode: 0o600 });
    await assert.rejects(store.get("extra"), AdmissionError);
  }));

test("a refused value is not quoted in the refusal", () => {
  for (const value of ["Zq9!", "Zq9!\n", "\nZq9!Zq9!", "Zq9!\0Zq9!"]) {
    const problem = secretValueProblem(value);
    assert.ok(problem !== undefined && !problem.includes("Zq9!"), String(problem));
  }
});

test("property: value rules and newline trim", () => {
  fc.assert(
    fc.property(fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }), (s) => {
      const problem = secretValueProblem(s);
      const ok = Buffer.byteLength(s) >= MIN_SECRET_VALUE_BYTES && !s.includes("\0") && !/^[\r\n]|[\r\n]$/.test(s);
      assert.equal(problem === undefined, ok);
      // The wording is ASCII: a value with a non-ASCII character appears in it only if quoted. (An
      // ASCII value can be a piece of the wording itself, such as "valu".)
      if (problem !== undefined && s.length >= 4 && /[^\x00-\x7f]/.test(s)) assert.ok(!problem.includes(s));
      assert.equal(trimOneNewline(`${s}\n`), s);
    }),
  );
});

test("property: set then get returns the trimmed value", async () => {
  await withStore(async (store) => {
    await fc.assert(
      fc.asyncProperty(
        fc.string({ unit: "grapheme", minLength: 1, maxLength: 30 }).filter((s) => secretValueProblem(s) === undefined),
        async (value) => {
          await store.set("prop", `${value}\n`);
          assert.equal((await store.get("prop"))?.value, value);
        },
      ),
      { numRuns: 40 },
    );
  });
});

test("a value shorter than 8 bytes is refused by set, saying the minimum, with a hint", () =>
  withStore(async (store, dir) => {
    assert.equal(MIN_SECRET_VALUE_BYTES, 8);
    for (const value of ["a", "1234", "hunter2", "hunter2\n", "ab\u00e9d\u00e9"]) {
      await assert.rejects(store.set("short", value), (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError, String(e));
        assert.match(e.message, /^Cannot set secret "short": value is \d bytes, shorter than the minimum of 8: a value this short cannot be redacted safely$/);
        assert.match(e.hint ?? "", /at least 8 bytes/);
        return true;
      });
    }
    await assert.rejects(stat(dir), { code: "ENOENT" });
    // Exactly the minimum, and three 3-byte characters (9 bytes), are accepted.
    assert.equal((await store.set("eight", "12345678")).bytes, 8);
    assert.equal((await store.set("cjk", "\u79d8\u5bc6\u5024")).bytes, 9);
  }));

test("a stored value shorter than 8 bytes (a file written by hand or by an older version) is listed, but never handed out", () =>
  withStore(async (store, dir) => {
    await store.set("ok", "long-enough-value");
    const now = new Date().toISOString();
    await writeFile(join(dir, "old.json"), JSON.stringify({ version: 1, name: "old", value: "abc", hosts: [], createdAt: now, updatedAt: now }), { mode: 0o600 });
    assert.deepEqual((await store.list()).map((m) => [m.name, m.bytes]), [["ok", 17], ["old", 3]]);
    await assert.rejects(store.get("old"), (e: unknown) => {
      assert.ok(e instanceof AdmissionError, String(e));
      assert.match(e.message, /^Cannot use secret "old": stored value is 3 bytes, shorter than the minimum of 8/);
      assert.match(e.hint ?? "", /mvmctl secret set old/);
      return true;
    });
  }));
