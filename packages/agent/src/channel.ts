/**
 * Opening the byte channel to the host. Kept free of the protocol package so main.ts can send
 * the hello before the schemas load.
 */
import { createReadStream, createWriteStream, fstatSync, openSync } from "node:fs";
import { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";

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
export const USAGE = "usage: agent --channel stdio|<device path>";

/** Parses the command line: `--channel stdio`, `--channel=<path>` or `--channel <path>`. */
export function parseArgs(args: readonly string[]): { channel: string } {
  let channel: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--channel") {
      if (i + 1 >= args.length) throw new Error(`Missing value for --channel; ${USAGE}`);
      channel = args[++i];
    }
    else if (arg.startsWith("--channel=")) channel = arg.slice("--channel=".length);
    else throw new Error(`Unknown argument ${JSON.stringify(arg)}; ${USAGE}`);
  }
  if (channel === undefined || channel === "") throw new Error(`Missing --channel; ${USAGE}`);
  if (channel !== "stdio" && !channel.startsWith("/")) {
    throw new Error(`Channel ${JSON.stringify(channel)} must be "stdio" or an absolute path`);
  }
  return { channel };
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
