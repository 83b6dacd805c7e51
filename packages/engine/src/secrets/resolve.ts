/**
 * Turn a sandbox's secrets spec (env name -> SecretRef) into values, host bindings and
 * placeholders, on the host. Error messages name secrets, hosts, env vars and paths, never values.
 */
import { randomBytes } from "node:crypto";
import { constants as fsc } from "node:fs";
import { open } from "node:fs/promises";
import {
  AbortedError,
  ENV_NAME_PATTERN,
  InvalidArgumentError,
  MAX_SECRET_VALUE_BYTES,
  NotFoundError,
  PolicyDeniedError,
  SecretRef,
  type SecretRefJson,
} from "@mvm/protocol";
import { secretValueProblem, trimOneNewline, type SecretStore } from "./store.js";

/** One secret ready to hand to a sandbox. */
export interface ResolvedSecret {
  /** The sandbox env var it fills. */
  readonly envName: string;
  readonly ref: SecretRefJson;
  /** The real value. Host side only. */
  readonly value: string;
  /** Host patterns the value may be sent to. Empty only for posture "env" without hosts. */
  readonly hosts: readonly string[];
  /** What a mediated sandbox sees instead of the value. Random, never derived from the value. */
  readonly placeholder: string;
}

/** Reads at most `maxBytes + 1` bytes of a regular file (the extra byte reveals oversize files). */
export type SecretFileReader = (path: string, maxBytes: number) => Promise<Buffer>;

export interface ResolveSecretsDeps {
  readonly store: SecretStore;
  /** Host environment for `env` sources. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /** Reader for `file` sources. @default a bounded, non-blocking read of a regular file */
  readonly readFile?: SecretFileReader;
  readonly signal?: AbortSignal;
}

/** A fresh placeholder: "mvm-placeholder-" and 32 random hex characters. */
export function makePlaceholder(): string {
  return `mvm-placeholder-${randomBytes(16).toString("hex")}`;
}

/** Whether every host matched by pattern `inner` is matched by pattern `outer`. */
export function hostPatternCovers(outer: string, inner: string): boolean {
  if (outer === inner) return true;
  if (!outer.startsWith("*.")) return false;
  const suffix = outer.slice(1); // ".example.com"
  // "*.example.com" covers "a.example.com" and "*.a.example.com" (and itself), not "example.com".
  return inner.endsWith(suffix);
}

/** Default file reader: refuses FIFOs, devices and directories, and never blocks on open. */
export const readSecretFile: SecretFileReader = async (path, maxBytes) => {
  const handle = await open(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new Error("not a regular file");
    const buf = Buffer.alloc(maxBytes + 1);
    let filled = 0;
    while (filled < buf.length) {
      const { bytesRead } = await handle.read(buf, filled, buf.length - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return buf.subarray(0, filled);
  } finally {
    await handle.close();
  }
};

function describe(ref: SecretRefJson): string {
  switch (ref.source) {
    case "store":
      return `secret ${JSON.stringify(ref.name)}`;
    case "env":
      return `host env var ${JSON.stringify(ref.name)}`;
    case "file":
      return `file ${JSON.stringify(ref.name)}`;
  }
}

function bindHint(ref: SecretRefJson): string {
  return ref.source === "store"
    ? `mvmctl secret set ${ref.name} --host api.example.com`
    : `give the SecretRef hosts, e.g. { hosts: ["api.example.com"] }`;
}

async function valueOf(envName: string, ref: SecretRefJson, deps: ResolveSecretsDeps): Promise<{ value: string; storeHosts: readonly string[] }> {
  const what = `Cannot resolve secret for ${JSON.stringify(envName)}`;
  let value: string;
  let storeHosts: readonly string[] = [];
  switch (ref.source) {
    case "store": {
      const entry = await deps.store.get(ref.name);
      if (entry === undefined) {
        throw new NotFoundError(`${what}: secret ${JSON.stringify(ref.name)} is not in the secret store`, {
          hint: `mvmctl secret set ${ref.name}`,
        });
      }
      value = entry.value;
      storeHosts = entry.meta.hosts;
      break;
    }
    case "env": {
      const found = (deps.env ?? process.env)[ref.name];
      if (found === undefined) throw new NotFoundError(`${what}: host env var ${JSON.stringify(ref.name)} is not set`);
      value = found;
      break;
    }
    case "file": {
      let raw: Buffer;
      try {
        // Room for a value of the largest size plus a trailing "\r\n".
        raw = await (deps.readFile ?? readSecretFile)(ref.name, MAX_SECRET_VALUE_BYTES + 2);
      } catch (err) {
        const reason = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : "unreadable");
        throw new NotFoundError(`${what}: cannot read file ${JSON.stringify(ref.name)}: ${reason}`, { cause: err });
      }
      if (raw.length > MAX_SECRET_VALUE_BYTES + 2) {
        throw new InvalidArgumentError(`${what}: file ${JSON.stringify(ref.name)} is larger than ${MAX_SECRET_VALUE_BYTES} bytes`);
      }
      try {
        value = trimOneNewline(new TextDecoder("utf-8", { fatal: true }).decode(raw));
      } catch (err) {
        throw new InvalidArgumentError(`${what}: file ${JSON.stringify(ref.name)} is not valid UTF-8`, { cause: err });
      }
      break;
    }
  }
  const problem = secretValueProblem(value);
  if (problem !== undefined) throw new InvalidArgumentError(`${what}: ${describe(ref)}: ${problem}`);
  return { value, storeHosts };
}

function effectiveHosts(envName: string, ref: SecretRefJson, storeHosts: readonly string[]): string[] {
  if (ref.hosts === undefined || ref.hosts.length === 0) return [...storeHosts];
  if (storeHosts.length > 0) {
    for (const host of ref.hosts) {
      if (!storeHosts.some((pattern) => hostPatternCovers(pattern, host))) {
        throw new PolicyDeniedError(
          `Cannot bind secret ${JSON.stringify(ref.name)} (for ${JSON.stringify(envName)}) to host ${JSON.stringify(host)}: the secret store allows only ${storeHosts.map((h) => JSON.stringify(h)).join(", ")}`,
          { hint: `mvmctl secret set ${ref.name} --host ${host} (with its current hosts) to allow it` },
        );
      }
    }
  }
  return [...new Set(ref.hosts)];
}

/**
 * Resolve every secret of `spec` on the host.
 *
 * Effective hosts are the ref's hosts if given, else the store entry's hosts; when both exist,
 * each ref host must be covered by a store host pattern (PolicyDeniedError otherwise). A mediated
 * secret bound to no host is refused (InvalidArgumentError). A missing store secret, env var or
 * unreadable file is a NotFoundError.
 *
 * @example
 * const secrets = await resolveSecrets({ OPENAI_API_KEY: SecretRef.from("openai-key").toJSON() }, { store });
 */
export async function resolveSecrets(spec: Readonly<Record<string, SecretRefJson>>, deps: ResolveSecretsDeps): Promise<ResolvedSecret[]> {
  const resolved: ResolvedSecret[] = [];
  for (const [envName, refJson] of Object.entries(spec)) {
    if (deps.signal?.aborted === true) throw new AbortedError("Cannot resolve secrets: aborted", { cause: deps.signal.reason });
    if (!ENV_NAME_PATTERN.test(envName)) {
      throw new InvalidArgumentError(`Cannot resolve secret for ${JSON.stringify(envName)}: not a valid environment variable name`);
    }
    const ref = SecretRef.fromJSON(refJson).toJSON();
    const { value, storeHosts } = await valueOf(envName, ref, deps);
    const hosts = effectiveHosts(envName, ref, storeHosts);
    if (ref.posture === "mediated" && hosts.length === 0) {
      throw new InvalidArgumentError(
        `Cannot resolve secret for ${JSON.stringify(envName)}: ${describe(ref)} is bound to no host: a mediated secret is only sent to the hosts it is bound to`,
        { hint: bindHint(ref) },
      );
    }
    resolved.push({ envName, ref, value, hosts, placeholder: makePlaceholder() });
  }
  return resolved;
}
