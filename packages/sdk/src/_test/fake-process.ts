/** The scripted "processes" of the FakeEngine (see fake-engine.ts). Test code only. */
import { TransportError, type ExecApiRequest, type ExecHandlers, type ExitInfo, type SandboxInfo } from "@mvm/protocol";

export const CHUNK = 64 * 1024;

export type Entry = { type: "file"; data: Uint8Array; mode: number; mtimeMs: number } | { type: "dir"; mode: number; mtimeMs: number };

export interface FakeSandbox {
  info: SandboxInfo;
  files: Map<string, Entry>;
  procs: Map<number, FakeProc>;
  nextProc: number;
}

export class FakeProc {
  ended = false;
  stdoutBytes = 0;
  stderrBytes = 0;
  stdoutTruncated = false;
  stderrTruncated = false;
  readonly startedAt = new Date();
  /** Clients attached by connectProcess: they get output written after they attached. */
  readonly attached: ExecHandlers[] = [];
  readonly settle: { resolve: (e: ExitInfo) => void; reject: (e: unknown) => void };
  readonly exit: Promise<ExitInfo>;
  constructor(
    readonly sandbox: FakeSandbox,
    readonly proc: number,
    readonly pid: number,
    readonly request: ExecApiRequest,
    readonly handlers: ExecHandlers,
  ) {
    let settle!: FakeProc["settle"];
    this.exit = new Promise<ExitInfo>((resolve, reject) => (settle = { resolve, reject }));
    this.exit.catch(() => {});
    this.settle = settle;
  }
  write(stream: "stdout" | "stderr", data: Uint8Array | string): void {
    if (this.ended) return;
    let bytes = typeof data === "string" ? Buffer.from(data) : data;
    const cap = this.request.maxOutputBytes ?? Number.MAX_SAFE_INTEGER;
    const used = stream === "stdout" ? this.stdoutBytes : this.stderrBytes;
    if (used + bytes.byteLength > cap) {
      bytes = bytes.subarray(0, Math.max(0, cap - used));
      if (stream === "stdout") this.stdoutTruncated = true;
      else this.stderrTruncated = true;
    }
    if (bytes.byteLength === 0) return;
    const chunk = bytes;
    for (const a of this.attached) void (stream === "stdout" ? a.onStdout?.(chunk) : a.onStderr?.(chunk));
    // As the engine does: one delivery at a time per stream, a handler's promise holds the next.
    if (stream === "stdout") {
      this.stdoutBytes += bytes.byteLength;
      this.#stdout = this.#stdout.then(() => this.handlers.onStdout?.(chunk)).then(() => {});
    } else {
      this.stderrBytes += bytes.byteLength;
      this.#stderr = this.#stderr.then(() => this.handlers.onStderr?.(chunk)).then(() => {});
    }
  }
  #stdout: Promise<void> = Promise.resolve();
  #stderr: Promise<void> = Promise.resolve();
  end(how: { exitCode?: number; signal?: string; timedOut?: boolean }): void {
    if (this.ended) return;
    this.ended = true;
    this.sandbox.procs.delete(this.proc);
    // The exit is reported once the output has been taken, or fails with what a handler threw.
    Promise.all([this.#stdout, this.#stderr]).then(
      () => this.#settle(how),
      (err: unknown) => this.settle.reject(err),
    );
  }
  #settle(how: { exitCode?: number; signal?: string; timedOut?: boolean }): void {
    const info = this.sandbox.info;
    this.settle.resolve({
      exitCode: how.exitCode ?? null,
      signal: how.signal ?? null,
      timedOut: how.timedOut ?? false,
      oomKilled: false,
      durationMs: Date.now() - this.startedAt.getTime(),
      stdoutBytes: this.stdoutBytes,
      stderrBytes: this.stderrBytes,
      stdoutTruncated: this.stdoutTruncated,
      stderrTruncated: this.stderrTruncated,
      receipt: {
        sandboxId: info.id,
        proc: this.proc,
        imageDigest: info.image.digest,
        backend: info.backend,
        startedAt: this.startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
      },
    });
  }
}

/** Plays the scripted program named by argv[0]. */
export async function runProgram(p: FakeProc): Promise<void> {
  const [cmd = "", ...args] = p.request.argv;
  const stdin = p.request.stdinBase64 === undefined ? "" : Buffer.from(p.request.stdinBase64, "base64").toString();
  switch (cmd) {
    case "echo":
      p.write("stdout", `${args.join(" ")}\n`);
      return p.end({ exitCode: 0 });
    case "cat":
      p.write("stdout", stdin);
      if (p.request.openStdin !== true) p.end({ exitCode: 0 });
      return;
    case "exit":
      p.write("stderr", `exiting ${args[0]}\n`);
      return p.end({ exitCode: Number(args[0]) });
    case "sleep":
      return;
    case "flood": {
      const total = Number(args[0]);
      const chunk = Buffer.alloc(CHUNK, "x");
      for (let sent = 0; sent < total && !p.ended; sent += CHUNK) {
        p.write("stdout", chunk.subarray(0, Math.min(CHUNK, total - sent)));
        await new Promise((r) => setImmediate(r));
      }
      return p.end({ exitCode: 0 });
    }
    case "timeout":
      return p.end({ signal: "SIGKILL", timedOut: true });
    case "env":
      p.write("stdout", JSON.stringify({ env: p.request.env ?? {}, cwd: p.request.cwd ?? "/work" }));
      return p.end({ exitCode: 0 });
    case "/bin/sh":
      p.write("stdout", `sh:${args[1] ?? ""}\n`);
      return p.end({ exitCode: 0 });
    case "utf8split": {
      const e = Buffer.from("é");
      p.write("stdout", e.subarray(0, 1));
      await new Promise((r) => setImmediate(r));
      p.write("stdout", e.subarray(1));
      return p.end({ exitCode: 0 });
    }
    case "crash":
      p.ended = true;
      p.sandbox.procs.delete(p.proc);
      return p.settle.reject(new TransportError("The agent went away"));
    default:
      p.write("stderr", `${cmd}: not found\n`);
      return p.end({ exitCode: 127 });
  }
}
