/**
 * When a sandbox ends: its TTL, and how a pause changes it. The TTL keeps running while paused
 * unless the pause freezes it (the remaining time is kept and restarts at resume). A TTL that
 * runs out under `onTtl: "pause"` pauses the sandbox instead of killing it; the TTL is then spent,
 * and a resume grants the sandbox's full TTL again. A pause with no TTL running (frozen or spent)
 * ends in a kill after MAX_PAUSED_SECONDS.
 */
import { MAX_PAUSED_SECONDS } from "@mvm/protocol";

export type PauseTtl = "running" | "frozen" | "spent";

export interface LifetimeHooks {
  /** The TTL ran out (onTtl "kill"), or a frozen or spent pause reached MAX_PAUSED_SECONDS. */
  expire(): void;
  /** The TTL ran out under onTtl "pause". */
  pauseAtTtl(): void;
}

export class SandboxLifetime {
  /** The TTL granted at create (or last set), ms. */
  #ttlMs: number;
  readonly #onTtl: "kill" | "pause";
  readonly #hooks: LifetimeHooks;
  #expiresAt: number;
  #ttl: NodeJS.Timeout | undefined;
  #bound: NodeJS.Timeout | undefined;
  #pause: { ttl: PauseTtl; remainingMs?: number; killAt: number } | undefined;
  #ended = false;

  constructor(createdAt: number, expiresAt: number, onTtl: "kill" | "pause", hooks: LifetimeHooks) {
    this.#ttlMs = expiresAt - createdAt;
    this.#expiresAt = expiresAt;
    this.#onTtl = onTtl;
    this.#hooks = hooks;
    this.#armTtl();
  }

  /** When the TTL runs out (ms since the epoch); while frozen, when it would if resumed now. */
  get expiresAt(): number {
    const remaining = this.#pause?.remainingMs;
    return remaining !== undefined ? Date.now() + remaining : this.#expiresAt;
  }

  /** The pause's TTL mode, remaining seconds (frozen) and when it ends in a kill; undefined while running. */
  get pause(): { ttl: PauseTtl; remainingSeconds?: number; killAt: number } | undefined {
    const p = this.#pause;
    if (p === undefined) return undefined;
    return { ttl: p.ttl, killAt: p.killAt, ...(p.remainingMs !== undefined ? { remainingSeconds: Math.ceil(p.remainingMs / 1000) } : {}) };
  }

  /** Records a pause: `"frozen"` stops the TTL, `"spent"` marks it run out (onTtl "pause"). */
  paused(ttl: PauseTtl): void {
    if (this.#ended) return;
    const now = Date.now();
    clearTimeout(this.#bound);
    if (ttl === "running") {
      // Still counting: ends at the TTL, or MAX_PAUSED_SECONDS after it when the TTL pauses.
      const killAt = this.#onTtl === "pause" ? this.#expiresAt + MAX_PAUSED_SECONDS * 1000 : this.#expiresAt;
      this.#pause = { ttl, killAt };
      return;
    }
    clearTimeout(this.#ttl);
    const remainingMs = ttl === "frozen" ? Math.max(0, (this.#pause?.remainingMs ?? this.#expiresAt - now)) : undefined;
    this.#pause = { ttl, killAt: now + MAX_PAUSED_SECONDS * 1000, ...(remainingMs !== undefined ? { remainingMs } : {}) };
    this.#bound = timer(MAX_PAUSED_SECONDS * 1000, () => this.#hooks.expire());
  }

  /** Records a resume: a frozen TTL restarts with what was left, a spent one with the full TTL. */
  resumed(): void {
    const p = this.#pause;
    if (this.#ended || p === undefined) return;
    clearTimeout(this.#bound);
    this.#pause = undefined;
    if (p.ttl === "running") return;
    this.#expiresAt = Date.now() + (p.ttl === "frozen" ? (p.remainingMs ?? 0) : this.#ttlMs);
    this.#armTtl();
  }

  /**
   * Sets the TTL to end `ttlMs` from now, which also becomes the TTL a spent pause's resume grants.
   * Frozen: the time left at resume. Paused with the TTL running: the kill moves with it.
   */
  setTtl(ttlMs: number): void {
    if (this.#ended) return;
    this.#ttlMs = ttlMs;
    const p = this.#pause;
    if (p?.ttl === "frozen") {
      p.remainingMs = ttlMs;
      return;
    }
    if (p?.ttl === "spent") return;
    this.#expiresAt = Date.now() + ttlMs;
    if (p?.ttl === "running") {
      p.killAt = this.#onTtl === "pause" ? this.#expiresAt + MAX_PAUSED_SECONDS * 1000 : this.#expiresAt;
    }
    this.#armTtl();
  }

  /** Clears every timer: the sandbox is ending. */
  end(): void {
    this.#ended = true;
    clearTimeout(this.#ttl);
    clearTimeout(this.#bound);
  }

  #armTtl(): void {
    clearTimeout(this.#ttl);
    this.#ttl = timer(Math.max(0, this.#expiresAt - Date.now()), () => {
      if (this.#onTtl === "pause") this.#hooks.pauseAtTtl();
      else this.#hooks.expire();
    });
  }
}

/** An unref'ed timer (every delay here is at most 7 days, within setTimeout's 2^31-1 ms). */
function timer(ms: number, fire: () => void): NodeJS.Timeout {
  const t = setTimeout(fire, ms);
  t.unref();
  return t;
}
