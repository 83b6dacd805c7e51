/**
 * Flags that set a sandbox's egress policy, secrets and published ports, and their converters.
 * `--allow-host api.example.com` (HTTPS, port 443), `--allow-host example.com:80` (plain HTTP),
 * `--allow-host db.example.com:5432` (any TCP), `--allow-cidr 203.0.113.0/24:443,8443`.
 */
import { InvalidArgumentError, NetworkPolicy, SecretRef, type NetworkPolicyJson, type PortSpec, type SecretRefJson } from "@mvm/protocol";
import type { FlagSpec, RawArgs } from "./command.js";
import { listFlag } from "./flags.js";
import { UsageError } from "./usage-error.js";

/** Flags that shape the network of a sandbox (also the flags of `mvmctl network set`). */
export const POLICY_FLAGS = {
  "allow-host": {
    type: "string",
    multiple: true,
    valueName: "HOST[:PORT]",
    description: "Allow egress to HOST (wildcards like *.example.com): HTTPS when PORT is absent or 443, HTTP for 80, else any TCP (repeatable)",
  },
  "allow-cidr": {
    type: "string",
    multiple: true,
    valueName: "CIDR:PORTS",
    description: "Allow egress to addresses in CIDR on PORTS (e.g. 203.0.113.0/24:443,8443 or ...:any) (repeatable)",
  },
} as const satisfies Record<string, FlagSpec>;

export const NETWORK_FLAGS = {
  ...POLICY_FLAGS,
  secret: {
    type: "string",
    multiple: true,
    valueName: "ENV=NAME",
    description: "Fill ENV from the stored secret NAME; the sandbox sees only a placeholder that the gateway swaps on requests to NAME's hosts (repeatable)",
  },
  "secret-env": {
    type: "string",
    multiple: true,
    valueName: "ENV=NAME",
    description: "Fill ENV with the plain value of the stored secret NAME: the sandbox can read it (repeatable; recorded as posture env)",
  },
  publish: {
    type: "string",
    multiple: true,
    valueName: "GUEST[:HOST]",
    description: "Publish guest port GUEST on 127.0.0.1:HOST of the engine's host (any free port when HOST is absent) (repeatable)",
  },
} as const satisfies Record<string, FlagSpec>;

function bad(flag: string, value: string, why: string, cause?: unknown): UsageError {
  return new UsageError(`Invalid value "${value}" for --${flag}: ${why}`, cause === undefined ? {} : { cause });
}

function port(flag: string, item: string, text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) throw bad(flag, item, "a port is a number from 1 to 65535");
  return Number(text);
}

/** The policy the --allow-* flags describe, or undefined when none was given. */
export function policyFrom(raw: RawArgs): NetworkPolicyJson | undefined {
  const hosts = listFlag(raw, "allow-host");
  const cidrs = listFlag(raw, "allow-cidr");
  if (hosts.length === 0 && cidrs.length === 0) return undefined;
  let policy = NetworkPolicy.denyByDefault();
  for (const item of hosts) {
    const colon = item.lastIndexOf(":");
    const host = colon >= 0 ? item.slice(0, colon) : item;
    const p = colon >= 0 ? port("allow-host", item, item.slice(colon + 1)) : 443;
    try {
      policy = p === 443 ? policy.allowHttps(host) : p === 80 ? policy.allowHttp(host) : policy.allowTcp(host, p);
    } catch (err) {
      throw bad("allow-host", item, err instanceof InvalidArgumentError ? err.message : "not a host name", err);
    }
  }
  for (const item of cidrs) {
    const colon = item.lastIndexOf(":");
    if (colon < 0 || !item.slice(0, colon).includes("/")) throw bad("allow-cidr", item, "expected CIDR:PORTS, e.g. 203.0.113.0/24:443");
    const portsText = item.slice(colon + 1);
    const ports = portsText === "any" ? "any" : portsText.split(",").map((p) => port("allow-cidr", item, p));
    try {
      policy = policy.allowCidr(item.slice(0, colon), ports);
    } catch (err) {
      throw bad("allow-cidr", item, err instanceof InvalidArgumentError ? err.message : "not a CIDR", err);
    }
  }
  return policy.toJSON();
}

/** The secrets the --secret / --secret-env flags name, or undefined when none. */
export function secretsFrom(raw: RawArgs): Record<string, SecretRefJson> | undefined {
  const out: Record<string, SecretRefJson> = {};
  for (const [flag, posture] of [["secret", "mediated"], ["secret-env", "env"]] as const) {
    for (const item of listFlag(raw, flag)) {
      const eq = item.indexOf("=");
      if (eq <= 0) throw bad(flag, item, "expected ENV=NAME");
      const env = item.slice(0, eq);
      if (!/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(env)) throw bad(flag, item, "an environment name is letters, digits and _, not starting with a digit");
      if (out[env] !== undefined) throw bad(flag, item, `"${env}" is given twice`);
      try {
        out[env] = SecretRef.from(item.slice(eq + 1), { posture }).toJSON();
      } catch (err) {
        throw bad(flag, item, err instanceof InvalidArgumentError ? err.message : "not a secret name", err);
      }
    }
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/** The ports the --publish flags name, or undefined when none. */
export function portsFrom(raw: RawArgs): PortSpec[] | undefined {
  const list = listFlag(raw, "publish");
  if (list.length === 0) return undefined;
  return list.map((item) => {
    const [guest, host, ...rest] = item.split(":");
    if (guest === undefined || rest.length > 0) throw bad("publish", item, "expected GUEST or GUEST:HOST");
    return host === undefined ? { guest: port("publish", item, guest) } : { guest: port("publish", item, guest), host: port("publish", item, host) };
  });
}
