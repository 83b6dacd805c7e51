/**
 * What every capability of the engine shares: its options, the live and stopped sandboxes, their
 * records, the admission gate (and through it the audit log), the egress gateway and the secret
 * store. The Engine owns one; each capability module (sandboxes, processes, files, network,
 * images, snapshots) is a set of functions over it, so a new operation touches its own module and
 * one line of the Engine.
 */
import type { AuditReceiptRef, BackendName, CreateSandboxRequest, NetworkPolicyJson, SandboxInfo } from "@mvm/protocol";
import { InvalidArgumentError, NotFoundError, STRICT_SECRETS_ENV, TransportError, envFlagOn } from "@mvm/protocol";
import type { z } from "zod";
import type { AdmissionGate } from "../admission/gate.js";
import type { AuditReceipt } from "../audit/log.js";
import type { ProbeResult } from "../backends/types.js";
import type { ConfiguredDefault, TierMinimum } from "../backend-choice.js";
import type { EgressGateway } from "../egress/gateway.js";
import type { SandboxNetwork } from "../egress/sandbox-network.js";
import type { LiveSandbox } from "../live-sandbox.js";
import type { SecretStore } from "../secrets/store.js";
import type { SandboxRecords } from "../state.js";
import type { SnapshotStore } from "../store/snapshot-store.js";
import type { WarmPool } from "./pools.js";
import type { EngineOptions } from "../engine.js";

export const DENY_ALL: NetworkPolicyJson = { version: 1, default: "deny", rules: [] };
/** Stopped sandboxes whose info stays readable. */
export const STOPPED_KEPT = 1000;
/** Stopped sandboxes whose network events stay readable. */
export const STOPPED_NETWORKS_KEPT = 64;

export interface EngineCore {
  readonly options: EngineOptions;
  readonly stateDir: string;
  readonly configuredDefault: ConfiguredDefault | undefined;
  readonly minimumTier: TierMinimum | undefined;
  readonly records: SandboxRecords;
  readonly live: Map<string, LiveSandbox>;
  readonly stopped: Map<string, SandboxInfo>;
  readonly stoppedNetworks: Map<string, SandboxNetwork>;
  readonly gateway: EgressGateway;
  readonly secrets: SecretStore;
  /** Each backend's probe, run when first needed (see probesFor) and again at health(). */
  readonly probes: Map<BackendName, Promise<ProbeResult>>;
  gate: AdmissionGate;
  /** The create request of each live sandbox (without its plan): what a fork repeats. */
  readonly createRequests: Map<string, CreateSandboxRequest>;
  /** The one command a sandbox may run, when its plan declares one. */
  readonly commands: Map<string, readonly string[]>;
  /** Settles when a stopped sandbox's end is in the audit log. */
  readonly endRecorded: Map<string, Promise<void>>;
  owner: { pid: number; startTime: string };
  closing: Promise<void> | undefined;
  /** Warm pools by key (capabilities/pools.ts). */
  readonly pools: Map<string, WarmPool>;
  /**
   * Pooled sandboxes not claimed yet, kept apart from `live` so that no call finds them; a claim
   * moves one to `live`.
   */
  readonly warm: Map<string, LiveSandbox>;
  /** The snapshot store, once opened (capabilities/snapshots.ts). */
  snapshots: SnapshotStore | undefined;
}

/** The live sandbox `id`; NotFoundError when it is unknown or has stopped. */
export function liveSandbox(core: EngineCore, id: string): LiveSandbox {
  const s = core.live.get(id);
  if (s) return s;
  if (core.stopped.has(id)) throw new NotFoundError(`Sandbox "${id}" is not running (it ${core.stopped.get(id)!.endReason ?? "stopped"})`);
  throw new NotFoundError(`Sandbox "${id}" not found`);
}

/** The receipt naming `entry` for a sandbox admitted under `info`'s plan. */
export function receiptFor(info: SandboxInfo, entry: AuditReceipt): AuditReceiptRef | undefined {
  return info.receipt ? { planId: info.receipt.planId, auditEntryId: entry.id } : undefined;
}

/**
 * The probes of the engine's backends, in the engine's order: of `which` alone, or of every
 * backend for "all" (choosing a default needs them all). A backend is probed once, when first
 * needed: a create that names its backend never probes the others.
 */
export async function probesFor(core: EngineCore, which: BackendName | "all"): Promise<ProbeResult[]> {
  const backends = core.options.backends.filter((b) => which === "all" || b.name === which);
  return Promise.all(
    backends.map((b) => {
      let pending = core.probes.get(b.name);
      if (pending === undefined) {
        pending = b.probe();
        core.probes.set(b.name, pending);
        // A probe that failed outright is run again next time.
        pending.catch(() => {
          if (core.probes.get(b.name) === pending) core.probes.delete(b.name);
        });
      }
      return pending;
    }),
  );
}

export function assertOpen(core: EngineCore): void {
  if (core.closing) throw new TransportError("Engine is closed");
}

/** Strict secret mode for a request: on when the request or the engine turns it on. */
export function strictSecrets(core: EngineCore, requested: boolean | undefined): boolean {
  return requested === true || (core.options.strictSecrets ?? envFlagOn(process.env[STRICT_SECRETS_ENV]));
}

export function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
    throw new InvalidArgumentError(`Invalid ${what}: ${where}${issue?.message ?? "invalid"}`);
  }
  return r.data;
}

/** A sandbox path, normalized; InvalidArgumentError for a relative path, NUL or "..". */
export function checkPath(path: string): string {
  if (typeof path !== "string" || !path.startsWith("/") || path.includes("\0") || path.length > 4096) {
    throw new InvalidArgumentError(`Invalid sandbox path: ${JSON.stringify(String(path).slice(0, 200))}`);
  }
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw new InvalidArgumentError(`Invalid sandbox path: "${path.slice(0, 200)}" contains ".."`);
  return "/" + parts.join("/");
}
