/**
 * Secret-hygiene warnings: spot argv items and env vars that look like they carry a secret in
 * plain text, so the caller can be told to pass a SecretRef. Heuristic and name-based; messages
 * name the env var, flag or argv index and never include a value.
 *
 * Which names look secret is protocol/src/secret-names.ts.
 */
import { PolicyDeniedError, STRICT_SECRETS_ENV, envFlagOn, looksSecretName } from "@mvm/protocol";

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

const TRIVIAL_VALUES = new Set(["true", "false", "yes", "no", "none", "null", "on", "off"]);
const ENV_ASSIGNMENT = /^([A-Za-z_][A-Za-z0-9_]*)=/;
const HEADER = /^([A-Za-z0-9-]{1,64}):\s*\S/;
const HINT = "pass it as a SecretRef";

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
