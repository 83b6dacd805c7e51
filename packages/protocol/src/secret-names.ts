/**
 * Whether a name (an env var, flag, header or function argument name) looks like it names a
 * secret value: the one rule behind the engine's plain-text secret warnings and the SDK's
 * secret-named function arguments.
 *
 * A name looks secret when one of its words (split at `_`, `-`, `.`, `:`, spaces and camelCase
 * humps, case-insensitive) is token(s), password(s), passwd, secret(s), apikey, credential(s) or
 * bearer, or two adjacent words are api+key, private+key or auth+token. Whole words only:
 * `TOKENIZER_PATH` does not match, `GH_TOKEN`, `TOKEN` and `apiKey` do. Names that also hold a
 * word saying the value is a reference (file, path, url, id, name, ...) do not:
 * `TOKEN_FILE=/run/x` is the recommended practice, not a leak, and `MAX_TOKENS=4096` is a setting.
 */

const SECRET_WORDS = new Set([
  "token", "tokens", "password", "passwords", "passwd", "secret", "secrets", "apikey", "credential", "credentials", "bearer",
]);
const SECRET_PAIRS = new Set(["api key", "private key", "auth token"]);
// Words saying the value points at or describes a secret rather than being one.
const REFERENCE_WORDS = new Set([
  "file", "files", "path", "dir", "stdin", "fd", "env", "var", "prompt", "helper", "cmd", "command", "id", "name", "type",
  "url", "uri", "endpoint", "ttl", "expiry", "expires", "length", "store", "manager", "max", "min", "limit", "count", "num", "size",
]);

/** Lower-case words of a name: split at separators and camelCase humps. */
export function nameWords(name: string): string[] {
  return name
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1 $2")
    .split(/[^A-Za-z0-9]+/)
    .filter((w) => w !== "")
    .map((w) => w.toLowerCase());
}

/** Whether `name` (an env var, flag or header name) looks like it names a secret value. */
export function looksSecretName(name: string): boolean {
  const words = nameWords(name);
  if (words[0] === "no" || words.some((w) => REFERENCE_WORDS.has(w))) return false;
  return words.some((w, i) => SECRET_WORDS.has(w) || SECRET_PAIRS.has(`${w} ${words[i + 1] ?? ""}`));
}
