/**
 * One allowed connection or forwarded request through the gateway: what it was allowed as (so a
 * policy change can re-check it), its byte counts, its teardown, and its single closing event.
 */
import { MAX_EVENT_REASON_CHARS, MAX_EVENT_SECRET_NAMES, type ConnectionEvent, type EgressVia } from "@mvm/protocol";
import type { Decision } from "./gateway-decide.js";
import type { ByteCounts } from "./gateway-io.js";
import type { EgressSandbox } from "./gateway.js";
import type { EgressRequest } from "./policy-match.js";

type Allowed = Extract<Decision, { allowed: true }>;
type Denied = Extract<Decision, { allowed: false }>;

/** Replaces every secret value in `text` and cuts it to the event limit. */
export function safeReason(sandbox: EgressSandbox, text: string): string {
  let out = text;
  for (const secret of sandbox.secrets) if (secret.value.length > 0) out = out.split(secret.value).join("[secret]");
  return out.length > MAX_EVENT_REASON_CHARS ? `${out.slice(0, MAX_EVENT_REASON_CHARS - 3)}...` : out;
}

/** Hands `event` to the sandbox; a failing listener never breaks the gateway. */
export function emit(sandbox: EgressSandbox, event: ConnectionEvent): void {
  try {
    sandbox.event(event);
  } catch {
    // The sandbox's event sink is not the gateway's concern.
  }
}

/** Emits the event of a connection denied before any byte went upstream. */
export function emitDenied(sandbox: EgressSandbox, via: EgressVia, decision: Omit<Denied, "socksReply" | "httpStatus">): void {
  emit(sandbox, {
    type: "connection",
    time: new Date().toISOString(),
    decision: "denied",
    protocol: decision.protocol,
    via,
    ...(decision.host === undefined ? {} : { host: decision.host }),
    ...(decision.ip === undefined ? {} : { ip: decision.ip }),
    port: decision.port,
    reason: safeReason(sandbox, decision.reason),
    bytesOut: 0,
    bytesIn: 0,
    durationMs: 0,
  });
}

/** An allowed connection or request, tracked until its one event is emitted. */
export class Flow {
  readonly counts: ByteCounts = { bytesOut: 0, bytesIn: 0 };
  readonly check: EgressRequest;
  readonly #controller = new AbortController();
  readonly #startedMs = Date.now();
  readonly #teardown = new Set<() => void>();
  readonly #onAbort = new Set<() => void>();
  #reason: string | undefined;
  #deniedReason: string | undefined;
  #finished = false;
  intercepted = false;
  secrets: readonly string[] = [];

  constructor(
    readonly sandbox: EgressSandbox,
    readonly via: EgressVia,
    readonly decision: Allowed,
    private readonly onFinish: (flow: Flow) => void,
  ) {
    this.check = { kind: decision.protocol, ...(decision.host === undefined ? {} : { host: decision.host }), ip: decision.ip, port: decision.port };
  }

  /** Aborted when the flow is closed by the gateway (policy change, sandbox closed). */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  get finished(): boolean {
    return this.#finished;
  }

  /** Registers a resource to destroy when the flow finishes or is aborted. */
  own(destroy: () => void): void {
    if (this.#controller.signal.aborted || this.#finished) destroy();
    else this.#teardown.add(destroy);
  }

  /** Registers what to destroy only when the gateway aborts the flow (e.g. a keep-alive client connection). */
  onAbort(destroy: () => void): void {
    if (this.#controller.signal.aborted) destroy();
    else this.#onAbort.add(destroy);
  }

  /** Records why the connection ended early, keeping the first reason. */
  note(reason: string): void {
    this.#reason ??= reason;
  }

  /** Turns the closing event into a denial (TLS checks that fail after the tunnel opened). */
  deny(reason: string): void {
    this.#deniedReason ??= reason;
  }

  /** Closes everything the flow owns, with `reason` in its event. */
  abort(reason: string): void {
    this.note(reason);
    this.#controller.abort(new Error(reason));
    for (const destroy of [...this.#onAbort, ...this.#teardown]) destroy();
    this.#onAbort.clear();
    this.#teardown.clear();
  }

  /** Emits the flow's one event and stops tracking it; later calls do nothing. */
  finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    for (const destroy of this.#teardown) destroy();
    this.#teardown.clear();
    this.#onAbort.clear();
    const d = this.decision;
    const denied = this.#deniedReason !== undefined;
    const reason = this.#deniedReason ?? this.#reason;
    emit(this.sandbox, {
      type: "connection",
      time: new Date().toISOString(),
      decision: denied ? "denied" : "allowed",
      protocol: d.protocol,
      via: this.via,
      ...(d.host === undefined ? {} : { host: d.host }),
      ip: d.ip,
      port: d.port,
      ...(denied ? {} : { rule: d.rule }),
      ...(reason === undefined ? {} : { reason: safeReason(this.sandbox, reason) }),
      bytesOut: this.counts.bytesOut,
      bytesIn: this.counts.bytesIn,
      durationMs: Math.max(0, Date.now() - this.#startedMs),
      ...(this.intercepted ? { intercepted: true } : {}),
      ...(this.secrets.length > 0 ? { secrets: this.secrets.slice(0, MAX_EVENT_SECRET_NAMES).map((n) => n.slice(0, 128)) } : {}),
    });
    this.onFinish(this);
  }
}
