/**
 * Choosing the engine: a daemon on a Unix socket, or the engine embedded in this process.
 */
import { existsSync } from "node:fs";
import { NotFoundError, TransportError, type CallOptions, type EngineApi } from "@mvm/protocol";
import { DaemonClient, type DaemonClientOptions } from "./daemon-client.js";
import { openEmbeddedEngine, type EmbeddedEngine, type EngineImporter } from "./embedded.js";
import { resolveSocketPath } from "./socket-path.js";
import { RecordingEngine, recorderFromEnv } from "./recording.js";

/** The RecordingEngine of `mode: "record"` in this process. */
let sharedRecorder: RecordingEngine | undefined;

/**
 * `daemon`: use the daemon, fail when it does not answer. `embedded`: run the engine in this
 * process. `auto`: a daemon when one was named ({@link ConnectEngineOptions.socketPath} or
 * $MVM_DAEMON_SOCKET, then it must answer) or listens on the default socket; embedded when
 * nothing listens there (no socket file, or a stale one). A daemon on the default socket that
 * answers too slowly or wrongly is an error, never a silent switch to embedded. `record`: a
 * RecordingEngine that boots nothing (record mode; see recording.ts). When MVM_RECORD_FILE is set
 * every mode gives the process's one RecordingEngine, whose recording is written there at exit.
 */
export type EngineMode = "auto" | "daemon" | "embedded" | "record";

/** An engine handle as the SDK hands it out; `transport` says which kind it is. */
export type EngineConnection = DaemonClient | EmbeddedEngine | RecordingEngine;

export interface ConnectEngineOptions extends CallOptions {
  /** @default "auto" */
  mode?: EngineMode;
  /** Daemon socket. @default $MVM_DAEMON_SOCKET, else defaultSocketPath() */
  socketPath?: string;
  /** Settings of the daemon client (timeouts, caps). */
  daemon?: Omit<DaemonClientOptions, "socketPath">;
  /** Passed to the engine's `openEngine()` when an embedded engine is opened. */
  engineOptions?: object;
}

/** What `connectEngine` depends on, injectable in tests. */
export interface ConnectDeps {
  importEngine?: EngineImporter;
  env?: NodeJS.ProcessEnv;
  uid?: number;
}

/** Deadline of the ping that checks a daemon answers, in milliseconds. */
const PROBE_TIMEOUT_MS = 5_000;

/**
 * Connects to an engine. The caller owns the result: `close()` a daemon client when done. An
 * embedded engine is shared by the whole process and closed at exit; closing it stops it for
 * every user in the process.
 *
 * @example
 * const engine = await connectEngine();            // daemon if one runs, else embedded
 * const d = await connectEngine({ mode: "daemon", socketPath: "/run/mvm/mvmd.sock" });
 * console.log(engine.transport, (await engine.health()).defaultBackend);
 * @throws TransportError when a named daemon does not answer
 * @throws UnsupportedCapabilityError in embedded mode when @mvm/engine is not installed
 */
export function connectEngine(options: ConnectEngineOptions = {}): Promise<EngineConnection> {
  return selectEngine(options, {});
}

/** {@link connectEngine} with its dependencies injectable. */
export async function selectEngine(options: ConnectEngineOptions, deps: ConnectDeps): Promise<EngineConnection> {
  const mode = options.mode ?? "auto";
  const recorder = recorderFromEnv(deps.env ?? process.env);
  if (recorder !== undefined) return recorder;
  if (mode === "record") return (sharedRecorder ??= new RecordingEngine());
  const embedded = (): Promise<EmbeddedEngine> =>
    openEmbeddedEngine({
      ...(options.engineOptions === undefined ? {} : { engineOptions: options.engineOptions }),
      ...(deps.importEngine === undefined ? {} : { importEngine: deps.importEngine }),
    });
  if (mode === "embedded") return embedded();

  const socket = resolveSocketPath(options.socketPath, deps.env ?? process.env, deps.uid);
  const mustAnswer = mode === "daemon" || socket.explicit;
  if (!mustAnswer && !existsSync(socket.path)) return embedded();

  const client = new DaemonClient({ ...options.daemon, socketPath: socket.path });
  const probe: CallOptions = { timeoutMs: options.timeoutMs ?? PROBE_TIMEOUT_MS };
  if (options.signal !== undefined) probe.signal = options.signal;
  try {
    // A daemon older than /v1/ping answers NOT_FOUND to it: then its health says it is there.
    await client.ping(probe).catch(async (err: unknown) => {
      if (!(err instanceof NotFoundError)) throw err;
      await client.health(probe);
    });
    return client;
  } catch (err) {
    await client.close();
    if (!mustAnswer && nobodyListens(err)) return embedded();
    if (err instanceof TransportError && nobodyListens(err)) {
      throw new TransportError(`No daemon answers on "${socket.path}"`, { cause: err, hint: "Start one with: mvmctl daemon" });
    }
    throw err;
  }
}

/** True for a connection refused, or a socket file that is gone. */
function nobodyListens(err: unknown): boolean {
  if (!(err instanceof TransportError)) return false;
  const code = (err.cause as NodeJS.ErrnoException | undefined)?.code;
  return code === "ECONNREFUSED" || code === "ENOENT";
}

/** Connection settings every Sandbox entry point accepts. */
export interface ConnectionOptions {
  /** An engine to use as is; the other connection settings are then ignored. */
  engine?: EngineApi;
  /** @default "auto" */
  mode?: EngineMode;
  /** Daemon socket. @default $MVM_DAEMON_SOCKET, else defaultSocketPath() */
  socketPath?: string;
  /** Passed to the engine's `openEngine()` when an embedded engine is opened. */
  engineOptions?: object;
}

const decisions = new Map<string, Promise<"embedded" | DaemonClient | RecordingEngine>>();

/**
 * The engine for `options`, shared across calls: a given engine as is, one daemon client per
 * socket, and the process's embedded engine. The choice made for a mode and socket is kept.
 */
export async function sharedEngine(options: ConnectionOptions & CallOptions, deps: ConnectDeps = {}): Promise<EngineApi> {
  if (options.engine !== undefined) return options.engine;
  const recorder = recorderFromEnv(deps.env ?? process.env);
  if (recorder !== undefined) return recorder;
  const key = `${options.mode ?? "auto"}\0${options.socketPath ?? ""}`;
  let decision = decisions.get(key);
  if (decision === undefined) {
    const connectOptions: ConnectEngineOptions = {};
    for (const k of ["mode", "socketPath", "engineOptions", "signal", "timeoutMs"] as const) {
      if (options[k] !== undefined) (connectOptions as Record<string, unknown>)[k] = options[k];
    }
    const pending = selectEngine(connectOptions, deps).then((engine) => (engine.transport === "embedded" ? "embedded" : engine));
    decisions.set(key, pending);
    pending.catch(() => {
      if (decisions.get(key) === pending) decisions.delete(key);
    });
    decision = pending;
  }
  const chosen = await decision;
  if (chosen !== "embedded") return chosen;
  return openEmbeddedEngine({
    ...(options.engineOptions === undefined ? {} : { engineOptions: options.engineOptions }),
    ...(deps.importEngine === undefined ? {} : { importEngine: deps.importEngine }),
  });
}

/** Forgets the shared choices (tests). */
export function resetSharedEngines(): void {
  decisions.clear();
}
