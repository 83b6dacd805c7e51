/**
 * `DaemonClient`: the EngineApi spoken over the daemon's HTTP+JSON API on a Unix socket. Every
 * answer is size-bounded and schema-checked; error bodies become the typed error classes,
 * connection failures TransportError, deadlines TimeoutError, aborts AbortedError.
 */
import { Agent } from "node:http";
import {
  AbortedError,
  ExecEvent,
  MAX_API_JSON_BYTES,
  TransportError,
  fromWire,
  type CallOptions,
  type CreateSandboxRequest,
  type DirListingResult,
  type EngineApi,
  type ExecApiRequest,
  type ExecHandlers,
  type ExecStarted,
  type FileInfo,
  type FileReadStream,
  type HealthInfo,
  type ImageInfo,
  type ImageInspect,
  type KillSignal,
  type PauseApiRequest,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type ProcessInfo,
  type PtySize,
  type SecretMeta,
  type ProgressEvent,
  type SandboxInfo,
  type WriteFileOptions,
  type SignedPlan,
  type AuditReceiptRef,
  type SnapshotInfo,
  type SnapshotApiRequest,
  type ForkApiRequest,
  type WarmPoolInfo,
  type WarmPoolRequest,
  type BundlePullInfo,
  type BundlePushInfo,
  type PullBundleRequest,
  type PushBundleRequest,
  MAX_FORK_COUNT,
  TreeWriteResult,
  type TreeOptions,
  type PortSpec,
  SandboxLogs,
  type LogSource,
} from "@mvm/protocol";
import type { z } from "zod";
import { CallScope } from "./_internal/call-scope.js";
import { errorFrom, expectEmpty, expectJson, isSuccess, ndjsonValues, validate } from "./_internal/body.js";
import { release, send, type Exchange, type HttpCall, type HttpTarget } from "./_internal/http.js";
import { followExec, readProgressStream } from "./_internal/streams.js";
import { filesPath, jsonBody, processPath, sandboxPath, snapshotPath } from "./_internal/paths.js";
import * as wire from "./_internal/wire.js";

export interface DaemonClientOptions {
  /** Absolute path of the daemon's Unix socket. */
  socketPath: string;
  /**
   * Deadline of calls that answer promptly (all but createSandbox, snapshotSandbox, forkSandbox,
   * buildImage, exec, readFile and writeFile, which run as long as their work does), in
   * milliseconds. A call's own `timeoutMs` wins.
   * @default 60000
   */
  requestTimeoutMs?: number;
  /** Time allowed between sending a request and receiving the answer's headers, in milliseconds. @default 60000 */
  headersTimeoutMs?: number;
  /** Largest JSON answer buffered, in bytes. @default MAX_API_JSON_BYTES (32 MiB) */
  maxJsonBytes?: number;
  /** Longest NDJSON line accepted, in bytes. @default 1048576 (1 MiB) */
  maxLineBytes?: number;
}

/** Largest stdin write sent in one request, in bytes; longer writes are split. */
const STDIN_REQUEST_BYTES = 4 * 1024 * 1024;
/** An idle connection is closed after this long, ms: well before the daemon's keep-alive timeout (5 s). */
const IDLE_CONNECTION_MS = 2_000;
/** Idle connections kept open for the next calls. */
const MAX_IDLE_CONNECTIONS = 4;

/**
 * An EngineApi backed by a running daemon (`mvmctl daemon`).
 *
 * @example
 * const engine = new DaemonClient({ socketPath: "/run/mvm/mvmd.sock" });
 * console.log((await engine.health()).defaultBackend);
 * await engine.close();
 */
export class DaemonClient implements EngineApi {
  readonly transport = "daemon" as const;
  readonly socketPath: string;
  readonly #target: HttpTarget;
  readonly #requestTimeoutMs: number;
  readonly #maxJsonBytes: number;
  readonly #maxLineBytes: number;
  readonly #inFlight = new Set<CallScope>();
  #closed = false;

  constructor(options: DaemonClientOptions) {
    this.socketPath = options.socketPath;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.#maxJsonBytes = options.maxJsonBytes ?? MAX_API_JSON_BYTES;
    this.#maxLineBytes = options.maxLineBytes ?? 1024 * 1024;
    this.#target = {
      socketPath: options.socketPath,
      // Connections are kept for the next call: the daemon checks a connection's peer once, when
      // it is accepted, so a fresh connection per call would cost that check every time. Idle
      // ones are closed before the daemon's own 5 s keep-alive would close them under a request.
      agent: new Agent({ keepAlive: true, timeout: IDLE_CONNECTION_MS, maxFreeSockets: MAX_IDLE_CONNECTIONS }),
      headersTimeoutMs: options.headersTimeoutMs ?? 60_000,
    };
  }

  /** Resolves when the daemon answers (it probes nothing): how connectEngine checks there is one. */
  async ping(options?: CallOptions): Promise<{ version: string }> {
    return this.#json("ping", options, { method: "GET", path: "/v1/ping" }, wire.PingSchema);
  }

  health(options?: CallOptions): Promise<HealthInfo> {
    return this.#json("health", options, { method: "GET", path: "/v1/health" }, wire.HealthInfoSchema);
  }

  createSandbox(
    request: CreateSandboxRequest,
    options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {},
  ): Promise<SandboxInfo> {
    const call = { method: "POST", path: "/v1/sandboxes", ...jsonBody(request) } as const;
    return this.#progressStream("createSandbox", options, call, wire.CreateStreamLine, (line) => (line as { sandbox: SandboxInfo }).sandbox);
  }

  planSandbox(request: CreateSandboxRequest, options: CallOptions & { validForSeconds?: number } = {}): Promise<SignedPlan> {
    const body = { request, ...(options.validForSeconds !== undefined ? { validForSeconds: options.validForSeconds } : {}) };
    return this.#json("planSandbox", options, { method: "POST", path: "/v1/plans", ...jsonBody(body) }, wire.SignedPlan);
  }

  getSandbox(id: string, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("getSandbox", options, { method: "GET", path: sandboxPath(id) }, wire.SandboxInfo);
  }

  async listSandboxes(options?: CallOptions): Promise<SandboxInfo[]> {
    const r = await this.#json<{ sandboxes: SandboxInfo[] }>("listSandboxes", options, { method: "GET", path: "/v1/sandboxes" }, wire.SandboxListSchema);
    return r.sandboxes;
  }

  killSandbox(id: string, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("killSandbox", options, { method: "DELETE", path: sandboxPath(id) }, wire.SandboxInfo);
  }

  pauseSandbox(id: string, request: PauseApiRequest = {}, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("pauseSandbox", options, { method: "POST", path: `${sandboxPath(id)}/pause`, ...jsonBody(request) }, wire.SandboxInfo);
  }

  setSandboxTimeout(id: string, ttlSeconds: number, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("setSandboxTimeout", options, { method: "POST", path: `${sandboxPath(id)}/timeout`, ...jsonBody({ ttlSeconds }) }, wire.SandboxInfo);
  }

  resumeSandbox(id: string, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("resumeSandbox", options, { method: "POST", path: `${sandboxPath(id)}/resume`, ...jsonBody({}) }, wire.SandboxInfo);
  }

  /**
   * Takes a snapshot of the sandbox. Runs as long as the capture does (no default deadline, like
   * createSandbox): the daemon answers as an NDJSON stream, so only the call's own `timeoutMs`
   * or `signal` ends it early.
   */
  async snapshotSandbox(id: string, request: SnapshotApiRequest, options: CallOptions = {}): Promise<SnapshotInfo> {
    const call = { method: "POST", path: `${sandboxPath(id)}/snapshots`, ...jsonBody(request) } as const;
    const snapshot = await this.#progressStream("snapshotSandbox", options, call, wire.SnapshotStreamLine, (line) => (line as { snapshot: SnapshotInfo }).snapshot);
    if (snapshot.source !== id) {
      throw new TransportError(`Call "snapshotSandbox" to the daemon at "${this.socketPath}" answered a snapshot of "${snapshot.source}", not of "${id}"`);
    }
    return snapshot;
  }

  /**
   * Starts `count` sandboxes from the sandbox's current state (no default deadline, like
   * createSandbox). An answer with another number of sandboxes than asked for, or one naming the
   * parent or a child twice, is a TransportError.
   */
  async forkSandbox(id: string, request: ForkApiRequest = {}, options: CallOptions = {}): Promise<SandboxInfo[]> {
    const call = { method: "POST", path: `${sandboxPath(id)}/fork`, ...jsonBody(request) } as const;
    const expected = request.count ?? 1;
    // One line carries every child: allow a full line per child.
    const maxLineBytes = Math.min(this.#maxJsonBytes, this.#maxLineBytes * Math.max(1, Math.min(expected, MAX_FORK_COUNT)));
    const sandboxes = await this.#progressStream(
      "forkSandbox",
      options,
      call,
      wire.ForkStreamLine,
      (line) => (line as { sandboxes: SandboxInfo[] }).sandboxes,
      maxLineBytes,
    );
    const describe = `Call "forkSandbox" to the daemon at "${this.socketPath}"`;
    if (sandboxes.length !== expected) throw new TransportError(`${describe} answered ${sandboxes.length} sandboxes for ${expected} asked for`);
    // Each child is handed out as a sandbox to kill when done: none may be the parent or another child.
    const ids = new Set(sandboxes.map((s) => s.id));
    if (ids.size !== sandboxes.length || ids.has(id)) throw new TransportError(`${describe} answered sandboxes that are not distinct new sandboxes`);
    return sandboxes;
  }

  /** Sets a warm pool (may build its image: no default deadline, like createSandbox). */
  async setWarmPool(request: WarmPoolRequest, options: CallOptions = {}): Promise<WarmPoolInfo> {
    const call = { method: "PUT", path: "/v1/pools", ...jsonBody(request) } as const;
    return this.#progressStream("setWarmPool", options, call, wire.PoolStreamLine, (line) => (line as { pool: WarmPoolInfo }).pool);
  }

  async listWarmPools(options?: CallOptions): Promise<WarmPoolInfo[]> {
    const r = await this.#json<{ pools: WarmPoolInfo[] }>("listWarmPools", options, { method: "GET", path: "/v1/pools" }, wire.WarmPoolList);
    return r.pools;
  }

  /** Pushes a bundle (reads the whole snapshot and image: no default deadline, like createSandbox). */
  async pushBundle(request: PushBundleRequest, options: CallOptions = {}): Promise<BundlePushInfo> {
    const call = { method: "POST", path: "/v1/bundles/push", ...jsonBody(request) } as const;
    return this.#progressStream("pushBundle", options, call, wire.BundlePushStreamLine, (line) => (line as { bundle: BundlePushInfo }).bundle);
  }

  /** Pulls a bundle by digest (downloads and verifies: no default deadline). */
  async pullBundle(request: PullBundleRequest, options: CallOptions = {}): Promise<BundlePullInfo> {
    const call = { method: "POST", path: "/v1/bundles/pull", ...jsonBody(request) } as const;
    return this.#progressStream("pullBundle", options, call, wire.BundlePullStreamLine, (line) => (line as { bundle: BundlePullInfo }).bundle);
  }

  async listSnapshots(options?: CallOptions): Promise<SnapshotInfo[]> {
    const r = await this.#json<{ snapshots: SnapshotInfo[] }>("listSnapshots", options, { method: "GET", path: "/v1/snapshots" }, wire.SnapshotList);
    return r.snapshots;
  }

  /** A snapshot by id or digest; an answer naming another snapshot is a TransportError. */
  async getSnapshot(ref: string, options?: CallOptions): Promise<SnapshotInfo> {
    const snapshot = await this.#json<SnapshotInfo>("getSnapshot", options, { method: "GET", path: snapshotPath(ref) }, wire.SnapshotInfo);
    if (snapshot.id !== ref && snapshot.digest !== ref) {
      throw new TransportError(`Call "getSnapshot" to the daemon at "${this.socketPath}" answered snapshot "${snapshot.id}" for "${ref}"`);
    }
    return snapshot;
  }

  async deleteSnapshot(ref: string, options?: CallOptions): Promise<void> {
    return this.#empty("deleteSnapshot", options, { method: "DELETE", path: snapshotPath(ref) });
  }

  /**
   * Starts a process and resolves once it runs; output reaches `handlers` until `exit` settles.
   * The answer is read only as fast as the handlers take it: one that returns a promise holds its
   * stream (and, through the daemon, the process's output) until the promise settles.
   * The call's `signal` and `timeoutMs` cover the whole run: ending the call early drops the stream,
   * which kills a process that is not `background`. A handler that throws ends the call the same way,
   * and `exit` rejects with what it threw.
   */
  exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted> {
    return this.#followProcess("exec", options, { method: "POST", path: `${sandboxPath(id)}/exec`, ...jsonBody(request) }, handlers, "before the process started");
  }

  signalProcess(id: string, proc: number, signal: KillSignal, options?: CallOptions): Promise<void> {
    return this.#empty("signalProcess", options, { method: "POST", path: `${processPath(id, proc)}/signal`, ...jsonBody({ signal }) });
  }

  /** Writes to stdin in requests of at most 4 MiB each; `null` closes stdin. */
  async writeStdin(id: string, proc: number, data: Uint8Array | null, options?: CallOptions): Promise<void> {
    const path = `${processPath(id, proc)}/stdin`;
    const headers = { "Content-Type": "application/octet-stream" };
    if (data === null) return this.#empty("writeStdin", options, { method: "POST", path: `${path}?close=1`, headers });
    let at = 0;
    do {
      const body = data.subarray(at, at + STDIN_REQUEST_BYTES);
      await this.#empty("writeStdin", options, { method: "POST", path, headers, body });
      at += STDIN_REQUEST_BYTES;
    } while (at < data.byteLength);
  }

  /** Attaches to a running process: one NDJSON stream, like exec's; leaving it only detaches. */
  connectProcess(id: string, proc: number, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted> {
    return this.#followProcess("connectProcess", options, { method: "POST", path: `${processPath(id, proc)}/connect` }, handlers, "before attaching", proc);
  }

  /**
   * Sends `call`, whose answer is a process's NDJSON event stream: resolves on its "started" event
   * (which must name `proc` when given), and follows the rest into `handlers` until `exit` settles.
   */
  async #followProcess(
    name: string,
    options: CallOptions | undefined,
    call: Omit<HttpCall, "scope">,
    handlers: ExecHandlers,
    beforeWhat: string,
    proc?: number,
  ): Promise<ExecStarted> {
    const scope = this.#open(name, options, false);
    let following = false;
    let events: AsyncGenerator<unknown, void, undefined> | undefined;
    try {
      const ex = await this.#send(scope, call);
      if (!isSuccess(ex)) throw await errorFrom(ex, scope, this.#maxJsonBytes);
      events = ndjsonValues(ex, scope, this.#maxLineBytes);
      const first = await events.next();
      if (first.done === true) throw new TransportError(`${scope.describe} ended its stream ${beforeWhat}`);
      const event = validate<ExecEvent>(ExecEvent, first.value, scope);
      if (event.type === "error") throw fromWire(event.error);
      if (event.type !== "started") throw new TransportError(`${scope.describe} sent "${event.type}" before "started"`);
      if (proc !== undefined && event.proc !== proc) throw new TransportError(`${scope.describe} attached to process ${event.proc}, not ${proc}`);
      following = true;
      const exit = followExec(events, handlers, scope).finally(() => this.#done(scope));
      exit.catch(() => {});
      return { proc: event.proc, pid: event.pid, exit };
    } catch (err) {
      throw scope.fail(err);
    } finally {
      if (!following) {
        await events?.return();
        this.#done(scope);
      }
    }
  }

  resizePty(id: string, proc: number, size: PtySize, options?: CallOptions): Promise<void> {
    return this.#empty("resizePty", options, { method: "POST", path: `${processPath(id, proc)}/resize`, ...jsonBody({ cols: size.cols, rows: size.rows }) });
  }

  async listProcesses(id: string, options?: CallOptions): Promise<ProcessInfo[]> {
    const r = await this.#json<{ processes: ProcessInfo[] }>("listProcesses", options, { method: "GET", path: `${sandboxPath(id)}/processes` }, wire.ProcessList);
    return r.processes;
  }

  /**
   * Opens a file for reading. `body` streams as fast as it is consumed; it must be iterated (or
   * returned early) to release the connection. Its length must equal `size` or it throws TransportError.
   */
  async readFile(id: string, path: string, options?: CallOptions): Promise<FileReadStream> {
    const scope = this.#open("readFile", options, false);
    let handedOver = false;
    try {
      const ex = await this.#send(scope, { method: "GET", path: filesPath(id, "content", { path }) });
      if (!isSuccess(ex)) throw await errorFrom(ex, scope, this.#maxJsonBytes);
      const declared = ex.res.headers["content-length"];
      const size = declared !== undefined && /^[0-9]{1,16}$/.test(declared) ? Number(declared) : Number.NaN;
      if (!Number.isSafeInteger(size)) {
        release(ex);
        ex.req.destroy();
        throw new TransportError(`${scope.describe} answered without a valid Content-Length`);
      }
      handedOver = true;
      return { size, body: this.#fileBody(ex, scope, size) };
    } catch (err) {
      throw scope.fail(err);
    } finally {
      if (!handedOver) this.#done(scope);
    }
  }

  async *#fileBody(ex: Exchange, scope: CallScope, size: number): AsyncGenerator<Uint8Array, void, undefined> {
    let received = 0;
    try {
      for await (const chunk of ex.res as AsyncIterable<Buffer>) {
        received += chunk.byteLength;
        if (received > size) throw new TransportError(`${scope.describe} sent more than the ${size} bytes announced`);
        yield chunk;
      }
      if (received !== size) throw new TransportError(`${scope.describe} sent ${received} of the ${size} bytes announced`);
    } catch (err) {
      throw scope.fail(err);
    } finally {
      release(ex);
      this.#done(scope);
    }
  }

  /** Streams `data` to the file, reading the next chunk only when the socket has drained. */
  async writeFile(
    id: string,
    path: string,
    data: Uint8Array | AsyncIterable<Uint8Array>,
    options: WriteFileOptions = {},
  ): Promise<{ bytes: number; receipt?: AuditReceiptRef }> {
    const query: Record<string, string> = { path };
    if (options.mode !== undefined) query.mode = options.mode.toString(8);
    if (options.createParents !== undefined) query.createParents = options.createParents ? "1" : "0";
    const headers: Record<string, string> = { "Content-Type": "application/octet-stream" };
    if (data instanceof Uint8Array) headers["Content-Length"] = String(data.byteLength);
    const call = { method: "PUT", path: filesPath(id, "content", query), headers, body: data } as const;
    const r = await this.#json<{ bytes: number; receipt?: AuditReceiptRef }>("writeFile", options, call, wire.WriteResultSchema, false);
    return r.receipt ? { bytes: r.bytes, receipt: r.receipt } : { bytes: r.bytes };
  }

  /** Streams the tar archive `tar` to the daemon, which unpacks it into `path`. */
  writeTree(id: string, path: string, tar: AsyncIterable<Uint8Array>, options: TreeOptions = {}): Promise<TreeWriteResult> {
    const call = { method: "PUT", path: filesPath(id, "tree", treeQuery(path, options)), headers: { "Content-Type": "application/x-tar" }, body: tar } as const;
    return this.#json("writeTree", options, call, TreeWriteResult, false);
  }

  /**
   * Opens the directory `path` as a tar stream. The body must be iterated (or returned early) to
   * release the connection; a connection cut midway throws TransportError.
   */
  async readTree(id: string, path: string, options: TreeOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    const scope = this.#open("readTree", options, false);
    let handedOver = false;
    try {
      const ex = await this.#send(scope, { method: "GET", path: filesPath(id, "tree", treeQuery(path, options)) });
      if (!isSuccess(ex)) throw await errorFrom(ex, scope, this.#maxJsonBytes);
      handedOver = true;
      return this.#treeBody(ex, scope);
    } catch (err) {
      throw scope.fail(err);
    } finally {
      if (!handedOver) this.#done(scope);
    }
  }

  async *#treeBody(ex: Exchange, scope: CallScope): AsyncGenerator<Uint8Array, void, undefined> {
    try {
      for await (const chunk of ex.res as AsyncIterable<Buffer>) yield chunk;
      if (!ex.res.complete) throw new TransportError(`${scope.describe} ended the archive early`);
    } catch (err) {
      throw scope.fail(err);
    } finally {
      release(ex);
      this.#done(scope);
    }
  }

  listDir(id: string, path: string, options?: CallOptions): Promise<DirListingResult> {
    return this.#json("listDir", options, { method: "GET", path: filesPath(id, "list", { path }) }, wire.DirListing);
  }

  stat(id: string, path: string, options?: CallOptions): Promise<FileInfo> {
    return this.#json("stat", options, { method: "GET", path: filesPath(id, "stat", { path }) }, wire.FileInfo);
  }

  mkdir(id: string, path: string, recursive: boolean, options?: CallOptions): Promise<void> {
    return this.#empty("mkdir", options, { method: "POST", path: filesPath(id, "mkdir"), ...jsonBody({ path, recursive }) });
  }

  remove(id: string, path: string, recursive: boolean, options?: CallOptions): Promise<void> {
    const query = { path, recursive: recursive ? "1" : "0" };
    return this.#empty("remove", options, { method: "DELETE", path: `${sandboxPath(id)}/files?${new URLSearchParams(query)}` });
  }

  rename(id: string, from: string, to: string, options?: CallOptions): Promise<void> {
    return this.#empty("rename", options, { method: "POST", path: filesPath(id, "rename"), ...jsonBody({ from, to }) });
  }

  setNetworkPolicy(id: string, policy: NetworkPolicyJson, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("setNetworkPolicy", options, { method: "PUT", path: `${sandboxPath(id)}/network/policy`, ...jsonBody(policy) }, wire.SandboxInfo);
  }

  sandboxLogs(id: string, options: CallOptions & { source?: LogSource; tail?: number; after?: string } = {}): Promise<SandboxLogs> {
    const query = new URLSearchParams();
    if (options.source !== undefined) query.set("source", options.source);
    if (options.tail !== undefined) query.set("tail", String(options.tail));
    if (options.after !== undefined) query.set("after", options.after);
    const qs = query.size > 0 ? `?${query}` : "";
    return this.#json("sandboxLogs", options, { method: "GET", path: `${sandboxPath(id)}/logs${qs}` }, SandboxLogs);
  }

  publishPort(id: string, port: PortSpec, options?: CallOptions): Promise<SandboxInfo> {
    return this.#json("publishPort", options, { method: "POST", path: `${sandboxPath(id)}/ports`, ...jsonBody(port) }, wire.SandboxInfo);
  }

  networkEvents(id: string, options: CallOptions & { after?: number; limit?: number } = {}): Promise<NetworkEventsPage> {
    const query = new URLSearchParams();
    if (options.after !== undefined) query.set("after", String(options.after));
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    const qs = query.size > 0 ? `?${query}` : "";
    return this.#json("networkEvents", options, { method: "GET", path: `${sandboxPath(id)}/network/events${qs}` }, wire.NetworkEventsPageSchema);
  }

  async listSecrets(options?: CallOptions): Promise<SecretMeta[]> {
    const r = await this.#json<{ secrets: SecretMeta[] }>("listSecrets", options, { method: "GET", path: "/v1/secrets" }, wire.SecretListSchema);
    return r.secrets;
  }

  setSecret(name: string, value: string, options: CallOptions & { hosts?: readonly string[] } = {}): Promise<SecretMeta> {
    const body = options.hosts ? { value, hosts: [...options.hosts] } : { value };
    return this.#json("setSecret", options, { method: "PUT", path: `/v1/secrets/${encodeURIComponent(name)}`, ...jsonBody(body) }, wire.SecretMetaSchema);
  }

  removeSecret(name: string, options?: CallOptions): Promise<void> {
    return this.#empty("removeSecret", options, { method: "DELETE", path: `/v1/secrets/${encodeURIComponent(name)}` });
  }

  async listImages(options?: CallOptions): Promise<ImageInfo[]> {
    const r = await this.#json<{ images: ImageInfo[] }>("listImages", options, { method: "GET", path: "/v1/images" }, wire.ImageListSchema);
    return r.images;
  }

  buildImage(
    ref: string,
    options: CallOptions & { force?: boolean; onProgress?: (event: ProgressEvent) => void } = {},
  ): Promise<ImageInfo> {
    const body = options.force === undefined ? { ref } : { ref, force: options.force };
    const call = { method: "POST", path: "/v1/images/build", ...jsonBody(body) } as const;
    return this.#progressStream("buildImage", options, call, wire.BuildStreamLine, (line) => (line as { image: ImageInfo }).image);
  }

  importImage(
    path: string,
    name: string,
    options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {},
  ): Promise<ImageInfo> {
    const call = { method: "POST", path: "/v1/images/import", ...jsonBody({ path, name }) } as const;
    return this.#progressStream("importImage", options, call, wire.BuildStreamLine, (line) => (line as { image: ImageInfo }).image);
  }

  pullImage(reference: string, options: CallOptions & { onProgress?: (event: ProgressEvent) => void } = {}): Promise<ImageInfo> {
    const call = { method: "POST", path: "/v1/images/pull", ...jsonBody({ reference }) } as const;
    return this.#progressStream("pullImage", options, call, wire.BuildStreamLine, (line) => (line as { image: ImageInfo }).image);
  }

  inspectImage(ref: string, options?: CallOptions): Promise<ImageInspect> {
    return this.#json<ImageInspect>("inspectImage", options, { method: "GET", path: `/v1/images/inspect?${new URLSearchParams({ ref })}` }, wire.ImageInspectSchema);
  }

  removeImage(ref: string, options?: CallOptions): Promise<void> {
    return this.#empty("removeImage", options, { method: "DELETE", path: `/v1/images?${new URLSearchParams({ ref })}` });
  }

  /**
   * Aborts every call in flight (AbortedError) and makes new calls fail (TransportError).
   * The daemon and its sandboxes keep running.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const scope of [...this.#inFlight]) scope.abort(new AbortedError(`The client for "${this.socketPath}" was closed`));
    this.#target.agent.destroy();
  }

  #open(op: string, options: CallOptions | undefined, prompt: boolean): CallScope {
    const scope = new CallScope(`Call "${op}" to the daemon at "${this.socketPath}"`, options, prompt ? this.#requestTimeoutMs : undefined);
    if (this.#closed) {
      scope.abort(new TransportError(`The client for "${this.socketPath}" is closed`));
    }
    this.#inFlight.add(scope);
    return scope;
  }

  #done(scope: CallScope): void {
    scope.dispose();
    this.#inFlight.delete(scope);
  }

  #send(scope: CallScope, call: Omit<HttpCall, "scope">): Promise<Exchange> {
    return send(this.#target, { ...call, scope });
  }

  async #json<T>(op: string, options: CallOptions | undefined, call: Omit<HttpCall, "scope">, schema: z.core.$ZodType, prompt = true): Promise<T> {
    const scope = this.#open(op, options, prompt);
    try {
      return await expectJson<T>(await this.#send(scope, call), scope, schema, this.#maxJsonBytes);
    } catch (err) {
      throw scope.fail(err);
    } finally {
      this.#done(scope);
    }
  }

  async #empty(op: string, options: CallOptions | undefined, call: Omit<HttpCall, "scope">): Promise<void> {
    const scope = this.#open(op, options, true);
    try {
      await expectEmpty(await this.#send(scope, call), scope, this.#maxJsonBytes);
    } catch (err) {
      throw scope.fail(err);
    } finally {
      this.#done(scope);
    }
  }

  /** An NDJSON answer of `progress` lines ending in one `result` (or `error`) line. */
  async #progressStream<T>(
    op: string,
    options: CallOptions & { onProgress?: (event: ProgressEvent) => void },
    call: Omit<HttpCall, "scope">,
    schema: z.core.$ZodType,
    pick: (line: unknown) => T,
    maxLineBytes = this.#maxLineBytes,
  ): Promise<T> {
    const scope = this.#open(op, options, false);
    try {
      const ex = await this.#send(scope, { ...call, headers: { ...call.headers, Accept: "application/x-ndjson" } });
      if (!isSuccess(ex)) throw await errorFrom(ex, scope, this.#maxJsonBytes);
      return await readProgressStream(ndjsonValues(ex, scope, maxLineBytes), scope, schema, options.onProgress, pick);
    } catch (err) {
      throw scope.fail(err);
    } finally {
      this.#done(scope);
    }
  }
}

function treeQuery(path: string, options: TreeOptions): Record<string, string> {
  const query: Record<string, string> = { path };
  if (options.maxEntries !== undefined) query.maxEntries = String(options.maxEntries);
  if (options.maxBytes !== undefined) query.maxBytes = String(options.maxBytes);
  return query;
}
