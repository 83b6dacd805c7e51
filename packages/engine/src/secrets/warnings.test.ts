import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { PolicyDeniedError, looksSecretName, nameWords } from "@mvm/protocol";
import { checkSecretHygiene, secretHygieneWarnings } from "./warnings.js";

test("names: whole words only; reference words do not warn", () => {
  const positives = [
    "TOKEN", "GH_TOKEN", "GITHUB_TOKEN", "DB_PASSWORD", "MYSQL_PASSWD", "AWS_SECRET_ACCESS_KEY", "API_KEY", "OPENAI_API_KEY",
    "X_APIKEY", "STRIPE_API-KEY", "GOOGLE_CREDENTIALS", "SSH_PRIVATE_KEY", "HF_AUTH_TOKEN", "--password", "--api-key", "--apiKey",
    "--private-key", "githubToken", "AccessTokens", "X-Auth-Token", "bearer", "client.secret",
  ];
  const negatives = [
    "TOKENIZER_PATH", "PATH", "HOME", "KEY", "APIS", "PASSWORDLESS", "SECRETARY", "MAX_TOKENS_PER_SEC_LIMIT", "TOKEN_FILE",
    "GITHUB_TOKEN_PATH", "SECRET_NAME", "MAX_TOKENS", "PASSWORD_FILE", "TOKEN_URL", "--password-stdin", "--no-password", "--secret-id",
    "KEYRING", "APIKEYS_DIR", "PRIVATE", "AUTHOR_TOKENIZER",
  ];
  for (const n of positives) assert.equal(looksSecretName(n), true, n);
  for (const n of negatives) assert.equal(looksSecretName(n), false, n);
  assert.deepEqual(nameWords("XMLHttpAPIKey_v2"), ["xml", "http", "api", "key", "v2"]);
});

test("argv: flags, NAME=value items, headers and Bearer values warn, with the index", () => {
  const argv = [
    "tool", "--password=hunter22", "--api-key", "sk-abcdef", "--verbose", "GH_TOKEN=ghp_123456", "-H", "Authorization: Bearer abc.def",
    "Bearer abc.def", "--token-file", "/run/secrets/t", "--password", "--next", "--token=", "--secret=$SECRET", "X=1",
  ];
  const warnings = secretHygieneWarnings({ argv });
  assert.deepEqual(
    warnings.map((w) => [w.where, w.index, w.name]),
    [
      ["argv", 1, "--password"],
      ["argv", 3, "--api-key"],
      ["argv", 5, "GH_TOKEN"],
      ["argv", 7, "Authorization"],
      ["argv", 8, "Bearer"],
    ],
  );
  for (const w of warnings) {
    for (const v of ["hunter22", "sk-abcdef", "ghp_123456", "abc.def"]) assert.ok(!w.message.includes(v), w.message);
    assert.ok(w.message.includes(`argv[${w.index ?? -1}]`) && w.message.includes("SecretRef"));
  }
});

test("argv: ordinary commands do not warn", () => {
  for (const argv of [
    ["python", "train.py", "--max-tokens", "512"],
    ["git", "clone", "https://example.com/repo"],
    ["docker", "login", "-u", "me", "--password-stdin", "registry.example.com"],
    ["echo", "token"],
    ["env", "TOKENIZERS_PARALLELISM=false", "python"],
    ["sh", "-c", "echo hi"],
    ["curl", "-H", "Accept: application/json"],
  ]) {
    assert.deepEqual(secretHygieneWarnings({ argv }), [], argv.join(" "));
  }
});

test("env: secret-looking names with real values warn; exempt, empty and trivial values do not", () => {
  const env = { GITHUB_TOKEN: "ghp_xyz123", DB_PASSWORD: "pw-4567", HOME: "/root", TOKEN: "", DEBUG_TOKEN: "true", FROM_REF: "x", API_KEY: "mvm-placeholder-0123", OPENAI_API_KEY: "sk1" };
  const warnings = secretHygieneWarnings({ env, exemptEnv: new Set(["DB_PASSWORD"]) });
  assert.deepEqual(warnings.map((w) => [w.where, w.name]), [["env", "GITHUB_TOKEN"]]);
  assert.equal(warnings[0]?.index, undefined);
  assert.ok(!warnings[0]?.message.includes("ghp_xyz123"));
});

test("strict mode throws PolicyDeniedError naming the item, with the SecretRef hint", () => {
  assert.throws(
    () => checkSecretHygiene({ env: { GH_TOKEN: "ghp_abcdef" } }, { strict: true }),
    (e: unknown) => e instanceof PolicyDeniedError && e.message.includes('"GH_TOKEN"') && !e.message.includes("ghp_abcdef") && e.hint?.includes("pass it as a SecretRef") === true,
  );
  assert.throws(
    () => checkSecretHygiene({ argv: ["x", "--api-key", "k-123456"], env: { A_TOKEN: "zzzzzz" } }, { strict: true }),
    (e: unknown) => e instanceof PolicyDeniedError && e.message.includes("argv[2]") && e.message.includes('"--api-key"') && e.message.includes("1 more"),
  );
  assert.deepEqual(checkSecretHygiene({ env: { HOME: "/root" } }, { strict: true }), []);
  assert.equal(checkSecretHygiene({ env: { GH_TOKEN: "ghp_abcdef" } }, { strict: false }).length, 1);
});

test("strict mode defaults to MVM_STRICT_SECRETS=1", () => {
  const before = process.env["MVM_STRICT_SECRETS"];
  try {
    process.env["MVM_STRICT_SECRETS"] = "1";
    assert.throws(() => checkSecretHygiene({ env: { GH_TOKEN: "ghp_abcdef" } }), PolicyDeniedError);
    process.env["MVM_STRICT_SECRETS"] = "0";
    assert.equal(checkSecretHygiene({ env: { GH_TOKEN: "ghp_abcdef" } }).length, 1);
  } finally {
    if (before === undefined) delete process.env["MVM_STRICT_SECRETS"];
    else process.env["MVM_STRICT_SECRETS"] = before;
  }
});

// Values carry "§", which no name or fixed message text contains, so a leak is detectable.
// Values the warnings judge: at least 4 characters once trimmed (shorter ones are not flagged by design).
const valueArb = fc
  .string({ minLength: 3, maxLength: 20 })
  .map((s) => `§${s}`)
  .filter((v) => v.trim().length >= 4);
const secretNameArb = fc.constantFrom("GH_TOKEN", "DB_PASSWORD", "API_KEY", "client_secret", "AUTH_TOKEN", "MY_CREDENTIALS");

test("property: warnings and strict errors never contain the values", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(secretNameArb, valueArb), { minLength: 1, maxLength: 5 }),
      fc.array(fc.oneof(valueArb, secretNameArb.map((n) => `--${n.toLowerCase().replace(/_/g, "-")}`), fc.constant("-H")), { maxLength: 10 }),
      (envPairs, argvParts) => {
        const env = Object.fromEntries(envPairs);
        const argv = [
          ...argvParts,
          ...envPairs.map(([n, v]) => `${n}=${v}`),
          ...envPairs.map(([n, v]) => `--${n}=${v}`),
          ...envPairs.map(([, v]) => `Bearer ${v}`),
          ...envPairs.map(([, v]) => `Authorization: ${v}`),
        ];
        const warnings = secretHygieneWarnings({ argv, env });
        assert.ok(warnings.length >= envPairs.length * 4);
        for (const w of warnings) assert.ok(!w.message.includes("§") && !w.name.includes("§"), w.message);
        try {
          checkSecretHygiene({ argv, env }, { strict: true });
          assert.fail("strict mode must throw");
        } catch (e) {
          assert.ok(e instanceof PolicyDeniedError && !e.message.includes("§") && !(e.hint ?? "").includes("§"));
        }
      },
    ),
  );
});
