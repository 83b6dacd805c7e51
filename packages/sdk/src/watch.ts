/**
 * `files.watch`: change events of a sandbox directory as an async iterator. The events come from
 * a watcher process inside the sandbox (see _internal/guest-watch.ts), so they are hostile input:
 * each line is size-bounded and parsed strictly, and the queue of events not yet read is bounded.
 * When it is full, new events are dropped and counted, and the reader gets one `overflow` event
 * saying how many before the next ones.
 */
import {
  InvalidArgumentError,
  NotFoundError,
  TransportError,
  isSandboxPath,
  parseJsonStrict,
  type CallOptions,
  type EngineApi,
} from "@mvm/protocol";
import { z } from "zod";
import { guestWatchArgv } from "./_internal/guest-watch.js";

/** Default of {@link WatchOptions.maxQueuedEvents}. */
export const DEFAULT_MAX_QUEUED_EVENTS = 1024;
/** Longest line the guest watcher may print, in bytes. */
const MAX_LINE_BYTES = 8 * 1024;

/**
 * One change under the watched directory. `path` is absolute. `create`, `write` and `remove` are
 * what inotify reports (a rename is a `remove` of the old name and a `create` of the new one).
 * `overflow`: events were lost (`dropped` counts those this client dropped; 0 when the kernel
 * dropped them); list the directory again to catch up.
 */
export type WatchEvent =
  | { type: "create" | "write" | "remove"; path: string }
  | { type: "overflow"; dropped: number };

export interface WatchOptions extends CallOptions {
  /** Watch subdirectories too. @default false */
  recursive?: boolean;
  /** Most events kept while the caller is not reading; more are dropped and reported as one `overflow`. @default 1024 */
  maxQueuedEvents?: number;
}

const GuestLine = z.union([
  z.strictObject({ ready: z.literal(true) }),
  z.strictObject({ type: z.enum(["create", "write", "remove"]), name: z.string().max(4096) }),
  z.strictObject({ type: z.literal("overflow") }),
  z.strictObject({ error: z.string().max(32) }),
]);

/**
 * A running watch. Iterate it for events; `close()` (or leaving a `for await`, or `await using`)
 * stops the watcher process in the sandbox.
 */
export class FileWatcher implements AsyncIterable<WatchEvent>, AsyncDisposable {
  readonly path: string;
  readonly #queue: WatchEvent[] = [];
  readonly #max: number;
  #dropped = 0;
  #ended = false;
  #failure: Error | undefined;
  #wake: (() => void) | undefined;
  #stop: () => Promise<void> = async () => {};

  /** @internal Built by {@link startWatch}. */
  constructor(path: string, maxQueued: number) {
    this.path = path;
    this.#max = maxQueued;
  }

  /** Events dropped since the last `overflow` event was read (the queue was full). */
  get dropped(): number {
    return this.#dropped;
  }

  /** @internal */
  push(event: WatchEvent): void {
    if (this.#ended) return;
    if (this.#queue.length >= this.#max) this.#dropped += 1;
    else this.#queue.push(event);
    this.#notify();
  }

  /** @internal The watcher ended: `err` when it failed. */
  end(err?: Error): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#failure ??= err;
    this.#notify();
  }

  /** @internal */
  setStop(stop: () => Promise<void>): void {
    this.#stop = stop;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Stops the watcher process; iteration then ends. Idempotent. */
  async close(): Promise<void> {
    this.end();
    await this.#stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<WatchEvent, void, undefined> {
    try {
      for (;;) {
        if (this.#dropped > 0 && this.#queue.length === 0) {
          const dropped = this.#dropped;
          this.#dropped = 0;
          yield { type: "overflow", dropped };
          continue;
        }
        const next = this.#queue.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (this.#ended) {
          if (this.#failure) throw this.#failure;
          return;
        }
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      await this.close();
    }
  }
}

/**
 * Starts a watcher process on `path` in the sandbox and resolves once it watches.
 * @throws NotFoundError when `path` does not exist; InvalidArgumentError when it is not a directory
 */
export async function startWatch(engine: EngineApi, sandboxId: string, path: string, options: WatchOptions = {}): Promise<FileWatcher> {
  if (typeof path !== "string" || !isSandboxPath(path)) throw new InvalidArgumentError(`Invalid sandbox path: ${JSON.stringify(String(path).slice(0, 200))}`);
  const maxQueued = options.maxQueuedEvents ?? DEFAULT_MAX_QUEUED_EVENTS;
  if (!Number.isSafeInteger(maxQueued) || maxQueued < 1) throw new InvalidArgumentError(`Invalid maxQueuedEvents "${maxQueued}": expected an integer >= 1`);
  const watcher = new FileWatcher(path, maxQueued);
  const prefix = path === "/" ? "/" : `${path}/`;
  let ready: { resolve: () => void; reject: (err: Error) => void } | undefined;
  const started = new Promise<void>((resolve, reject) => (ready = { resolve, reject }));
  const fail = (err: Error): void => {
    ready?.reject(err);
    ready = undefined;
    watcher.end(err);
  };
  let pending = Buffer.alloc(0);
  const onLine = (line: Buffer): void => {
    let value: z.infer<typeof GuestLine>;
    try {
      value = GuestLine.parse(parseJsonStrict(line.toString("utf8"), { maxDepth: 2 }));
    } catch (cause) {
      throw new TransportError(`The watcher of "${path}" in "${sandboxId}" printed a malformed line`, { cause });
    }
    if ("ready" in value) {
      ready?.resolve();
      ready = undefined;
    } else if ("error" in value) {
      const message = `Cannot watch "${path}" in "${sandboxId}": ${value.error}`;
      fail(value.error === "ENOENT" ? new NotFoundError(message) : new InvalidArgumentError(message));
    } else if (value.type === "overflow") {
      watcher.push({ type: "overflow", dropped: 0 });
    } else {
      const changed = `${prefix}${value.name}`;
      if (!isSandboxPath(changed)) throw new TransportError(`The watcher of "${path}" in "${sandboxId}" reported an impossible name`);
      watcher.push({ type: value.type, path: changed });
    }
  };
  let broken = false;
  const onStdout = (chunk: Uint8Array): void => {
    if (broken) return;
    try {
      pending = Buffer.concat([pending, chunk]);
      for (let nl = pending.indexOf(0x0a); nl !== -1; nl = pending.indexOf(0x0a)) {
        onLine(pending.subarray(0, nl));
        pending = pending.subarray(nl + 1);
      }
      if (pending.length > MAX_LINE_BYTES) throw new TransportError(`The watcher of "${path}" in "${sandboxId}" printed a line over ${MAX_LINE_BYTES} bytes`);
    } catch (err) {
      // A watcher that breaks the line protocol is stopped; the reader sees why.
      broken = true;
      pending = Buffer.alloc(0);
      fail(err instanceof Error ? err : new TransportError(String(err)));
      void watcher.close();
    }
  };
  const call: CallOptions = {};
  if (options.signal) call.signal = options.signal;
  const proc = await engine.exec(
    sandboxId,
    { argv: guestWatchArgv(path, options.recursive ?? false), background: true, maxOutputBytes: 1024 * 1024 * 1024 },
    { onStdout },
    call,
  );
  watcher.setStop(async () => {
    await engine.signalProcess(sandboxId, proc.proc, "SIGKILL").catch(() => undefined);
    await proc.exit.catch(() => undefined);
  });
  proc.exit.then(
    (exit) => fail(new TransportError(`The watcher of "${path}" in "${sandboxId}" ended (exit code ${exit.exitCode}, signal ${exit.signal})`)),
    (err: unknown) => fail(err instanceof Error ? err : new TransportError(String(err))),
  );
  try {
    await started;
  } catch (err) {
    await watcher.close();
    throw err;
  }
  return watcher;
}
