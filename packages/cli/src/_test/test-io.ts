/**
 * A CliIo for tests: captured stdout/stderr, scripted stdin, signals raised by the test.
 */
import type { EngineApi } from "@mvm/protocol";
import { runCli } from "../cli.js";
import type { CliIo, CliSignal, ConnectRequest, DaemonOptions, InStream, OutStream } from "../io.js";
import { scratchDir } from "./scratch.js";

export class CapturedStream implements OutStream {
  readonly chunks: Buffer[] = [];
  /** While true, writes report a full buffer until the test calls `drain`. */
  full = false;
  #drainWaiters: (() => void)[] = [];
  constructor(
    readonly isTTY = false,
    readonly columns = 80,
  ) {}
  write(chunk: string | Uint8Array): boolean {
    this.chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk));
    return !this.full;
  }
  drained(): Promise<void> {
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }
  /** Empties the pretend buffer: writers waiting in `drained` go on. */
  drain(): void {
    this.full = false;
    for (const w of this.#drainWaiters.splice(0)) w();
  }
  text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }
}

/** Stdin fed by the test: `push` adds a chunk, `end` closes it. */
export class ScriptedStdin implements InStream {
  readonly #queue: Uint8Array[] = [];
  #ended = false;
  destroyed = false;
  #wake: (() => void) | undefined;
  constructor(readonly isTTY = false) {}
  push(chunk: string | Uint8Array): void {
    this.#queue.push(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
    this.#wake?.();
  }
  end(): void {
    this.#ended = true;
    this.#wake?.();
  }
  destroy(): void {
    this.destroyed = true;
    this.#wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      if (this.destroyed) return;
      const next = this.#queue.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }
}

export interface TestIoOptions {
  engine?: EngineApi;
  env?: Record<string, string>;
  stdin?: ScriptedStdin;
  stderrTTY?: boolean;
  uid?: number;
  serveDaemon?: (options: DaemonOptions) => Promise<void>;
}

export class TestIo implements CliIo {
  readonly stdout = new CapturedStream();
  readonly stderr: CapturedStream;
  readonly stdin: ScriptedStdin;
  readonly env: Record<string, string>;
  readonly uid: number | undefined;
  readonly homeDir: string;
  readonly connects: ConnectRequest[] = [];
  readonly #handlers = new Map<CliSignal, Set<() => void>>();
  readonly #engine: EngineApi | undefined;
  readonly #serveDaemon: ((options: DaemonOptions) => Promise<void>) | undefined;

  constructor(options: TestIoOptions = {}) {
    this.#engine = options.engine;
    this.stderr = new CapturedStream(options.stderrTTY ?? false, 60);
    this.stdin = options.stdin ?? closedStdin();
    // A fresh empty home, so no real config file is read.
    this.homeDir = scratchDir("test-home");
    this.env = { ...options.env };
    this.uid = options.uid ?? 1000;
    this.#serveDaemon = options.serveDaemon;
  }
  async connect(request: ConnectRequest): Promise<EngineApi> {
    this.connects.push(request);
    if (this.#engine === undefined) throw new Error("no engine in this test");
    return this.#engine;
  }
  onSignal(signal: CliSignal, handler: () => void): () => void {
    let set = this.#handlers.get(signal);
    if (set === undefined) this.#handlers.set(signal, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }
  /** Delivers `signal` as the process would. */
  raise(signal: CliSignal): void {
    for (const h of this.#handlers.get(signal) ?? []) h();
  }
  listenerCount(): number {
    return [...this.#handlers.values()].reduce((n, s) => n + s.size, 0);
  }
  async serveDaemon(options: DaemonOptions): Promise<void> {
    if (this.#serveDaemon === undefined) throw new Error("no daemon in this test");
    return this.#serveDaemon(options);
  }
  exitNow(code: number): never {
    throw new Error(`exitNow(${code})`);
  }
}

export function closedStdin(isTTY = false): ScriptedStdin {
  const s = new ScriptedStdin(isTTY);
  s.end();
  return s;
}

/** Runs mvmctl in-process; returns its exit code and captured output. */
export async function cli(argv: readonly string[], options: TestIoOptions = {}): Promise<{ code: number; stdout: string; stderr: string; io: TestIo }> {
  const io = new TestIo(options);
  const code = await runCli(argv, io);
  return { code, stdout: io.stdout.text(), stderr: io.stderr.text(), io };
}
