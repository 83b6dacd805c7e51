/**
 * `sandbox.network`: the sandbox's egress policy (replaceable while it runs) and the gateway's
 * record of every connection it allowed or denied.
 */
import {
  NetworkPolicy,
  type CallOptions,
  type EngineApi,
  type NetworkEvent,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type SandboxInfo,
} from "@mvm/protocol";

export interface NetworkEventsOptions extends CallOptions {
  /** Only events with a sequence number above this one. @default 0 */
  after?: number;
  /** At most this many (the engine caps a page at 1000). */
  limit?: number;
}

export class SandboxNetworkApi {
  readonly #engine: EngineApi;
  readonly #id: string;
  readonly #onInfo: (info: SandboxInfo) => void;

  /** @internal */
  constructor(engine: EngineApi, id: string, onInfo: (info: SandboxInfo) => void) {
    this.#engine = engine;
    this.#id = id;
    this.#onInfo = onInfo;
  }

  /**
   * Replaces the sandbox's egress policy. Connections the new policy does not allow are closed at
   * once; the change is recorded as a "policy-changed" network event.
   * @example
   * await sb.network.setPolicy(NetworkPolicy.denyByDefault().allowHttps("pypi.org"));
   */
  async setPolicy(policy: NetworkPolicy | NetworkPolicyJson, options?: CallOptions): Promise<SandboxInfo> {
    const json = policy instanceof NetworkPolicy ? policy.toJSON() : NetworkPolicy.fromJSON(policy).toJSON();
    const info = await this.#engine.setNetworkPolicy(this.#id, json, options);
    this.#onInfo(info);
    return info;
  }

  /**
   * One page of network events, oldest first.
   * @example
   * const { events } = await sb.network.events();
   * for (const { event } of events) if (event.type === "connection") console.log(event.decision, event.host);
   */
  events(options: NetworkEventsOptions = {}): Promise<NetworkEventsPage> {
    const { after, limit, ...call } = options;
    return this.#engine.networkEvents(this.#id, { ...call, ...(after !== undefined ? { after } : {}), ...(limit !== undefined ? { limit } : {}) });
  }

  /** Every event recorded so far (pages through them). */
  async allEvents(options: CallOptions = {}): Promise<NetworkEvent[]> {
    const out: NetworkEvent[] = [];
    let after = 0;
    for (;;) {
      const page = await this.events({ ...options, after });
      out.push(...page.events.map((e) => e.event));
      if (page.events.length === 0) return out;
      after = page.next;
    }
  }
}
