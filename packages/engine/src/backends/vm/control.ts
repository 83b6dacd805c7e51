/**
 * The host's end of the guest init's control port (a virtio-serial port only pid 1 holds; see
 * init-script.ts): one request a line, one answer a line, one request at a time. The guest may be
 * hostile by the time it answers, so answers are bounded (a line of at most 256 bytes), matched
 * against a fixed grammar, and waited for with a deadline.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { InvalidArgumentError, TimeoutError, TransportError } from "@mvm/protocol";
import { MAX_TRUST_BUNDLE_BYTES, TRUST_REQUEST } from "./init-script.js";

const MAX_LINE_BYTES = 256;

/** Limits the guest applies to the sandbox's cgroup; undefined fields are unlimited. */
export interface GuestLimits {
  readonly memoryBytes?: number;
  readonly pids?: number;
  /** CPU time per 100 ms period, µs (cpus × 100 000). */
  readonly cpuQuotaUs?: number;
  readonly tmpMiB: number;
}

/** The words of a limits request: memory bytes, pids, cpu µs per 100 ms ("max" when unset), /tmp MiB. */
function limitWords(limits: GuestLimits): string {
  const value = (n: number | undefined) => (n === undefined ? "max" : String(Math.round(n)));
  return `${value(limits.memoryBytes)} ${value(limits.pids)} ${value(limits.cpuQuotaUs)} ${Math.round(limits.tmpMiB)}`;
}

/**
 * The bytes of a trust request (see TRUST_REQUEST in init-script.ts): the request line, then the
 * PEM as base64 with no line breaks. Throws InvalidArgumentError for an empty bundle or one over
 * MAX_TRUST_BUNDLE_BYTES.
 */
export function trustRequest(pem: string, label: string): { line: string; payload: string } {
  const bytes = Buffer.from(pem, "utf8");
  if (bytes.length === 0 || bytes.length > MAX_TRUST_BUNDLE_BYTES) {
    throw new InvalidArgumentError(`Cannot start sandbox "${label}": the trust bundle has ${bytes.length} bytes, allowed are 1 to ${MAX_TRUST_BUNDLE_BYTES}`);
  }
  const payload = bytes.toString("base64");
  return { line: `${TRUST_REQUEST} ${payload.length} ${createHash("sha256").update(bytes).digest("hex")}`, payload };
}

const seedWord = (): string => randomBytes(64).toString("hex");
const clockWord = (): string => String(Math.floor(Date.now() / 1000));

export class ControlPort {
  #buffer = "";
  #waiter: { resolve: (line: string) => void; reject: (err: Error) => void } | undefined;
  #failed: Error | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly socket: Duplex, private readonly label: string) {
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => this.#onData(chunk));
    socket.on("error", (err) => this.#fail(new TransportError(`Control port of "${label}" failed`, { cause: err })));
    socket.on("close", () => this.#fail(new TransportError(`Control port of "${label}" closed`)));
  }

  #fail(err: Error): void {
    this.#failed ??= err;
    this.#buffer = "";
    this.#waiter?.reject(this.#failed);
    this.#waiter = undefined;
  }

  #onData(chunk: string): void {
    // A dead port keeps nothing the guest sends.
    if (this.#failed) return;
    this.#buffer += chunk;
    let nl: number;
    while ((nl = this.#buffer.indexOf("\n")) >= 0) {
      if (nl > MAX_LINE_BYTES) return this.#fail(new TransportError(`Control port of "${this.label}" sent a line over ${MAX_LINE_BYTES} bytes`));
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      const waiter = this.#waiter;
      this.#waiter = undefined;
      if (waiter === undefined) return this.#fail(new TransportError(`Control port of "${this.label}" sent an unasked line`));
      waiter.resolve(line);
    }
    if (this.#buffer.length > MAX_LINE_BYTES) this.#fail(new TransportError(`Control port of "${this.label}" sent a line over ${MAX_LINE_BYTES} bytes`));
  }

  /** Sends one request line (and the raw bytes of `payload` after it) and returns the answer line. */
  request(line: string, timeoutMs: number, payload?: string): Promise<string> {
    const run = async (): Promise<string> => {
      if (this.#failed) throw this.#failed;
      const answer = new Promise<string>((resolve, reject) => {
        this.#waiter = { resolve, reject };
      });
      this.socket.write(payload === undefined ? `${line}\n` : `${line}\n${payload}`, "latin1");
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`Guest of "${this.label}" did not answer "${line.split(" ")[0]}" within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        return await Promise.race([answer, deadline]);
      } catch (err) {
        this.#fail(err as Error);
        throw err;
      } finally {
        clearTimeout(timer);
      }
    };
    const next = this.#queue.then(run, run);
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #expectOk(line: string, what: string, timeoutMs: number, payload?: string): Promise<void> {
    const answer = await this.request(line, timeoutMs, payload);
    if (answer !== `ok ${what}`) this.#failWith(new TransportError(`Guest of "${this.label}" refused "${what}": ${JSON.stringify(answer.slice(0, 80))}`));
  }

  /** Marks the port dead with `err` (a guest that answers out of grammar is not asked again) and throws it. */
  #failWith(err: Error): never {
    this.#fail(err);
    throw err;
  }

  /** Mixes 64 fresh random bytes into the guest kernel's RNG and makes it reseed. */
  reseed(timeoutMs: number): Promise<void> {
    return this.#expectOk(`seed ${seedWord()}`, "seed", timeoutMs);
  }

  /** Sets the guest's wall clock to the host's (to the second). */
  setClock(timeoutMs: number): Promise<void> {
    return this.#expectOk(`clock ${clockWord()}`, "clock", timeoutMs);
  }

  /** Applies the sandbox's limits in the guest. */
  setLimits(limits: GuestLimits, timeoutMs: number): Promise<void> {
    return this.#expectOk(`limits ${limitWords(limits)}`, "limits", timeoutMs);
  }

  /**
   * Everything a sandbox needs before its agent says hello, in one round trip: a fresh RNG seed
   * (as `reseed`), the host's clock (as `setClock`) and its limits (as `setLimits`).
   */
  start(limits: GuestLimits, timeoutMs: number): Promise<void> {
    return this.#expectOk(`start ${seedWord()} ${clockWord()} ${limitWords(limits)}`, "start", timeoutMs);
  }

  /**
   * Installs the sandbox's trust bundle in the guest: at TRUST_BUNDLE_PATH on a read-only tmpfs
   * over the image's /run, and over SYSTEM_TRUST_BUNDLE_PATH when the image has that file. The
   * guest checks the length and sha256 of what it received. Once per sandbox, before its hello.
   */
  async installTrustBundle(pem: string, timeoutMs: number): Promise<void> {
    const { line, payload } = trustRequest(pem, this.label);
    await this.#expectOk(line, TRUST_REQUEST, timeoutMs, payload);
  }

  /** Makes the guest drop its clean page cache (before it is saved: less state to save and load). */
  dropCaches(timeoutMs: number): Promise<void> {
    return this.#expectOk("drop_caches", "drop_caches", timeoutMs);
  }

  /** OOM kills in the sandbox's cgroup so far. */
  async oomKills(timeoutMs: number): Promise<number> {
    const answer = await this.request("stats", timeoutMs);
    const m = /^ok stats oom_kill=([0-9]{1,9})$/.exec(answer);
    if (!m) this.#failWith(new TransportError(`Guest of "${this.label}" sent bad stats: ${JSON.stringify(answer.slice(0, 80))}`));
    return Number(m[1]);
  }

  close(): void {
    this.#fail(new TransportError(`Control port of "${this.label}" closed`));
    this.socket.destroy();
  }
}
