/**
 * The E2B control API on mvm's engine: create (template → image), connect, get info, list, kill
 * and set timeout. Only sandboxes this API created (label `e2b=1`) are visible through it, and
 * every request's `X-API-Key` must be a key the operator made (`mvmctl apikey create`).
 * Errors take E2B's shape, `{ "code": <http status>, "message": "..." }`.
 */
import { z } from "zod";
import { InvalidArgumentError, NotFoundError, type CreateSandboxRequest, type EngineApi, type SandboxInfo } from "@mvm/protocol";
import { accessTokenFor } from "./apikeys.js";
import { DEFAULT_TIMEOUT_SECONDS, type E2bConfig } from "./config.js";

/** The envd version this server speaks as: the SDK picks its requests' shapes from it. */
export const ENVD_VERSION = "0.5.2";
/** The label that marks a sandbox as made through this API, and the one that keeps its template. */
export const E2B_LABEL = "e2b";
export const TEMPLATE_LABEL = "e2b.template";

/** An E2B-shaped HTTP error. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const Metadata = z.record(z.string().min(1).max(64), z.string().max(256));
export const NewSandbox = z.strictObject({
  templateID: z.string().min(1).max(128),
  timeout: z.number().int().min(0).optional(),
  autoPause: z.boolean().optional(),
  autoPauseMemory: z.boolean().optional(),
  autoResume: z.unknown().optional(),
  secure: z.boolean().optional(),
  allow_internet_access: z.boolean().optional(),
  network: z.unknown().optional(),
  metadata: Metadata.optional(),
  envVars: z.record(z.string().min(1).max(256), z.string().max(128 * 1024)).optional(),
  mcp: z.unknown().optional(),
  iam: z.unknown().optional(),
  volumeMounts: z.unknown().optional(),
});
export const TimeoutBody = z.strictObject({ timeout: z.number().int().min(0) });
export const ConnectBody = z.strictObject({ timeout: z.number().int().min(0).optional(), memory: z.boolean().optional() });

function isLive(info: SandboxInfo): boolean {
  return info.state === "running" || info.state === "paused" || info.state === "starting";
}

/** The E2B API's view of the sandboxes of one engine. */
export class ControlApi {
  readonly #engine: EngineApi;
  readonly #config: E2bConfig;
  readonly #secret: Buffer;

  constructor(engine: EngineApi, config: E2bConfig, secret: Buffer) {
    this.#engine = engine;
    this.#config = config;
    this.#secret = secret;
  }

  #ttl(timeout: number | undefined): number {
    const limits = this.#config.timeoutSeconds ?? { default: DEFAULT_TIMEOUT_SECONDS, max: 24 * 3600 };
    const ttl = timeout === undefined ? limits.default : Math.max(timeout, 1);
    if (ttl > limits.max) throw new ApiError(400, `Timeout ${ttl} s is over this server's maximum of ${limits.max} s`);
    return ttl;
  }

  /** A live sandbox made through this API; 404 for anything else. */
  async #ours(id: string, signal: AbortSignal): Promise<SandboxInfo> {
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(id)) throw new ApiError(404, `Sandbox "${id.slice(0, 64)}" not found`);
    let info: SandboxInfo;
    try {
      info = await this.#engine.getSandbox(id, { signal });
    } catch (err) {
      if (err instanceof NotFoundError || err instanceof InvalidArgumentError) throw new ApiError(404, `Sandbox "${id}" not found`);
      throw err;
    }
    if (info.labels[E2B_LABEL] !== "1" || !isLive(info)) throw new ApiError(404, `Sandbox "${id}" not found`);
    return info;
  }

  /** Whether `id` is a live sandbox of this API (envd requests are routed only to those). */
  async isOurs(id: string, signal: AbortSignal): Promise<SandboxInfo | undefined> {
    try {
      return await this.#ours(id, signal);
    } catch (err) {
      if (err instanceof ApiError) return undefined;
      throw err;
    }
  }

  #created(info: SandboxInfo): Record<string, unknown> {
    return {
      templateID: info.labels[TEMPLATE_LABEL] ?? "",
      sandboxID: info.id,
      clientID: "mvm",
      envdVersion: ENVD_VERSION,
      envdAccessToken: accessTokenFor(this.#secret, info.id),
    };
  }

  #listed(info: SandboxInfo): Record<string, unknown> {
    const metadata: Record<string, string> = {};
    for (const [k, v] of Object.entries(info.labels)) if (k !== E2B_LABEL && k !== TEMPLATE_LABEL) metadata[k] = v;
    return {
      templateID: info.labels[TEMPLATE_LABEL] ?? "",
      sandboxID: info.id,
      clientID: "mvm",
      startedAt: info.createdAt,
      endAt: info.expiresAt,
      cpuCount: Math.max(1, Math.ceil(info.resources.cpus ?? 1)),
      memoryMB: info.resources.memoryMiB ?? 0,
      diskSizeMB: info.workMiB,
      metadata,
      state: info.state === "paused" ? "paused" : "running",
      envdVersion: ENVD_VERSION,
    };
  }

  /** POST /sandboxes, /v2/sandboxes */
  async create(body: unknown, signal: AbortSignal): Promise<Record<string, unknown>> {
    const msg = NewSandbox.parse(body);
    const refuse = (what: string): never => {
      throw new ApiError(400, `${what} is not supported by mvm's E2B API (see docs/E2B.md)`);
    };
    if (msg.allow_internet_access === true) refuse("allow_internet_access: true (mvm sandboxes deny egress unless an mvm network policy allows it)");
    if (msg.network !== undefined) refuse("network");
    if (msg.mcp !== undefined) refuse("mcp");
    if (msg.iam !== undefined) refuse("iam");
    if (msg.volumeMounts !== undefined) refuse("volumeMounts");
    if (msg.autoResume !== undefined) refuse("autoResume");
    if (msg.autoPauseMemory === false) refuse("autoPauseMemory: false");
    const image = Object.hasOwn(this.#config.templates, msg.templateID) ? this.#config.templates[msg.templateID] : undefined;
    if (image === undefined) throw new ApiError(404, `Template "${msg.templateID}" not found: this server maps ${Object.keys(this.#config.templates).map((t) => `"${t}"`).join(", ")}`);
    const labels: Record<string, string> = {};
    for (const [k, v] of Object.entries(msg.metadata ?? {})) {
      if (k === E2B_LABEL || k.startsWith(`${E2B_LABEL}.`)) throw new ApiError(400, `Metadata key "${k}" is reserved`);
      labels[k] = v;
    }
    labels[E2B_LABEL] = "1";
    labels[TEMPLATE_LABEL] = msg.templateID;
    const request: CreateSandboxRequest = { image, ttlSeconds: this.#ttl(msg.timeout), labels };
    if (this.#config.backend !== undefined) request.backend = this.#config.backend;
    if (msg.envVars !== undefined && Object.keys(msg.envVars).length > 0) request.env = msg.envVars;
    if (msg.autoPause === true) request.onTtl = "pause";
    return this.#created(await this.#engine.createSandbox(request, { signal }));
  }

  /** POST /v2/sandboxes/{id}/connect: resumes a paused sandbox; sets its timeout when given. */
  async connect(id: string, body: unknown, signal: AbortSignal): Promise<Record<string, unknown>> {
    const msg = ConnectBody.parse(body ?? {});
    if (msg.memory === false) throw new ApiError(400, "Resuming with a reboot (memory: false) is not supported by mvm's E2B API");
    let info = await this.#ours(id, signal);
    if (info.state === "paused") info = await this.#engine.resumeSandbox(id, { signal });
    if (msg.timeout !== undefined) info = await this.#engine.setSandboxTimeout(id, this.#ttl(msg.timeout), { signal });
    return this.#created(info);
  }

  /** GET /sandboxes/{id} */
  async get(id: string, signal: AbortSignal): Promise<Record<string, unknown>> {
    const info = await this.#ours(id, signal);
    return { ...this.#listed(info), envdAccessToken: accessTokenFor(this.#secret, info.id) };
  }

  /** GET /sandboxes, /v2/sandboxes, filtered by `metadata` (k=v&…, URL-encoded) and `state`. */
  async list(query: URLSearchParams, signal: AbortSignal): Promise<Record<string, unknown>[]> {
    const wantStates = (query.get("state") ?? "running,paused").split(",").filter((s) => s !== "");
    const wanted = new URLSearchParams(query.get("metadata") ?? "");
    const all = await this.#engine.listSandboxes({ signal });
    return all
      .filter((s) => s.labels[E2B_LABEL] === "1" && isLive(s))
      .map((s) => this.#listed(s))
      .filter((s) => wantStates.includes(s["state"] as string))
      .filter((s) => [...wanted].every(([k, v]) => (s["metadata"] as Record<string, string>)[k] === v));
  }

  /** DELETE /sandboxes/{id} */
  async kill(id: string, signal: AbortSignal): Promise<void> {
    await this.#ours(id, signal);
    await this.#engine.killSandbox(id, { signal });
  }

  /** POST /sandboxes/{id}/timeout: the sandbox ends `timeout` seconds from now. */
  async setTimeout(id: string, body: unknown, signal: AbortSignal): Promise<void> {
    const msg = TimeoutBody.parse(body);
    await this.#ours(id, signal);
    await this.#engine.setSandboxTimeout(id, this.#ttl(msg.timeout), { signal });
  }
}
