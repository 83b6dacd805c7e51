/**
 * Opening the byte channel to the host. Takes nothing from the protocol package but the line
 * constants, so main.ts can send the hello before the schemas load.
 */
import { createReadStream, createWriteStream, fstatSync, openSync } from "node:fs";
import { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";
// The protocol package declares no side effects, so the bundler keeps its schemas out of here.
import { AGENT_READY_LINE, AGENT_START_LINE } from "@mvm/protocol";

export interface Channel {
  readonly input: Readable;
  readonly output: Writable;
  /**
   * True when the channel is a device or file read on Node's thread pool (e.g. /dev/vport0p1).
   * A read blocked there makes process.exit wait forever, so the agent ends itself with SIGKILL.
   */
  readonly blocksExit: boolean;
}

/** Read size for channels backed by a file descriptor that is not a socket or pipe, in bytes. */
const READ_CHUNK_BYTES = 64 * 1024;

/** The usage line printed for bad arguments. */
export const USAGE = "usage: agent --channel stdio|<device path> [--await-start] [--relay <path>]";

/** The line the agent writes once loaded when started with --await-start. */
export const READY_LINE = AGENT_READY_LINE;
/** The line the host writes to let an --await-start agent say hello. */
export const START_LINE = AGENT_START_LINE;

/**
 * Parses the command line: `--channel stdio`, `--channel=<path>` or `--channel <path>`,
 * `--await-start` (load everything, write READY_LINE, wait for START_LINE, then say hello: how
 * the VM tier boots an agent once and saves it, ready, for later sandboxes), and
 * `--relay <path>` / `--relay=<path>` (the egress relay channel, see relay.ts).
 */
export function parseArgs(args: readonly string[]): { channel: string; awaitStart: boolean; relay?: string } {
  let channel: string | undefined;
  let relay: string | undefined;
  let awaitStart = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--await-start") awaitStart = true;
    else if (arg === "--channel" || arg === "--relay") {
      if (i + 1 >= args.length) throw new Error(`Missing value for ${arg}; ${USAGE}`);
      if (arg === "--channel") channel = args[++i];
      else relay = args[++i];
    }
    else if (arg.startsWith("--channel=")) channel = arg.slice("--channel=".length);
    else if (arg.startsWith("--relay=")) relay = arg.slice("--relay=".length);
    else throw new Error(`Unknown argument ${JSON.stringify(arg)}; ${USAGE}`);
  }
  if (channel === undefined || channel === "") throw new Error(`Missing --channel; ${USAGE}`);
  if (channel !== "stdio" && !channel.startsWith("/")) {
    throw new Error(`Channel ${JSON.stringify(channel)} must be "stdio" or an absolute path`);
  }
  if (relay !== undefined && !relay.startsWith("/")) {
    throw new Error(`Relay channel ${JSON.stringify(relay)} must be an absolute path`);
  }
  return relay === undefined ? { channel, awaitStart } : { channel, awaitStart, relay };
}

/**
 * Resolves once `input` has delivered exactly START_LINE; anything else (other bytes, end of
 * input) rejects. Bytes after the line are put back for the protocol reader.
 */
export function awaitStartLine(input: Readable): Promise<void> {
  const want = Buffer.from(START_LINE);
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const finish = (err?: Error): void => {
      input.off("data", onData);
      input.off("end", onEnd);
      input.off("error", onError);
      input.pause();
      if (err) reject(err);
      else resolve();
    };
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const n = Math.min(got.length, want.length);
      if (!got.subarray(0, n).equals(want.subarray(0, n))) return finish(new Error("unexpected bytes before the start line"));
      if (got.length < want.length) return;
      const rest = got.subarray(want.length);
      finish();
      if (rest.length > 0) input.unshift(rest);
    };
    const onEnd = (): void => finish(new Error("the channel closed before the start line"));
    const onError = (err: Error): void => finish(err);
    input.on("data", onData);
    input.once("end", onEnd);
    input.once("error", onError);
  });
}

/**
 * Opens the channel: "stdio" reads fd 0 and writes fd 1; a path (e.g. /dev/vport0p1) is opened
 * read/write and used in both directions.
 */
export function openChannel(spec: string): Channel {
  if (spec === "stdio") return { input: readerFor(0), output: writerFor(1), blocksExit: !isStreamFd(0) };
  const fd = openSync(spec, "r+");
  return { input: readerFor(fd), output: writerFor(fd), blocksExit: !isStreamFd(fd) };
}

function isStreamFd(fd: number): boolean {
  const st = fstatSync(fd);
  return st.isSocket() || st.isFIFO();
}

function readerFor(fd: number): Readable {
  if (isStreamFd(fd)) return new Socket({ fd, readable: true, writable: false, allowHalfOpen: true });
  return createReadStream("", { fd, autoClose: false, highWaterMark: READ_CHUNK_BYTES });
}

function writerFor(fd: number): Writable {
  if (isStreamFd(fd)) return new Socket({ fd, readable: false, writable: true, allowHalfOpen: true });
  return createWriteStream("", { fd, autoClose: false });
}
