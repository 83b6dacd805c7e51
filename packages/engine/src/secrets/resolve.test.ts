import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { AbortedError, AdmissionError, InvalidArgumentError, MAX_SECRET_VALUE_BYTES, NotFoundError, PolicyDeniedError, SecretRef } from "@mvm/protocol";
import { hostPatternCovers, makePlaceholder, resolveSecrets } from "./resolve.js";
import { SecretStore } from "./store.js";

async function withStore(fn: (store: SecretStore, root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "mvm-resolve-"));
  try {
    await fn(new SecretStore(join(root, "secrets")), root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const noValue = (value: string) => (e: unknown) => e instanceof Error && !e.message.includes(value) && !(e as { hint?: string }).hint?.includes(value);

test("placeholders are random, fixed-format and unrelated to values", () => {
  const a = makePlaceholder();
  assert.match(a, /^mvm-placeholder-[0-9a-f]{32}$/);
  assert.notEqual(a, makePlaceholder());
});

test("store secret: hosts from the store, or narrowed by the ref", () =>
  withStore(async (store) => {
    await store.set("openai-key", "sk-store-value", { hosts: ["api.openai.com", "*.example.com"] });
    const [one] = await resolveSecrets({ OPENAI_API_KEY: SecretRef.from("openai-key").toJSON() }, { store });
    assert.equal(one?.envName, "OPENAI_API_KEY");
    assert.equal(one?.value, "sk-store-value");
    assert.deepEqual(one?.hosts, ["api.openai.com", "*.example.com"]);
    assert.match(one?.placeholder ?? "", /^mvm-placeholder-[0-9a-f]{32}$/);
    assert.equal(one?.ref.posture, "mediated");
    const [narrow] = await resolveSecrets(
      { K: SecretRef.from("openai-key", { hosts: ["a.example.com", "*.b.example.com"] }).toJSON() },
      { store },
    );
    assert.deepEqual(narrow?.hosts, ["a.example.com", "*.b.example.com"]);
  }));

test("a ref host outside the store's hosts is denied, naming host and secret", () =>
  withStore(async (store) => {
    await store.set("gh", "ghp_value_1234", { hosts: ["api.github.com"] });
    await assert.rejects(
      resolveSecrets({ GH_TOKEN: SecretRef.from("gh", { hosts: ["evil.example.com"] }).toJSON() }, { store }),
      (e: unknown) => e instanceof PolicyDeniedError && e.message.includes('"evil.example.com"') && e.message.includes('"gh"') && noValue("ghp_value_1234")(e),
    );
  }));

test("a mediated secret bound to no host is refused with a hint; env posture may have none", () =>
  withStore(async (store) => {
    await store.set("loose", "loose-value");
    await assert.rejects(
      resolveSecrets({ X: SecretRef.from("loose").toJSON() }, { store }),
      (e: unknown) =>
        e instanceof InvalidArgumentError &&
        e.message.includes('secret "loose" is bound to no host') &&
        e.hint === "mvmctl secret set loose --host api.example.com" &&
        noValue("loose-value")(e),
    );
    const [plain] = await resolveSecrets({ X: SecretRef.from("loose", { posture: "env" }).toJSON() }, { store });
    assert.deepEqual(plain?.hosts, []);
    const [bound] = await resolveSecrets({ X: SecretRef.from("loose", { hosts: ["api.example.com"] }).toJSON() }, { store });
    assert.deepEqual(bound?.hosts, ["api.example.com"]);
  }));

test("missing store secret, env var and file are NotFoundError with hints", () =>
  withStore(async (store, root) => {
    await assert.rejects(
      resolveSecrets({ X: SecretRef.from("absent", { hosts: ["a.example.com"] }).toJSON() }, { store }),
      (e: unknown) => e instanceof NotFoundError && e.hint === "mvmctl secret set absent",
    );
    await assert.rejects(resolveSecrets({ X: SecretRef.fromEnv("NOPE_VAR", { posture: "env" }).toJSON() }, { store, env: {} }), NotFoundError);
    await assert.rejects(resolveSecrets({ X: SecretRef.fromFile(join(root, "none"), { posture: "env" }).toJSON() }, { store }), NotFoundError);
    await assert.rejects(resolveSecrets({ X: SecretRef.fromFile(root, { posture: "env" }).toJSON() }, { store }), NotFoundError);
  }));

test("env and file sources follow the value rules; files drop one trailing newline", () =>
  withStore(async (store, root) => {
    const env = { TOKEN_SRC: "env-value-123", EMPTY: "", NEWLINE: "v-long-value\n" };
    const [e] = await resolveSecrets({ T: SecretRef.fromEnv("TOKEN_SRC", { hosts: ["a.example.com"] }).toJSON() }, { store, env });
    assert.equal(e?.value, "env-value-123");
    await assert.rejects(resolveSecrets({ T: SecretRef.fromEnv("EMPTY", { posture: "env" }).toJSON() }, { store, env }), InvalidArgumentError);
    await assert.rejects(resolveSecrets({ T: SecretRef.fromEnv("NEWLINE", { posture: "env" }).toJSON() }, { store, env }), InvalidArgumentError);

    const path = join(root, "pat");
    await writeFile(path, "file-value-456\n");
    const [f] = await resolveSecrets({ P: SecretRef.fromFile(path, { hosts: ["a.example.com"] }).toJSON() }, { store });
    assert.equal(f?.value, "file-value-456");
    await writeFile(path, "x".repeat(MAX_SECRET_VALUE_BYTES + 3));
    await assert.rejects(resolveSecrets({ P: SecretRef.fromFile(path, { posture: "env" }).toJSON() }, { store }), InvalidArgumentError);
    await writeFile(path, Buffer.from([0x61, 0xff, 0x62]));
    await assert.rejects(resolveSecrets({ P: SecretRef.fromFile(path, { posture: "env" }).toJSON() }, { store }), InvalidArgumentError);
    await writeFile(path, "has\0nul-value");
    await assert.rejects(resolveSecrets({ P: SecretRef.fromFile(path, { posture: "env" }).toJSON() }, { store }), noValue("has\0nul-value"));
  }));

test("every source refuses a value shorter than 8 bytes, naming the source and the minimum, never the value", () =>
  withStore(async (store, root) => {
    const minimum = /shorter than the minimum of 8: a value this short cannot be redacted safely/;
    const short = (where: RegExp) => (e: unknown) =>
      e instanceof InvalidArgumentError && where.test(e.message) && minimum.test(e.message) && noValue("pin-42")(e);
    const env = { SHORT_PIN: "pin-42" };
    await assert.rejects(resolveSecrets({ T: SecretRef.fromEnv("SHORT_PIN", { posture: "env" }).toJSON() }, { store, env }), short(/host env var "SHORT_PIN": value is 6 bytes/));
    await assert.rejects(resolveSecrets({ T: SecretRef.fromEnv("SHORT_PIN", { hosts: ["a.example.com"] }).toJSON() }, { store, env }), short(/host env var "SHORT_PIN"/));
    const path = join(root, "pin");
    await writeFile(path, "pin-42\n");
    await assert.rejects(resolveSecrets({ P: SecretRef.fromFile(path, { posture: "env" }).toJSON() }, { store }), short(/file ".*pin": value is 6 bytes/));
    // A short value already in the store (written by hand or an older version) is refused too.
    await store.set("pin", "long-enough-value");
    const file = join(store.dir, "pin.json");
    const { readFile } = await import("node:fs/promises");
    await writeFile(file, (await readFile(file, "utf8")).replace("long-enough-value", "pin-42"), { mode: 0o600 });
    await assert.rejects(
      resolveSecrets({ P: SecretRef.from("pin", { posture: "env" }).toJSON() }, { store }),
      (e: unknown) => e instanceof AdmissionError && /stored value is 6 bytes, shorter than the minimum of 8/.test(e.message) && noValue("pin-42")(e),
    );
    // Eight bytes pass from every source.
    const [ok] = await resolveSecrets({ T: SecretRef.fromEnv("EIGHT", { posture: "env" }).toJSON() }, { store, env: { EIGHT: "12345678" } });
    assert.equal(ok?.value, "12345678");
  }));

test("a FIFO secret file is refused without blocking", () =>
  withStore(async (store, root) => {
    const fifo = join(root, "fifo");
    execFileSync("mkfifo", [fifo]);
    await assert.rejects(resolveSecrets({ P: SecretRef.fromFile(fifo, { posture: "env" }).toJSON() }, { store }), (e: unknown) => e instanceof NotFoundError && e.message.includes("not a regular file"));
  }));

test("bad refs and env names are refused; an aborted signal stops resolution", () =>
  withStore(async (store) => {
    await assert.rejects(resolveSecrets({ "1BAD": SecretRef.from("k", { posture: "env" }).toJSON() }, { store }), InvalidArgumentError);
    await assert.rejects(resolveSecrets({ X: { kind: "secret-ref", source: "store", name: "UP", posture: "env" } }, { store }), InvalidArgumentError);
    await assert.rejects(resolveSecrets({ X: SecretRef.from("k", { posture: "env" }).toJSON() }, { store, signal: AbortSignal.abort() }), AbortedError);
  }));

const label = fc.stringMatching(/^[a-z][a-z0-9]{0,3}$/);
const name = fc.array(label, { minLength: 1, maxLength: 4 }).map((ls) => ls.join("."));
const pattern = fc.oneof(name, fc.array(label, { minLength: 2, maxLength: 4 }).map((ls) => `*.${ls.join(".")}`));

test("property: hostPatternCovers means every host of the inner pattern matches the outer", () => {
  const matches = (p: string, host: string): boolean => (p.startsWith("*.") ? host.endsWith(p.slice(1)) : host === p);
  fc.assert(
    fc.property(pattern, pattern, label, (outer, inner, sub) => {
      const sample = inner.startsWith("*.") ? `${sub}.${inner.slice(2)}` : inner;
      if (hostPatternCovers(outer, inner)) assert.ok(matches(outer, sample), `${outer} ⊇ ${inner} but not ${sample}`);
      if (!inner.startsWith("*.")) assert.equal(hostPatternCovers(outer, inner), matches(outer, inner));
      assert.ok(hostPatternCovers(inner, inner));
      if (outer.startsWith("*.") === false && inner.startsWith("*.")) assert.equal(hostPatternCovers(outer, inner), false);
    }),
  );
});
