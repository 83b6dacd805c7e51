/**
 * The in-sandbox end of the egress relay. Workloads reach the network only through the proxy
 * address (127.0.0.1:3128); every connection accepted there becomes a stream on the relay channel
 * to the host's egress gateway, which decides what it may reach. In the other direction the host
 * opens streams naming a guest port, and the relay connects them to 127.0.0.1:<port>.
 *
 * The channel is a Unix socket (namespace backend, /dev/mvm-relay) or a virtio-serial port device
 * (VM backend). Node opens both close-on-exec, so workloads never inherit them.
 *
 * For a snapshot the relay can be paused (whole frames are held back and what was written drains
 * to the host), resumed, or reset: a restored copy talks to a new host relay, so the multiplexer
 * starts over on the same channel and every connection relayed through the old one is reset.
 */
import { closeSync, createReadStream, createWriteStream, fstatSync, openSync, statSync } from "node:fs";
import { Socket, connect, createServer, type Server } from "node:net";
import { Writable, type Duplex, type Readable } from "node:stream";
import { EGRESS_PROXY_HOST, EGRESS_PROXY_PORT, RelayMux, type RelayStreamInfo } from "@mvm/protocol";

export interface RelayOptions {
  /** Absolute path of the relay channel: a Unix socket or a character device. */
  readonly channelPath: string;
  /** @default "127.0.0.1" */
  readonly listenHost?: string;
  /** Port of the proxy listener; 0 picks a free one. @default 3128 */
  readonly listenPort?: number;
  /** Limit on connecting to a socket channel, in milliseconds. @default 10000 */
  readonly connectTimeoutMs?: number;
  /** Aborts starting the relay. */
  readonly signal?: AbortSignal;
  /** Called once if the relay channel fails (a protocol error from the host, an I/O error). */
  readonly onError?: (err: Error) => void;
}

export interface Relay {
  /** The port the proxy listener is bound to. */
  readonly port: number;
  /** Settles when the relay has stopped: the channel closed or failed, or close() was called. */
  readonly closed: Promise<void>;
  /** Stops listening, drops every relayed connection and closes the channel. */
  close(): Promise<void>;
  /**
   * Holds every frame not yet handed to the channel (whole frames only) and resolves once the
   * channel has taken everything written before. Connections stay open; their data waits.
   */
  pause(): Promise<void>;
  /** Lets held frames go out again. */
  resume(): void;
  /**
   * Starts over with a new multiplexer on the same channel and listener (the channel now leads
   * to a new host relay): every relayed connection is reset and held frames are dropped.
   */
  reset(): void;
}

interface OpenChannel {
  readonly input: Readable;
  readonly output: Writable;
  dispose(): void;
}

/** Limit on connecting a host-opened stream to a guest port, in milliseconds. */
const GUEST_CONNECT_TIMEOUT_MS = 10_000;
/** Read size for device channels, in bytes. */
const READ_CHUNK_BYTES = 64 * 1024;

/**
 * Starts the relay: opens the channel, then listens on the proxy address.
 *
 * @example
 * const relay = await startRelay({ channelPath: "/dev/mvm-relay" });
 * // ... later
 * await relay.close();
 */
export async function startRelay(options: RelayOptions): Promise<Relay> {
  const channel = await openRelayChannel(options.channelPath, options.connectTimeoutMs ?? 10_000, options.signal);
  const sockets = new Set<Socket>();
  let resolveClosed!: () => void;
  const closed = new Promise<void>((resolve) => (resolveClosed = resolve));
  let gate = new OutputGate(channel.output);
  const newMux = (): RelayMux => {
    const m = new RelayMux(channel.input, gate, { role: "guest" });
    m.on("stream", (stream: Duplex, info: RelayStreamInfo) => connectGuestPort(stream, info, sockets));
    m.on("error", (err: Error) => {
      if (m === mux) options.onError?.(err);
    });
    // Only the current multiplexer's end stops the relay; one replaced by reset() closes quietly.
    m.once("close", () => {
      if (m === mux) void stop().then(resolveClosed);
    });
    return m;
  };
  let mux = newMux();
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    let stream: Duplex;
    try {
      stream = mux.open();
    } catch {
      socket.resetAndDestroy();
      return;
    }
    track(sockets, socket);
    splice(socket, stream);
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    if (stopping) return stopping;
    let resolveStopped!: () => void;
    stopping = new Promise<void>((resolve) => (resolveStopped = resolve));
    mux.close("The relay is shutting down");
    // A reset tells each workload its connection is gone, not merely finished.
    for (const s of sockets) s.resetAndDestroy();
    channel.dispose();
    if (server.listening) server.close(() => resolveStopped());
    else resolveStopped();
    return stopping;
  };

  try {
    await listen(server, options.listenHost ?? EGRESS_PROXY_HOST, options.listenPort ?? EGRESS_PROXY_PORT, options.signal);
  } catch (err) {
    await stop();
    throw err;
  }
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  // The channel may have gone while the listener was starting.
  if (stopping) await new Promise<void>((resolve) => server.close(() => resolve()));
  const reset = (): void => {
    if (stopping) return;
    const old = mux;
    const oldGate = gate;
    gate = new OutputGate(channel.output);
    mux = newMux();
    old.close("The sandbox was restored from a snapshot: its relay was reset");
    oldGate.discard();
    for (const s of sockets) s.resetAndDestroy();
    // The old multiplexer paused the input as it closed.
    channel.input.resume();
  };
  return {
    port,
    closed,
    close: stop,
    pause: () => (stopping ? Promise.resolve() : gate.hold()),
    resume: () => gate.release(),
    reset,
  };
}

/**
 * The multiplexer's output, passed through to the channel one whole frame (one write) at a time,
 * except while held: then frames wait here, and the multiplexer sees a full output and stops
 * sending Data. Ending it does not end the channel, which outlives a reset.
 */
class OutputGate extends Writable {
  #held = false;
  #waiting: (() => void) | undefined;
  #discarded = false;
  readonly #onChannelError = (err: Error): void => void this.destroy(err);

  constructor(private readonly channel: Writable) {
    super();
    channel.on("error", this.#onChannelError);
  }

  /** Holds later frames; resolves once the channel has taken everything passed to it. */
  hold(): Promise<void> {
    this.#held = true;
    if (this.#discarded || this.channel.destroyed) return Promise.resolve();
    // Writes complete in order, so an empty one completes after every earlier one.
    return new Promise((resolve) => this.channel.write(Buffer.alloc(0), () => resolve()));
  }

  release(): void {
    this.#held = false;
    const go = this.#waiting;
    this.#waiting = undefined;
    go?.();
  }

  /** Drops what is held and anything written later (the multiplexer it served is gone). */
  discard(): void {
    this.#discarded = true;
    this.channel.off("error", this.#onChannelError);
    this.release();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#pass([chunk], callback);
  }

  /** A frame written as header and payload arrives here whole, in one call. */
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.#pass(
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  #pass(chunks: Buffer[], callback: (err?: Error | null) => void): void {
    const go = (): void => {
      if (this.#discarded || this.channel.destroyed) return callback();
      let ok = true;
      if (chunks.length === 1) ok = this.channel.write(chunks[0]!);
      else {
        this.channel.cork();
        for (const chunk of chunks) ok = this.channel.write(chunk);
        this.channel.uncork();
      }
      if (ok) callback();
      else this.channel.once("drain", () => callback());
    };
    if (this.#held && !this.#discarded) this.#waiting = go;
    else go();
  }

  override _final(callback: (err?: Error | null) => void): void {
    callback();
  }
}

/** Connects a host-opened stream to 127.0.0.1:<port> inside the sandbox. */
function connectGuestPort(stream: Duplex, info: RelayStreamInfo, sockets: Set<Socket>): void {
  const port = info.port;
  if (port === undefined) return void stream.destroy(new Error("A host stream without a port"));
  const socket = connect({ host: EGRESS_PROXY_HOST, port, allowHalfOpen: true });
  track(sockets, socket);
  const onEarlyError = (err: NodeJS.ErrnoException): void => {
    const reason = err.code === "ECONNREFUSED" ? `connection refused to guest port ${port}` : `cannot connect to guest port ${port}: ${err.code ?? err.message}`;
    stream.destroy(new Error(reason, { cause: err }));
  };
  const onStreamError = (): void => {
    socket.off("error", onEarlyError);
    socket.on("error", () => {});
    socket.destroy();
  };
  const onTimeout = (): void => {
    socket.destroy(Object.assign(new Error("connect timed out"), { code: "ETIMEDOUT" }));
  };
  socket.setTimeout(GUEST_CONNECT_TIMEOUT_MS, onTimeout);
  socket.once("error", onEarlyError);
  stream.once("error", onStreamError);
  socket.once("connect", () => {
    socket.setTimeout(0);
    socket.off("timeout", onTimeout);
    socket.off("error", onEarlyError);
    stream.off("error", onStreamError);
    splice(socket, stream);
  });
}

/**
 * Pipes a TCP socket and a relay stream into each other, passing half-closes through. An error
 * on either side destroys both; a reset from the host resets the TCP connection.
 */
function splice(socket: Socket, stream: Duplex): void {
  socket.pipe(stream);
  stream.pipe(socket);
  socket.on("error", (err) => stream.destroy(err));
  stream.on("error", () => {
    if (!socket.destroyed) socket.resetAndDestroy();
  });
  socket.on("close", () => {
    if (!stream.writableEnded || !stream.readableEnded) stream.destroy();
  });
  stream.on("close", () => {
    if (!socket.destroyed && (!socket.writableEnded || !socket.readableEnded)) socket.resetAndDestroy();
  });
}

function track(sockets: Set<Socket>, socket: Socket): void {
  sockets.add(socket);
  socket.once("close", () => sockets.delete(socket));
}

function listen(server: Server, host: string, port: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      server.off("listening", onListening);
      server.off("error", done);
      signal?.removeEventListener("abort", onAbort);
      if (err) reject(new Error(`Cannot listen for egress on ${host}:${port}: ${err.message}`, { cause: err }));
      else resolve();
    };
    const onListening = (): void => done();
    const onAbort = (): void => done(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
    if (signal?.aborted) return onAbort();
    server.once("listening", onListening);
    server.once("error", done);
    signal?.addEventListener("abort", onAbort, { once: true });
    server.listen(port, host);
  });
}

/** Opens the channel: a Unix socket is connected to; anything else is opened read/write. */
async function openRelayChannel(path: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<OpenChannel> {
  if (!path.startsWith("/")) throw new Error(`Relay channel ${JSON.stringify(path)} must be an absolute path`);
  let isSocket: boolean;
  try {
    isSocket = statSync(path).isSocket();
  } catch (err) {
    throw new Error(`Cannot open the relay channel ${JSON.stringify(path)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
  if (isSocket) {
    const socket = await connectUnix(path, timeoutMs, signal);
    return { input: socket, output: socket, dispose: () => socket.destroy() };
  }
  const fd = openSync(path, "r+");
  try {
    const st = fstatSync(fd);
    if (st.isFIFO()) {
      const socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
      return { input: socket, output: socket, dispose: () => socket.destroy() };
    }
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  // Devices are read on the thread pool; the descriptor is closed once, by dispose.
  const input = createReadStream("", { fd, autoClose: false, highWaterMark: READ_CHUNK_BYTES });
  const output = createWriteStream("", { fd, autoClose: false });
  let open = true;
  return {
    input,
    output,
    dispose() {
      if (!open) return;
      open = false;
      input.destroy();
      output.destroy();
      try {
        closeSync(fd);
      } catch {
        // Already closed by the kernel side going away; nothing left to release.
      }
    },
  };
}

function connectUnix(path: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<Socket> {
  const combined = signal ? AbortSignal.any([AbortSignal.timeout(timeoutMs), signal]) : AbortSignal.timeout(timeoutMs);
  return new Promise((resolve, reject) => {
    const socket = connect({ path, allowHalfOpen: true });
    const done = (err?: Error): void => {
      socket.off("connect", onConnect);
      socket.off("error", done);
      combined.removeEventListener("abort", onAbort);
      if (err) {
        socket.destroy();
        reject(new Error(`Cannot connect to the relay channel ${JSON.stringify(path)}: ${err.message}`, { cause: err }));
      } else resolve(socket);
    };
    const onConnect = (): void => done();
    const onAbort = (): void => done(combined.reason instanceof Error ? combined.reason : new Error("aborted"));
    if (combined.aborted) return onAbort();
    socket.once("connect", onConnect);
    socket.once("error", done);
    combined.addEventListener("abort", onAbort, { once: true });
  });
}
