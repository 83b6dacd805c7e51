/**
 * Pseudo-terminals for commands started with `pty`. The agent opens the master side of a new
 * terminal (/dev/ptmx) and keeps it; the runtime's helper (`/.mvm/bin/mvm-pty`, source
 * packages/engine/guest/mvm-pty.c) gets it as fd 3, makes the slave side the controlling
 * terminal of a new session and executes the command in its own process, so the command keeps
 * the pid, process group and exit status the agent tracks. The workload sees only the slave.
 * Resizing runs the helper again on the master (`mvm-pty resize`).
 */
import { spawn } from "node:child_process";
import { closeSync, constants, openSync, readSync } from "node:fs";
import { access } from "node:fs/promises";
import { dirname, join } from "node:path";
import { PassThrough, Writable, type Readable } from "node:stream";
import { ReadStream as TtyReadStream } from "node:tty";
import { InternalError, UnsupportedCapabilityError, type PtySize } from "@mvm/protocol";
import { boundMessage, describeErrno, errnoOf, quote } from "./errors.js";

/** Bytes of the helper's diagnostics kept in an error message. */
const MAX_HELPER_STDERR = 1024;
/** Longest a resize may take before it is reported as failed. */
const RESIZE_TIMEOUT_MS = 10_000;
/** Most bytes read from the master after libuv reported its end (see {@link ptyOutput}). */
export const MAX_PTY_DRAIN_BYTES = 1024 * 1024;
/** Size of one read of that drain: the kernel hands out at most its 4 KiB line buffer a read. */
const DRAIN_READ_BYTES = 64 * 1024;

/** The helper, beside the running agent bundle: `/.mvm/bin/mvm-pty` in a sandbox. */
export function ptyHelperPath(): string {
  return process.env["MVM_AGENT_PTY_HELPER"] ?? join(dirname(process.argv[1] ?? "/"), "bin", "mvm-pty");
}

/** A terminal's master side, opened and not yet handed to a stream. */
export interface Pty {
  readonly fd: number;
  /** Wraps the master in a non-blocking stream (read: terminal output; write: terminal input). Once. */
  open(): TtyReadStream;
  /** Closes the master if no stream owns it yet. */
  close(): void;
}

/**
 * Opens a new terminal's master side for `command` (named in errors).
 * @throws UnsupportedCapabilityError when the sandbox has no helper or no /dev/ptmx
 */
export async function openPty(command: string): Promise<Pty> {
  const helper = ptyHelperPath();
  try {
    await access(helper, constants.X_OK);
  } catch (err) {
    throw new UnsupportedCapabilityError(`Cannot start ${quote(command)} on a terminal: this sandbox's agent runtime has no terminal helper`, { cause: err });
  }
  let fd: number;
  try {
    fd = openSync("/dev/ptmx", constants.O_RDWR | constants.O_NOCTTY);
  } catch (err) {
    throw new UnsupportedCapabilityError(`Cannot start ${quote(command)} on a terminal: cannot open /dev/ptmx: ${describeErrno(errnoOf(err))}`, { cause: err });
  }
  let owned = false;
  return {
    fd,
    open() {
      owned = true;
      return new TtyReadStream(fd);
    },
    close() {
      if (owned) return;
      owned = true;
      closeSync(fd);
    },
  };
}

/** The file and arguments that run `argv` on the terminal whose master is passed as fd 3. */
export function ptyCommand(argv: readonly string[], size: PtySize): [string, string[]] {
  return [ptyHelperPath(), ["exec", String(size.cols), String(size.rows), "--", ...argv]];
}

/**
 * The terminal's output, as a stream that ends only after everything the command wrote was read.
 *
 * libuv (under Node's tty stream) reports the end of a stream when the poll says "hang up" right
 * after a read that did not fill its buffer, taking the short read to mean nothing is left. On a
 * terminal master a read returns at most what the line discipline holds (4 KiB), and the kernel
 * moves the rest of the command's output into it only after that read: so when the command wrote
 * and exited at once, libuv ended the stream with that output still in the kernel, and it was
 * lost (seen as the last lines of a short command missing, or everything after the first 4 KiB).
 * At that end this reads the master synchronously until the kernel says EIO (nothing left; the
 * slave side is closed, so a read returns data or EIO at once), at most MAX_PTY_DRAIN_BYTES, and
 * only then ends. An EIO error from the stream itself comes from a read that found nothing left.
 */
export function ptyOutput(master: TtyReadStream, fd: number): Readable {
  const out = new PassThrough();
  master.pipe(out, { end: false });
  master.once("end", () => {
    // The stream has not closed its descriptor yet: 'end' comes before its own teardown.
    if (!master.destroyed) for (const chunk of drainMaster(fd)) out.write(chunk);
    out.end();
  });
  master.on("error", (err) => {
    if (errnoOf(err) === "EIO") out.end();
    else out.destroy(err);
  });
  return out;
}

/** What the kernel still holds on a master whose slave side is closed; stops at EIO, EAGAIN or the bound. */
export function drainMaster(fd: number, maxBytes = MAX_PTY_DRAIN_BYTES): Buffer[] {
  const chunks: Buffer[] = [];
  let total = 0;
  while (total < maxBytes) {
    const buf = Buffer.allocUnsafe(Math.min(DRAIN_READ_BYTES, maxBytes - total));
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch {
      break;
    }
    if (n <= 0) break;
    chunks.push(buf.subarray(0, n));
    total += n;
  }
  return chunks;
}

/**
 * Terminal input as a Writable for StdinSink: writes go to the master; ending it leaves the
 * terminal open (a terminal has no end of input, only the bytes the line discipline reads as one).
 */
export function ptyInput(master: TtyReadStream): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (master.destroyed) callback(new Error("The terminal is closed"));
      else master.write(chunk, (err) => callback(err ?? null));
    },
    final(callback) {
      callback();
    },
  });
}

/** Sets the window size of the terminal whose master is `fd`. */
export function resizePty(fd: number, size: PtySize): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(ptyHelperPath(), ["resize", String(size.cols), String(size.rows)], {
      stdio: ["ignore", "ignore", "pipe", fd],
      timeout: RESIZE_TIMEOUT_MS,
      killSignal: "SIGKILL",
    });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (text: string) => {
      if (stderr.length < MAX_HELPER_STDERR) stderr += text.slice(0, MAX_HELPER_STDERR - stderr.length);
    });
    child.once("error", (err) => reject(new InternalError(`Cannot resize the terminal: ${describeErrno(errnoOf(err))}`, { cause: err })));
    child.once("close", (code, signal) => {
      if (code === 0) resolve();
      else reject(new InternalError(boundMessage(`Cannot resize the terminal: ${stderr.trim() || `helper ended with ${signal ?? `code ${code}`}`}`)));
    });
  });
}
