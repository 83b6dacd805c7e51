/**
 * The host side of one sandbox's network: its policy (replaceable while it runs), its relay
 * channel to the agent, its published ports, and its bounded log of network events.
 *
 * Nothing here gives the sandbox a route: every byte goes through the relay, and every stream the
 * agent opens is handed to the egress gateway, which decides.
 */
import { createServer, type Server, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import {
  AlreadyExistsError,
  InvalidArgumentError,
  MAX_NETWORK_EVENTS_PAGE,
  MAX_PUBLISHED_PORTS,
  RelayMux,
  type NetworkEvent,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type PortSpec,
} from "@mvm/protocol";
import type { EgressGateway, EgressSandbox, MediatedSecret } from "./gateway.js";
import { splice } from "./gateway-io.js";
import type { SandboxCa } from "./sandbox-ca.js";

/** Network events kept per sandbox; older ones are dropped (and counted). */
export const MAX_NETWORK_EVENTS = 10_000;

export interface SandboxNetworkOptions {
  readonly sandboxId: string;
  readonly policy: NetworkPolicyJson;
  readonly gateway: EgressGateway;
  /** Mediated secrets, substituted by the gateway on requests to their hosts. */
  readonly secrets: readonly MediatedSecret[];
  readonly ca?: SandboxCa;
  readonly ports: readonly PortSpec[];
  /** @default MAX_NETWORK_EVENTS */
  readonly maxEvents?: number;
}

/** A window of network decisions: see {@link SandboxNetwork.takeTally}. */
export interface NetworkTally {
  since: string;
  until: string;
  allowed: number;
  denied: number;
  deniedHosts: string[];
}

export class SandboxNetwork {
  readonly sandboxId: string;
  #policy: NetworkPolicyJson;
  #revision = 0;
  #changedAt: string | undefined;
  readonly #gateway: EgressGateway;
  readonly #egress: EgressSandbox;
  readonly #events: NetworkEvent[] = [];
  readonly #maxEvents: number;
  #dropped = 0;
  #tally = { allowed: 0, denied: 0, deniedHosts: new Set<string>(), since: new Date().toISOString() };
  #mux: RelayMux | undefined;
  readonly #servers: { guest: number; host: number; server: Server }[] = [];
  readonly #portSockets = new Set<Socket>();
  /** Live publishes run one at a time. */
  #publishing: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(options: SandboxNetworkOptions) {
    this.sandboxId = options.sandboxId;
    this.#policy = options.policy;
    this.#gateway = options.gateway;
    this.#maxEvents = options.maxEvents ?? MAX_NETWORK_EVENTS;
    this.#egress = {
      id: options.sandboxId,
      policy: () => this.#policy,
      secrets: options.secrets,
      ...(options.ca ? { ca: options.ca } : {}),
      event: (e) => this.#record(e),
    };
  }

  /** Binds the published ports on host loopback first, so a taken port fails the create early. */
  static async open(options: SandboxNetworkOptions): Promise<SandboxNetwork> {
    const net = new SandboxNetwork(options);
    try {
      for (const port of options.ports) await net.#publish(port);
    } catch (err) {
      await net.close();
      throw err;
    }
    return net;
  }

  /** Starts serving the relay once the backend has it; the sandbox has no network until then. */
  attach(relay: Promise<Duplex>): void {
    relay.then(
      (channel) => {
        if (this.#closed) {
          channel.destroy();
          return;
        }
        const mux = new RelayMux(channel, channel, { role: "host" });
        this.#mux = mux;
        mux.on("stream", (stream: Duplex) => this.#gateway.handle(stream, this.#egress));
        mux.on("error", () => {
          // A relay protocol violation ends the relay; the sandbox loses its network, nothing else.
          mux.close();
        });
        channel.on("error", () => mux.close());
      },
      () => {
        // The agent never connected its relay: the sandbox simply has no network.
      },
    );
  }

  /**
   * Stops the host's relay writes toward the guest at a frame boundary and waits until they have
   * left the engine's buffers (a VM about to be saved then holds no half-delivered frame); the
   * guest's traffic is still read. No-op without a relay.
   */
  async holdRelay(): Promise<void> {
    await this.#mux?.hold();
  }

  /** Lets relay writes toward the guest go again. */
  releaseRelay(): void {
    this.#mux?.release();
  }

  get policy(): NetworkPolicyJson {
    return this.#policy;
  }

  /** What SandboxInfo.network says. */
  summary(): { policy: NetworkPolicyJson; revision: number; changedAt?: string } {
    return { policy: this.#policy, revision: this.#revision, ...(this.#changedAt ? { changedAt: this.#changedAt } : {}) };
  }

  /**
   * Replaces the policy (already validated by the caller), closes the connections it no longer
   * allows, and records the change.
   */
  setPolicy(policy: NetworkPolicyJson): { closedConnections: number } {
    const before = this.#policy;
    this.#policy = policy;
    this.#revision += 1;
    this.#changedAt = new Date().toISOString();
    const closedConnections = this.#gateway.enforce(this.sandboxId);
    this.#record({
      type: "policy-changed",
      time: this.#changedAt,
      rulesBefore: before.rules.length,
      rulesAfter: policy.rules.length,
      policy,
      closedConnections,
    });
    return { closedConnections };
  }

  /**
   * Publishes a guest port on a running sandbox: a host loopback port that reaches it (`port.host`,
   * or one the kernel picks). Publishing a published guest port again answers its host port.
   * @throws InvalidArgumentError when the sandbox already publishes MAX_PUBLISHED_PORTS ports or the host port is taken
   * @throws AlreadyExistsError when the guest port is published on a different host port
   */
  publish(port: PortSpec): Promise<{ guest: number; host: number; added: boolean }> {
    const step = async (): Promise<{ guest: number; host: number; added: boolean }> => {
      if (this.#closed) throw new InvalidArgumentError(`Sandbox "${this.sandboxId}" has stopped: its ports cannot change`);
      const known = this.#servers.find((s) => s.guest === port.guest);
      if (known !== undefined) {
        if (port.host !== undefined && port.host !== known.host) {
          throw new AlreadyExistsError(`Guest port ${port.guest} of sandbox "${this.sandboxId}" is already published on host port ${known.host}`);
        }
        return { guest: known.guest, host: known.host, added: false };
      }
      if (this.#servers.length >= MAX_PUBLISHED_PORTS) {
        throw new InvalidArgumentError(`Sandbox "${this.sandboxId}" already publishes ${MAX_PUBLISHED_PORTS} ports, the most one sandbox may`);
      }
      await this.#publish(port);
      const added = this.#servers.at(-1) as { guest: number; host: number; server: Server };
      if (this.#closed) {
        // Closed while the port was being bound: close() did not see this server.
        await new Promise<void>((resolve) => added.server.close(() => resolve()));
        throw new InvalidArgumentError(`Sandbox "${this.sandboxId}" stopped while port ${port.guest} was being published`);
      }
      return { guest: added.guest, host: added.host, added: true };
    };
    const next = this.#publishing.then(step, step);
    this.#publishing = next.catch(() => undefined);
    return next;
  }

  publishedPorts(): { guest: number; host: number }[] {
    return this.#servers.map(({ guest, host }) => ({ guest, host }));
  }

  /** Events with sequence numbers above `after`, oldest first. */
  events(after = 0, limit = MAX_NETWORK_EVENTS_PAGE): NetworkEventsPage {
    if (!Number.isInteger(after) || after < 0) throw new InvalidArgumentError(`Invalid "after" ${JSON.stringify(after)}: must be an integer >= 0`);
    if (!Number.isInteger(limit) || limit < 1) throw new InvalidArgumentError(`Invalid "limit" ${JSON.stringify(limit)}: must be an integer >= 1`);
    const max = Math.min(limit, MAX_NETWORK_EVENTS_PAGE);
    const firstSeq = this.#dropped + 1;
    const start = Math.max(after + 1, firstSeq);
    const slice = this.#events.slice(start - firstSeq, start - firstSeq + max);
    const events = slice.map((event, i) => ({ seq: start + i, event }));
    return { events, next: events.at(-1)?.seq ?? Math.max(after, firstSeq - 1), dropped: this.#dropped };
  }

  /**
   * Counts of every decision since the last call (or since the network opened), not only of the
   * events still kept, and up to 16 of the host names that were denied in that window; the next
   * window starts now. What the audit log's `network.summary` entries record: their windows do
   * not overlap, so their counts add up to every decision the sandbox's network made.
   */
  takeTally(): NetworkTally {
    const now = new Date().toISOString();
    const { since, allowed, denied, deniedHosts } = this.#tally;
    this.#tally = { allowed: 0, denied: 0, deniedHosts: new Set<string>(), since: now };
    return { since, until: now, allowed, denied, deniedHosts: [...deniedHosts] };
  }

  /** Whether any decision was made since the last `takeTally`. */
  get tallyPending(): boolean {
    return this.#tally.allowed + this.#tally.denied > 0;
  }

  #record(event: NetworkEvent): void {
    if (event.type === "connection") {
      if (event.decision === "allowed") this.#tally.allowed++;
      else {
        this.#tally.denied++;
        const host = event.host?.toLowerCase();
        if (host !== undefined && this.#tally.deniedHosts.size < 16 && /^[a-z0-9.-]{1,253}$/.test(host)) this.#tally.deniedHosts.add(host);
      }
    }
    this.#events.push(event);
    if (this.#events.length > this.#maxEvents) {
      this.#events.shift();
      this.#dropped += 1;
    }
  }

  async #publish(port: PortSpec): Promise<void> {
    const server = createServer({ allowHalfOpen: true }, (socket) => this.#onPortConnection(port.guest, socket));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(
          new InvalidArgumentError(
            `Cannot publish guest port ${port.guest} of sandbox "${this.sandboxId}": host port ${port.host ?? "(any)"} on 127.0.0.1: ${err.code ?? err.message}`,
            { cause: err },
          ),
        );
      };
      server.once("error", onError);
      server.listen({ host: "127.0.0.1", port: port.host ?? 0, exclusive: true }, () => {
        server.off("error", onError);
        resolve();
      });
    });
    const address = server.address();
    const host = typeof address === "object" && address !== null ? address.port : 0;
    this.#servers.push({ guest: port.guest, host, server });
  }

  #onPortConnection(guest: number, socket: Socket): void {
    const mux = this.#mux;
    if (!mux || this.#closed) {
      socket.destroy();
      return;
    }
    let stream: Duplex;
    try {
      stream = mux.open(guest);
    } catch {
      socket.destroy();
      return;
    }
    this.#portSockets.add(socket);
    // The gateway's splice: a side that ends cleanly lets the other flush (a relay stream that is
    // destroyed instead resets the guest's end, which drops bytes not yet delivered).
    void splice(socket, stream, { bytesOut: 0, bytesIn: 0 }).finally(() => this.#portSockets.delete(socket));
  }

  /** Closes the ports, the relay and every connection of the sandbox. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const socket of this.#portSockets) socket.destroy();
    this.#portSockets.clear();
    this.#gateway.closeSandbox(this.sandboxId);
    this.#mux?.close("sandbox stopped");
    await Promise.all(this.#servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))));
  }
}
