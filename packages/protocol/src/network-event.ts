/**
 * Network events: what the host's egress gateway decided for one sandbox, as data.
 *
 * A connection event is written once per connection attempt: at once when it is denied, and when
 * it closes when it was allowed (so it carries the byte counts and the duration). A policy event is
 * written whenever a live sandbox's network policy is replaced.
 */
import { z } from "zod";
import { NetworkPolicySchema } from "./network-policy.js";

/** Longest `reason` kept in an event, in characters. */
export const MAX_EVENT_REASON_CHARS = 512;
/** Most secret names listed in one event. */
export const MAX_EVENT_SECRET_NAMES = 64;

const Time = z.string().max(40);
const Count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** How the workload reached the gateway. */
export const EgressVia = z.enum(["http-proxy", "connect", "socks5"]);
export type EgressVia = z.infer<typeof EgressVia>;

export const ConnectionEventSchema = z.strictObject({
  type: z.literal("connection"),
  time: Time,
  decision: z.enum(["allowed", "denied"]),
  /** What the connection was judged as: TLS to 443 (https), plain HTTP (http) or any TCP (tcp). */
  protocol: z.enum(["https", "http", "tcp"]),
  via: EgressVia,
  /** The requested name, normalized; absent for a bare IP address. */
  host: z.string().max(253).optional(),
  /** The address the gateway connected to (or refused). */
  ip: z.string().max(64).optional(),
  port: z.number().int().min(0).max(65535),
  /** Index of the policy rule that allowed it. */
  rule: z.number().int().min(0).optional(),
  /** Why it was denied, or why an allowed connection ended early. */
  reason: z.string().max(MAX_EVENT_REASON_CHARS).optional(),
  /** Bytes from the workload to the destination, and back. */
  bytesOut: Count,
  bytesIn: Count,
  durationMs: Count,
  /** True when the gateway terminated TLS to substitute secrets. */
  intercepted: z.boolean().optional(),
  /** Names of the secrets substituted into requests on this connection (never values). */
  secrets: z.array(z.string().max(128)).max(MAX_EVENT_SECRET_NAMES).optional(),
});
export type ConnectionEvent = z.infer<typeof ConnectionEventSchema>;

export const PolicyChangedEventSchema = z.strictObject({
  type: z.literal("policy-changed"),
  time: Time,
  /** Number of rules before and after. */
  rulesBefore: Count,
  rulesAfter: Count,
  policy: NetworkPolicySchema,
  /** Open connections the new policy no longer allows, closed by the change. */
  closedConnections: Count,
});
export type PolicyChangedEvent = z.infer<typeof PolicyChangedEventSchema>;

export const NetworkEventSchema = z.discriminatedUnion("type", [ConnectionEventSchema, PolicyChangedEventSchema]);
export type NetworkEvent = z.infer<typeof NetworkEventSchema>;
