/**
 * Secret-hygiene warnings: spot argv items and env vars that look like they carry a secret in
 * plain text, so the caller can be told to pass a SecretRef. Heuristic and name-based; messages
 * name the env var, flag or argv index and never include a value.
 *
 * A name looks secret when one of its words (split at `_`, `-`, `.`, `:`, spaces and camelCase
 * humps, case-insensitive) is token(s), password(s), passwd, secret(s), apikey, credential(s) or
 * bearer, or two adjacent words are api+key, private+key or auth+token. Whole words only:
 * `TOKENIZER_PATH` does not match, `GH_TOKEN`, `TOKEN` and `apiKey` do. Names that also hold a
 * word saying the value is a reference (file, path, url, id, name, ...) do not warn:
 * `TOKEN_FILE=/run/x` is the recommended practice, not a leak, and `MAX_TOKENS=4096` is a setting.
 */
import { PolicyDeniedError, STRICT_SECRETS_ENV, envFlagOn } from "@mvm/protocol";

/** One plain-text secret suspect. Never holds the value. */
export interface SecretHygieneWarning {
  readonly where: "argv" | "env";
  /** Index into argv of the item holding the value (argv only). */
  readonly index?: number;
  /** The env var, flag (e.g. "--api-key"), header name or "Bearer" that gave it away. */
  readonly name: string;
  readonly message: string;
}

export interface SecretHygieneInput {
  readonly argv?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** Env names filled from SecretRefs: they never warn. */
  readonly exemptEnv?: ReadonlySet<string>;
}

const SECRET_WORDS = new Set([
  "token", "tokens", "password", "passwords", "passwd", "secret", "secrets", "apikey", "credential", "credentials", "bearer",
]);
const SECRET_PAIRS = new Set(["api key", "private key", "auth token"]);
// Words saying the value points at or describes a secret rather than being one.
const REFERENCE_WORDS = new Set([
  "file", "files", "path", "dir", "stdin", "fd", "env", "var", "prompt", "helper", "cmd", "command", "id", "name", "type",
  "url", "uri", "endpoint", "ttl", "expiry", "expires", "length", "store", "manager", "max", "min", "limit", "count", "num", "size",
]);
const TRIVIAL_VALUES = new Set(["true", "false", "yes", "no", "none", "null", "on", "off"]);
const ENV_ASSIGNMENT = /^([A-Za-z_][A-Za-z0-9_]*)=/;
const HEADER = /^([A-Za-z0-9-]{1,64}):\s*\S/;
const HINT = "pass it as a SecretRef";

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

/** Whether `value` could be a secret at all: not empty, short, a boolean or a `$VAR` reference. */
function couldBeSecretValue(value: string): boolean {
  const v = value.trim();
  return v.length >= 4 && !v.startsWith("$") && !v.startsWith("mvm-placeholder-") && !TRIVIAL_VALUES.has(v.toLowerCase());
}

function argvWarning(index: number, name: string, what: string): SecretHygieneWarning {
  return { where: "argv", index, name, message: `Argument argv[${index}] looks like a secret in plain text (${what}): ${HINT}` };
}

function argvWarnings(argv: readonly string[]): SecretHygieneWarning[] {
  const warnings: SecretHygieneWarning[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (/^bearer\s+\S/i.test(arg)) {
      warnings.push(argvWarning(i, "Bearer", "a bearer credential"));
      continue;
    }
    if (arg.startsWith("-")) {
      const eq = arg.indexOf("=");
      const flag = eq === -1 ? arg : arg.slice(0, eq);
      if (!flag.startsWith("--") || !looksSecretName(flag)) continue;
      if (eq !== -1) {
        if (couldBeSecretValue(arg.slice(eq + 1))) warnings.push(argvWarning(i, flag, `value of flag ${JSON.stringify(flag)}`));
        continue;
      }
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith("-") && couldBeSecretValue(next)) {
        warnings.push(argvWarning(i + 1, flag, `value of flag ${JSON.stringify(flag)}`));
        i += 1;
      }
      continue;
    }
    const assignment = ENV_ASSIGNMENT.exec(arg);
    if (assignment?.[1] !== undefined) {
      const name = assignment[1];
      if (looksSecretName(name) && couldBeSecretValue(arg.slice(name.length + 1))) {
        warnings.push(argvWarning(i, name, `assignment to ${JSON.stringify(name)}`));
      }
      continue;
    }
    const header = HEADER.exec(arg);
    if (header?.[1] !== undefined) {
      const name = header[1];
      const value = arg.slice(arg.indexOf(":") + 1);
      if ((name.toLowerCase() === "authorization" || looksSecretName(name)) && couldBeSecretValue(value)) {
        warnings.push(argvWarning(i, name, `header ${JSON.stringify(name)}`));
      }
    }
  }
  return warnings;
}

/**
 * Warnings for argv items and env vars that look like plain-text secrets.
 *
 * @example
 * secretHygieneWarnings({ argv: ["curl", "-H", "Authorization: Bearer x"], env: { GH_TOKEN: "ghp_…" } });
 * // [{ where: "argv", index: 2, name: "Authorization", … }, { where: "env", name: "GH_TOKEN", … }]
 */
export function secretHygieneWarnings(input: SecretHygieneInput): SecretHygieneWarning[] {
  const warnings = argvWarnings(input.argv ?? []);
  for (const [name, value] of Object.entries(input.env ?? {})) {
    if (input.exemptEnv?.has(name) === true || !looksSecretName(name) || !couldBeSecretValue(value)) continue;
    warnings.push({ where: "env", name, message: `Env var ${JSON.stringify(name)} looks like a secret in plain text: ${HINT}` });
  }
  return warnings;
}

/**
 * `secretHygieneWarnings`, and in strict mode a PolicyDeniedError when there is any.
 *
 * @param options.strict refuse instead of warning. @default MVM_STRICT_SECRETS is "1" or "true"
 *   (the engine passes the stricter of its own setting and the request's)
 */
export function checkSecretHygiene(input: SecretHygieneInput, options: { strict?: boolean } = {}): SecretHygieneWarning[] {
  const warnings = secretHygieneWarnings(input);
  const strict = options.strict ?? envFlagOn(process.env[STRICT_SECRETS_ENV]);
  const first = warnings[0];
  if (strict && first !== undefined) {
    const where = first.where === "env" ? `env var ${JSON.stringify(first.name)}` : `argv[${first.index ?? 0}] (${JSON.stringify(first.name)})`;
    const more = warnings.length > 1 ? ` and ${warnings.length - 1} more` : "";
    throw new PolicyDeniedError(`Refusing a plain-text secret in ${where}${more}: strict secret mode is on`, {
      hint: `${HINT} (strict mode: MVM_STRICT_SECRETS=1)`,
    });
  }
  return warnings;
}
