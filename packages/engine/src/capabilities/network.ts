/** Networking and secrets: a sandbox's egress policy and network events, the host's secret store. */
import {
  NetworkPolicySchema,
  NotFoundError,
  PortSpec,
  canonicalJson,
  type CallOptions,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type SandboxInfo,
  type SecretMeta,
} from "@mvm/protocol";
import { AuditEventSchema, sha256Hex, type AuditEvent } from "../audit/entry.js";
import type { NetworkTally } from "../egress/sandbox-network.js";
import { liveSandbox, parse, receiptFor, type EngineCore } from "./core.js";

export async function setNetworkPolicy(core: EngineCore, id: string, policy: NetworkPolicyJson): Promise<SandboxInfo> {
  const parsed = parse(NetworkPolicySchema, policy, "network policy");
  const sandbox = liveSandbox(core, id);
  const previousDigest = sha256Hex(canonicalJson(sandbox.network.policy));
  sandbox.network.setPolicy(parsed);
  const entry = await core.gate.record({
    type: "policy.changed",
    policyId: `network:${id}`,
    previousDigest,
    policyDigest: sha256Hex(canonicalJson(parsed)),
  });
  const receipt = receiptFor(sandbox.info, entry);
  sandbox.info = { ...sandbox.info, network: sandbox.network.summary(), ...(receipt ? { receipt } : {}) };
  return sandbox.info;
}

/** Publishes a guest port of a live sandbox on host loopback; a new publish is recorded as `port.published`. */
export async function publishPort(core: EngineCore, id: string, port: PortSpec): Promise<SandboxInfo> {
  const spec = parse(PortSpec, port, "port");
  const sandbox = liveSandbox(core, id);
  const published = await sandbox.network.publish(spec);
  sandbox.info = { ...sandbox.info, ports: sandbox.network.publishedPorts() };
  if (!published.added) return sandbox.info;
  const entry = await core.gate.record({ type: "port.published", sandboxId: id, guest: published.guest, host: published.host });
  const receipt = receiptFor(sandbox.info, entry);
  if (receipt) sandbox.info = { ...sandbox.info, receipt };
  return sandbox.info;
}

export async function networkEvents(core: EngineCore, id: string, options: CallOptions & { after?: number; limit?: number } = {}): Promise<NetworkEventsPage> {
  const network = core.live.get(id)?.network ?? core.stoppedNetworks.get(id);
  if (!network) throw new NotFoundError(`Sandbox "${id}" not found`);
  return network.events(options.after ?? 0, options.limit);
}

export function listSecrets(core: EngineCore): Promise<SecretMeta[]> {
  return core.secrets.list();
}

export function setSecret(core: EngineCore, name: string, value: string, options: CallOptions & { hosts?: readonly string[] } = {}): Promise<SecretMeta> {
  return core.secrets.set(name, value, options.hosts ? { hosts: options.hosts } : {});
}

export async function removeSecret(core: EngineCore, name: string): Promise<void> {
  if (!(await core.secrets.remove(name))) {
    throw new NotFoundError(`Secret "${name}" not found`, { hint: "`mvmctl secret ls` lists the stored secrets" });
  }
}


/** The audit event for one window of a sandbox's network decisions. */
export function networkSummary(sandboxId: string, tally: NetworkTally): AuditEvent {
  const summary: AuditEvent = {
    type: "network.summary",
    sandboxId,
    fromTs: tally.since,
    toTs: tally.until,
    allowedConnections: tally.allowed,
    deniedConnections: tally.denied,
    deniedHosts: tally.deniedHosts,
  };
  return AuditEventSchema.safeParse(summary).success ? summary : { ...summary, deniedHosts: [] };
}
