/**
 * An in-memory EngineApi for testing the CLI's own logic (parsing, output, exit codes, stdin and
 * signal forwarding). It isolates nothing; the end-to-end tests use the real engine.
 */
import {
  NotFoundError,
  type BackendName,
  type CallOptions,
  type NetworkEvent,
  type NetworkEventsPage,
  type NetworkPolicyJson,
  type SecretMeta,
  type CreateSandboxRequest,
  type DirListingResult,
  type EngineApi,
  type ExecApiRequest,
  type ExecHandlers,
  type ExecStarted,
  type ExitInfo,
  type FileInfo,
  type FileReadStream,
  type HealthInfo,
  type ImageInfo,
  type ImageInspect,
  type KillSignal,
  type ProcessInfo,
  type PtySize,
  type ProgressEvent,
  type SandboxInfo,
  type Sha256Digest,
  type Tier,
  type WriteFileOptions,
  UnsupportedCapabilityError,
  type SignedPlan,
  type SnapshotInfo,
  type SnapshotApiRequest,
  type ForkApiRequest,
  type WarmPoolInfo,
  type WarmPoolRequest,
  type BundlePullInfo,
  type BundlePushInfo,
  type PullBundleRequest,
  type PushBundleRequest,
  type TreeWriteResult,
  type SandboxLogs,
} from "@mvm/protocol";

export const DIGEST = `sha256:${"ab".repeat(32)}` as Sha256Digest;

/** A process started by the fake engine; the test's script drives it. */
export class FakeProcess {
  readonly stdin: Uint8Array[] = [];
  readonly signals: KillSignal[] = [];
  stdinClosed = false;
  readonly #waiters: (() => void)[] = [];

  constructor(
    readonly request: ExecApiRequest,
    readonly handlers: ExecHandlers,
    readonly abortSignal: AbortSignal | undefined,
  ) {}

  /** Resolves at the next stdin write, stdin close or signal. */
  nextEvent(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
  /** Resolves once stdin has been closed by the host. */
  async stdinEnd(): Promise<void> {
    while (!this.stdinClosed) await this.nextEvent();
  }
  /** Resolves once a signal arrived; returns it. */
  async nextSignal(): Promise<KillSignal> {
    const seen = this.signals.length;
    while (this.signals.length === seen) await this.nextEvent();
    return this.signals[seen] as KillSignal;
  }
  notify(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
}

export type ExecScript = (p: FakeProcess) => Promise<Partial<ExitInfo>>;

export function exitInfo(sandboxId: string, partial: Partial<ExitInfo> = {}): ExitInfo {
  return {
    exitCode: 0,
    signal: null,
    timedOut: false,
    oomKilled: false,
    durationMs: 5,
    stdoutBytes: 0,
    stderrBytes: 0,
    stdoutTruncated: false,
    stderrTruncated: false,
    receipt: {
      sandboxId,
      proc: 1,
      imageDigest: DIGEST,
      backend: "namespace",
      startedAt: "2025-01-01T00:00:00.000Z",
      finishedAt: "2025-01-01T00:00:01.000Z",
    },
    ...partial,
  };
}

export class FakeEngine implements EngineApi {
  readonly calls: string[] = [];
  /** What listProcesses answers (and which processes connectProcess finds). */
  listed: ProcessInfo[] = [];
  /** What an attached client sees: the script writes through the handlers and returns the exit. */
  attachScript: (handlers: ExecHandlers) => Promise<Partial<ExitInfo>> = async () => ({});
  readonly sandboxes = new Map<string, SandboxInfo>();
  readonly snapshots = new Map<string, SnapshotInfo>();
  readonly files = new Map<string, Uint8Array>();
  readonly processes: FakeProcess[] = [];
  tier: Tier = "container";
  backend: BackendName = "namespace";
  images: ImageInfo[] = [{ digest: DIGEST, refs: ["debian:bookworm+python3"], sizeBytes: 123456, createdAt: "2025-01-01T00:00:00.000Z" }];
  progress: ProgressEvent[] = [];
  health_: HealthInfo = {
    version: "0.1.0",
    defaultBackend: "namespace",
    backends: [
      {
        backend: "namespace",
        tier: "container",
        usable: true,
        checks: [
          { name: "bwrap", ok: true, detail: "bubblewrap 0.8.0" },
          { name: "cgroup", ok: false, detail: "no memory controller", hint: "enable cgroup v2 delegation" },
        ],
        enforceable: { memory: true, pids: true, cpu: false },
      },
    ],
  };
  script: ExecScript = async () => ({});
  /** Byte count `readFile` announces; defaults to the stored size. */
  announcedSize: number | undefined;
  /** Byte count `writeFile` reports; defaults to the received size. */
  reportedWriteBytes: number | undefined;
  killError: Error | undefined;
  closed = false;
  /** The request of the last createSandbox call. */
  lastCreate: CreateSandboxRequest | undefined;
  #counter = 0;

  newSandbox(request: CreateSandboxRequest = {}): SandboxInfo {
    const n = this.#counter++;
    const id = `sbx_${"a".repeat(19)}${"abcdefghijklmnopqrstuvwxyz234567"[n % 32]}`;
    const info: SandboxInfo = {
      id,
      state: "running",
      backend: this.backend,
      tier: this.tier,
      image: { ref: request.image ?? "debian:bookworm+python3", digest: DIGEST },
      createdAt: "2025-01-01T00:00:00.000Z",
      expiresAt: "2025-01-01T00:30:00.000Z",
      resources: request.resources ?? {},
      workMiB: 512,
      labels: request.labels ?? {},
    };
    this.sandboxes.set(id, info);
    return info;
  }

  #get(id: string): SandboxInfo {
    const s = this.sandboxes.get(id);
    if (s === undefined) throw new NotFoundError(`Sandbox "${id}" not found`);
    return s;
  }

  async health(): Promise<HealthInfo> {
    this.calls.push("health");
    return this.health_;
  }
  async createSandbox(request: CreateSandboxRequest, options?: CallOptions & { onProgress?: (e: ProgressEvent) => void }): Promise<SandboxInfo> {
    this.calls.push("createSandbox");
    this.lastCreate = request;
    for (const e of this.progress) options?.onProgress?.(e);
    return this.newSandbox(request);
  }
  async planSandbox(): Promise<SignedPlan> {
    throw new UnsupportedCapabilityError("The fake engine signs no plans");
  }

  async getSandbox(id: string): Promise<SandboxInfo> {
    this.calls.push("getSandbox");
    return this.#get(id);
  }
  async listSandboxes(): Promise<SandboxInfo[]> {
    this.calls.push("listSandboxes");
    return [...this.sandboxes.values()];
  }
  async pauseSandbox(id: string, request: { ttl?: "running" | "frozen" } = {}): Promise<SandboxInfo> {
    this.calls.push(`pauseSandbox ${id} ${request.ttl ?? "running"}`);
    const s = this.#get(id);
    const paused: SandboxInfo = { ...s, state: "paused", pause: { since: s.createdAt, by: "caller", ttl: request.ttl ?? "running", killAt: s.expiresAt } };
    this.sandboxes.set(id, paused);
    return paused;
  }

  async setSandboxTimeout(id: string, ttlSeconds: number): Promise<SandboxInfo> {
    this.calls.push(`setSandboxTimeout ${id} ${ttlSeconds}`);
    const s = this.#get(id);
    const changed: SandboxInfo = { ...s, expiresAt: new Date(Date.now() + ttlSeconds * 1000).toISOString() };
    this.sandboxes.set(id, changed);
    return changed;
  }
  async resumeSandbox(id: string): Promise<SandboxInfo> {
    this.calls.push(`resumeSandbox ${id}`);
    const { pause: _pause, ...s } = this.#get(id);
    const resumed: SandboxInfo = { ...s, state: "running" };
    this.sandboxes.set(id, resumed);
    return resumed;
  }
  /** Records the call and keeps a snapshot record; `memory: true` on the container tier is refused as the engine does. */
  async snapshotSandbox(id: string, request: SnapshotApiRequest): Promise<SnapshotInfo> {
    this.calls.push(`snapshotSandbox ${id} ${JSON.stringify(request)}`);
    const s = this.#get(id);
    if (request.memory === true && s.tier === "container") throw new UnsupportedCapabilityError("Cannot snapshot memory on the container tier");
    const n = this.snapshots.size;
    const snap: SnapshotInfo = {
      id: `snap_${"b".repeat(19)}${"abcdefghijklmnopqrstuvwxyz234567"[n % 32]}`,
      digest: `sha256:${String(n % 10).repeat(64)}`,
      createdAt: "2025-01-01T00:10:00.000Z",
      ...("ttlSeconds" in request.retention ? { expiresAt: "2025-01-02T00:10:00.000Z" } : {}),
      retention: request.retention,
      tier: s.tier,
      memory: request.memory ?? s.tier !== "container",
      source: id,
      image: { digest: DIGEST },
      sizes: { work: { bytes: 8 << 20, storedBytes: 2 << 20, chunks: 4, zeroChunks: 3 } },
      labels: request.labels ?? {},
    };
    this.snapshots.set(snap.id, snap);
    return snap;
  }
  async forkSandbox(id: string, request: ForkApiRequest = {}): Promise<SandboxInfo[]> {
    this.calls.push(`forkSandbox ${id} ${request.count ?? 1}`);
    const parent = this.#get(id);
    return Array.from({ length: request.count ?? 1 }, () => this.newSandbox({ labels: parent.labels }));
  }
  readonly pools: WarmPoolInfo[] = [];
  poolRequest: WarmPoolRequest | undefined;
  async setWarmPool(request: WarmPoolRequest): Promise<WarmPoolInfo> {
    this.calls.push("setWarmPool");
    this.poolRequest = request;
    const info: WarmPoolInfo = {
      id: "pool_0123456789abcdef",
      size: request.size,
      ready: 0,
      starting: request.size,
      claimed: 0,
      backend: request.sandbox.backend ?? "namespace",
      tier: "container",
      image: { ref: request.sandbox.image ?? "debian:bookworm", digest: `sha256:${"1".repeat(64)}` },
      resources: { ...request.sandbox.resources },
      workMiB: 1024,
    };
    this.pools.splice(0, this.pools.length, ...(request.size > 0 ? [info] : []));
    return info;
  }
  async listWarmPools(): Promise<WarmPoolInfo[]> {
    return [...this.pools];
  }

  readonly bundleRequests: (PushBundleRequest | PullBundleRequest)[] = [];
  async pushBundle(request: PushBundleRequest): Promise<BundlePushInfo> {
    this.calls.push("pushBundle");
    this.bundleRequests.push(request);
    const digest = `sha256:${"b".repeat(64)}` as const;
    return { digest, uri: `${request.destination}@${digest}`, kind: request.source.startsWith("snap_") ? "snapshot" : "image", bytes: 1234, packs: 1, chunks: 2 };
  }
  async pullBundle(request: PullBundleRequest): Promise<BundlePullInfo> {
    this.calls.push("pullBundle");
    this.bundleRequests.push(request);
    return { digest: `sha256:${"b".repeat(64)}`, kind: "image", image: { digest: `sha256:${"1".repeat(64)}`, refs: ["bundle-1111111111111111"] }, fetchedBytes: 1234, packsFetched: 1, packs: 1, chunksReused: 0 };
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    this.calls.push("listSnapshots");
    return [...this.snapshots.values()];
  }
  async getSnapshot(ref: string): Promise<SnapshotInfo> {
    this.calls.push(`getSnapshot ${ref}`);
    return this.#snapshot(ref);
  }
  async deleteSnapshot(ref: string): Promise<void> {
    this.calls.push(`deleteSnapshot ${ref}`);
    this.snapshots.delete(this.#snapshot(ref).id);
  }
  #snapshot(ref: string): SnapshotInfo {
    for (const s of this.snapshots.values()) if (s.id === ref || s.digest === ref) return s;
    throw new NotFoundError(`Snapshot "${ref}" not found`);
  }

  async killSandbox(id: string): Promise<SandboxInfo> {
    this.calls.push(`killSandbox ${id}`);
    if (this.killError !== undefined) throw this.killError;
    const s = this.#get(id);
    const killed: SandboxInfo = { ...s, state: "stopped", endReason: "killed" };
    this.sandboxes.set(id, killed);
    return killed;
  }
  async exec(id: string, request: ExecApiRequest, handlers: ExecHandlers, options?: CallOptions): Promise<ExecStarted> {
    this.calls.push("exec");
    this.#get(id);
    const p = new FakeProcess(request, handlers, options?.signal);
    this.processes.push(p);
    const aborted = new Promise<never>((_, reject) => {
      options?.signal?.addEventListener("abort", () => reject(options.signal?.reason), { once: true });
    });
    const exit = Promise.race([this.script(p).then((partial) => exitInfo(id, partial)), aborted]);
    return { proc: 1, pid: 42, exit };
  }
  async signalProcess(_id: string, _proc: number, signal: KillSignal): Promise<void> {
    this.calls.push(`signalProcess ${signal}`);
    const p = this.processes.at(-1);
    p?.signals.push(signal);
    p?.notify();
  }
  async connectProcess(id: string, proc: number, handlers: ExecHandlers): Promise<ExecStarted> {
    this.calls.push(`connectProcess ${proc}`);
    const found = this.listed.find((p) => p.proc === proc);
    if (found === undefined) throw new NotFoundError(`Process ${proc} not found in sandbox "${id}"`);
    return { proc, pid: found.pid, exit: this.attachScript(handlers).then((partial) => exitInfo(id, partial)) };
  }
  async resizePty(_id: string, _proc: number, size: PtySize): Promise<void> {
    this.calls.push(`resizePty ${size.cols}x${size.rows}`);
  }
  async writeStdin(_id: string, _proc: number, data: Uint8Array | null): Promise<void> {
    const p = this.processes.at(-1);
    if (p === undefined) throw new NotFoundError("No process");
    if (data === null) p.stdinClosed = true;
    else p.stdin.push(Uint8Array.from(data));
    p.notify();
  }
  async listProcesses(): Promise<ProcessInfo[]> {
    return this.listed;
  }
  async readFile(id: string, path: string): Promise<FileReadStream> {
    this.calls.push("readFile");
    const data = this.files.get(`${id}:${path}`);
    if (data === undefined) throw new NotFoundError(`File "${path}" not found`);
    const size = this.announcedSize ?? data.byteLength;
    async function* body(): AsyncGenerator<Uint8Array> {
      for (let off = 0; off < data!.byteLength; off += 1000) yield data!.subarray(off, off + 1000);
    }
    return { size, body: body() };
  }
  async writeFile(id: string, path: string, data: Uint8Array | AsyncIterable<Uint8Array>, _options?: WriteFileOptions): Promise<{ bytes: number }> {
    this.calls.push("writeFile");
    this.#get(id);
    const chunks: Uint8Array[] = [];
    if (data instanceof Uint8Array) chunks.push(data);
    else for await (const c of data) chunks.push(Uint8Array.from(c));
    const all = Buffer.concat(chunks);
    this.files.set(`${id}:${path}`, all);
    return { bytes: this.reportedWriteBytes ?? all.byteLength };
  }
  async writeTree(): Promise<TreeWriteResult> {
    throw new UnsupportedCapabilityError("The fake engine holds no trees");
  }
  async readTree(): Promise<AsyncIterable<Uint8Array>> {
    throw new UnsupportedCapabilityError("The fake engine holds no trees");
  }
  async listDir(): Promise<DirListingResult> {
    return { entries: [], truncated: false };
  }
  async stat(id: string, path: string): Promise<FileInfo> {
    this.calls.push("stat");
    if (path === "/work") return { name: "work", type: "dir", size: 0, mode: 0o755, mtimeMs: 0 };
    const data = this.files.get(`${id}:${path}`);
    if (data === undefined) throw new NotFoundError(`File "${path}" not found`);
    return { name: path.split("/").at(-1) ?? "", type: "file", size: data.byteLength, mode: 0o644, mtimeMs: 0 };
  }
  async mkdir(): Promise<void> {}
  async remove(): Promise<void> {}
  async rename(): Promise<void> {}
  async listImages(): Promise<ImageInfo[]> {
    this.calls.push("listImages");
    return this.images;
  }
  async buildImage(ref: string, options?: CallOptions & { force?: boolean; onProgress?: (e: ProgressEvent) => void }): Promise<ImageInfo> {
    this.calls.push(`buildImage ${ref}${options?.force ? " force" : ""}`);
    for (const e of this.progress) options?.onProgress?.(e);
    return { digest: DIGEST, refs: [ref], sizeBytes: 1, createdAt: "2025-01-01T00:00:00.000Z" };
  }
  async pullImage(reference: string, options?: CallOptions & { onProgress?: (e: ProgressEvent) => void }): Promise<ImageInfo> {
    this.calls.push(`pullImage ${reference}`);
    for (const e of this.progress) options?.onProgress?.(e);
    return { digest: DIGEST, refs: [reference], sizeBytes: 1, createdAt: "2025-01-01T00:00:00.000Z" };
  }
  async importImage(path: string, name: string, options?: CallOptions & { onProgress?: (e: ProgressEvent) => void }): Promise<ImageInfo> {
    this.calls.push(`importImage ${path} ${name}`);
    for (const e of this.progress) options?.onProgress?.(e);
    return { digest: DIGEST, refs: [name], sizeBytes: 1, createdAt: "2025-01-01T00:00:00.000Z" };
  }
  readonly secretValues = new Map<string, { value: string; hosts: string[] }>();
  readonly policies = new Map<string, NetworkPolicyJson>();
  readonly networkLog = new Map<string, NetworkEvent[]>();

  async setNetworkPolicy(id: string, policy: NetworkPolicyJson): Promise<SandboxInfo> {
    const info = await this.getSandbox(id);
    this.policies.set(id, policy);
    const log = this.networkLog.get(id) ?? [];
    log.push({ type: "policy-changed", time: new Date(0).toISOString(), rulesBefore: 0, rulesAfter: policy.rules.length, policy, closedConnections: 0 });
    this.networkLog.set(id, log);
    return { ...info, network: { policy, revision: log.filter((e) => e.type === "policy-changed").length } };
  }
  async sandboxLogs(id: string): Promise<SandboxLogs> {
    this.calls.push(`sandboxLogs ${id}`);
    this.#get(id);
    return { lines: [{ source: "agent", text: "fake agent" }], truncated: false };
  }
  async publishPort(id: string, port: { guest: number; host?: number }): Promise<SandboxInfo> {
    this.calls.push(`publishPort ${id} ${port.guest}`);
    const s = this.#get(id);
    const ports = s.ports ?? [];
    const changed: SandboxInfo = ports.some((p) => p.guest === port.guest) ? s : { ...s, ports: [...ports, { guest: port.guest, host: port.host ?? 40000 + port.guest }] };
    this.sandboxes.set(id, changed);
    return changed;
  }
  async networkEvents(id: string, options: CallOptions & { after?: number; limit?: number } = {}): Promise<NetworkEventsPage> {
    await this.getSandbox(id);
    const after = options.after ?? 0;
    const all = (this.networkLog.get(id) ?? []).map((event, i) => ({ seq: i + 1, event }));
    const events = all.filter((e) => e.seq > after).slice(0, options.limit ?? 1000);
    return { events, next: events.at(-1)?.seq ?? after, dropped: 0 };
  }
  async listSecrets(): Promise<SecretMeta[]> {
    return [...this.secretValues].map(([name, s]) => ({ name, hosts: s.hosts, bytes: Buffer.byteLength(s.value), createdAt: new Date(0).toISOString(), updatedAt: new Date(0).toISOString() }));
  }
  async setSecret(name: string, value: string, options: CallOptions & { hosts?: readonly string[] } = {}): Promise<SecretMeta> {
    this.secretValues.set(name, { value, hosts: [...(options.hosts ?? [])] });
    return (await this.listSecrets()).find((s) => s.name === name)!;
  }
  async removeSecret(name: string): Promise<void> {
    if (!this.secretValues.delete(name)) throw new NotFoundError(`Secret "${name}" not found`);
  }

  async removeImage(ref: string): Promise<void> {
    this.calls.push(`removeImage ${ref}`);
  }
  async inspectImage(ref: string): Promise<ImageInspect> {
    this.calls.push(`inspectImage ${ref}`);
    const image = this.images.find((i) => i.refs.includes(ref) || i.digest === ref);
    if (!image) throw new NotFoundError(`Image "${ref}" not found`);
    return {
      ...image,
      source: { kind: "debian", detail: "mmdebstrap --variant=minbase --mode=unshare bookworm +python3" },
      provenance: {
        status: "verified",
        digest: `sha256:${"b".repeat(64)}`,
        keyId: `sha256:${"c".repeat(64)}`,
        record: {
          version: 1,
          imageDigest: image.digest,
          ref: "debian:bookworm+python3",
          suite: "bookworm",
          packages: ["python3"],
          installed: [{ package: "python3", version: "3.11.2-1+b1", architecture: "amd64" }],
          mirrors: ["deb http://deb.debian.org/debian bookworm main"],
          sourceDateEpoch: 1686355200,
          mmdebstrap: { version: "1.3.5", variant: "minbase", mode: "unshare" },
          builder: { boundary: "netns-unshare", user: "mvm-build", uid: 999 },
        },
      },
    };
  }
  async close(): Promise<void> {
    this.closed = true;
    this.calls.push("close");
  }
}
