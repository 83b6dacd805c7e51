/**
 * `mvmctl attach ID PID`: follow a running process from another client and type into it
 * (docs/TERMINALS.md). Output is what the process printed before (its backlog), then live; input
 * is mvmctl's stdin, written to the process's stdin as it arrives. With `-t` (a process started
 * on a terminal) mvmctl's terminal goes into raw mode as for `exec -it`, the sandbox terminal
 * takes mvmctl's window size and follows it, and Ctrl-P Ctrl-Q detaches (Ctrl-C is a key for the
 * process). Detaching never ends the process, and neither does the end of mvmctl's input: the
 * process may have other writers.
 */
import { AbortedError, InvalidArgumentError, NotFoundError, type EngineApi, type ExitInfo, type ProcessInfo } from "@mvm/protocol";
import type { CommandContext } from "./command.js";
import { exitCodeOf } from "./exit-code.js";
import { checkTerminalUse, passOn } from "./terminal.js";
import { UsageError } from "./usage-error.js";

/** Largest piece of input sent in one write, in bytes. */
const INPUT_CHUNK_BYTES = 64 * 1024;
/** Ctrl-P then Ctrl-Q, as typed in raw mode: detaches from a terminal process (as docker attach does). */
export const DETACH_KEYS = [0x10, 0x11] as const;

/** How `attach` was asked to run. */
export interface AttachMode {
  /** Forward mvmctl's stdin (false with `--no-stdin`). */
  stdin: boolean;
  /** `-t`: drive the process's terminal from mvmctl's, raw. */
  tty: boolean;
}

/**
 * Splits raw terminal input at the detach keys. `feed` answers the bytes to pass on and whether
 * the keys were typed; a Ctrl-P at the end of a chunk is held until the next byte says which it is.
 */
export class DetachKeys {
  #held = false;

  feed(chunk: Uint8Array): { pass: Uint8Array; detach: boolean } {
    const out: number[] = [];
    for (const byte of chunk) {
      if (this.#held) {
        this.#held = false;
        if (byte === DETACH_KEYS[1]) return { pass: Uint8Array.from(out), detach: true };
        out.push(DETACH_KEYS[0]);
      }
      if (byte === DETACH_KEYS[0]) this.#held = true;
      else out.push(byte);
    }
    return { pass: Uint8Array.from(out), detach: false };
  }
}

/** Attaches to `found` and returns mvmctl's exit code: the process's, or 0 after a detach. */
export async function attachProcess(ctx: CommandContext, engine: EngineApi, sandboxId: string, found: ProcessInfo, mode: AttachMode): Promise<number> {
  const { io, out } = ctx;
  const terminal = mode.tty ? io.terminal : undefined;
  if (mode.tty) {
    checkTerminalUse(ctx, { interactive: true });
    const size = terminal?.size();
    if (size !== undefined) {
      try {
        await engine.resizePty(sandboxId, found.proc, size, { signal: ctx.signal });
      } catch (err) {
        if (!(err instanceof InvalidArgumentError)) throw err;
        throw new UsageError(`Process ${found.pid} is not on a terminal: -t attaches only to a process started with one`, { hint: "Drop -t to attach to its output and stdin" });
      }
    }
  }

  const detach = new AbortController();
  let detachedBy: string | undefined;
  const detachNow = (why: string): void => {
    detachedBy ??= why;
    detach.abort(new AbortedError(`Detached by ${why}`));
  };
  const restoreInterrupt = ctx.onInterrupt((signal) => detachNow(signal));
  const restoreMode = terminal !== undefined ? terminal.enterRaw() : () => {};
  let stopResize = (): void => {};
  let ended = false;
  try {
    const started = await engine.connectProcess(
      sandboxId,
      found.proc,
      { onStdout: (chunk) => passOn(io.stdout, chunk), onStderr: (chunk) => passOn(io.stderr, chunk) },
      { signal: detach.signal },
    );
    if (terminal !== undefined) {
      stopResize = terminal.onResize(() => {
        const size = terminal.size();
        // A resize that races the process's end has nothing left to resize.
        if (size !== undefined && !ended) engine.resizePty(sandboxId, found.proc, size).catch(() => {});
      });
    }
    const pump = mode.stdin ? pumpInput(ctx, engine, sandboxId, found, mode.tty ? new DetachKeys() : undefined, () => ended || detach.signal.aborted, detachNow) : Promise.resolve();
    let exit: ExitInfo;
    try {
      exit = await started.exit;
    } catch (err) {
      if (!detach.signal.aborted) throw err;
      restoreMode();
      out.note(`mvmctl: detached (${detachedBy ?? "interrupt"}); process ${found.pid} runs on`);
      return 0;
    } finally {
      ended = true;
      restoreMode();
      if (mode.stdin) io.stdin.destroy();
      await pump;
    }
    return exitCodeOf(exit);
  } finally {
    ended = true;
    restoreMode();
    stopResize();
    restoreInterrupt();
  }
}

/**
 * Copies mvmctl's stdin to the process's as it arrives. Its end is not passed on (the process's
 * stdin stays open for its other writers); a process without an open stdin is said once.
 */
async function pumpInput(
  ctx: CommandContext,
  engine: EngineApi,
  sandboxId: string,
  found: ProcessInfo,
  keys: DetachKeys | undefined,
  stopped: () => boolean,
  detachNow: (why: string) => void,
): Promise<void> {
  try {
    for await (const chunk of ctx.io.stdin) {
      if (stopped()) return;
      let bytes: Uint8Array = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
      let detach = false;
      if (keys !== undefined) ({ pass: bytes, detach } = keys.feed(bytes));
      for (let off = 0; off < bytes.byteLength; off += INPUT_CHUNK_BYTES) {
        await engine.writeStdin(sandboxId, found.proc, bytes.subarray(off, off + INPUT_CHUNK_BYTES));
        if (stopped()) return;
      }
      if (detach) return detachNow("Ctrl-P Ctrl-Q");
    }
  } catch (err) {
    // A process that ended has nowhere to put the rest of the input; one still running has no stdin.
    if (!(err instanceof NotFoundError) || stopped()) return;
    const running = await engine.listProcesses(sandboxId).then((list) => list.some((p) => p.proc === found.proc), () => false);
    if (running && !stopped()) ctx.out.note(`mvmctl: process ${found.pid} takes no input (it was started without stdin); following its output only`);
  }
}
