/**
 * The daemon's HTTP API as an OpenAPI 3.1 document, generated from the same zod schemas the
 * daemon validates requests with and the SDK validates answers with. `scripts/openapi.mjs`
 * writes it to docs/openapi.json; a test fails when the committed file differs.
 *
 * Contract for clients in any language (docs/PROTOCOL.md, "API versioning"): requests are
 * strict (an unknown field is INVALID_ARGUMENT); answers may gain fields within `v1`, which
 * clients ignore; a field is never removed or retyped within `v1`.
 */
import { z } from "zod";
import {
  API_VERSION,
  ApiErrorBody,
  BuildImageApiRequest,
  CreateSandboxRequest,
  DirListing,
  ExecApiRequest,
  ExecEvent,
  ImportImageApiRequest,
  MkdirApiRequest,
  PauseApiRequest,
  PlanApiRequest,
  ProcessList,
  RenameApiRequest,
  SandboxInfo,
  SignalApiRequest,
} from "./api.js";
import {
  BuildStreamLine,
  CreateStreamLine,
  HealthInfoSchema,
  ImageInfoSchema,
  ImageListSchema,
  NetworkEventsPageSchema,
  PingSchema,
  ProgressEventSchema,
  SandboxListSchema,
  SecretListSchema,
  SecretMetaSchema,
  SetSecretApiRequest,
  WriteResultSchema,
} from "./api-responses.js";
import { FileInfo } from "./messages.js";
import { NetworkPolicySchema } from "./network-policy.js";
import { SignedPlan } from "./plan.js";
import { WarmPoolInfo, WarmPoolList, WarmPoolRequest } from "./pool-api.js";
import { ForkApiRequest, MAX_FORK_COUNT, SnapshotApiRequest, SnapshotInfo, SnapshotList } from "./snapshot-api.js";

type Schema = z.core.$ZodType;
type Method = "get" | "put" | "post" | "delete";

interface Operation {
  readonly method: Method;
  readonly path: string;
  readonly id: string;
  readonly summary: string;
  readonly body?: Schema | "octets";
  readonly query?: readonly { name: string; required: boolean; description: string }[];
  /** JSON answer; `ndjson`: the stream line schema when the client sends `Accept: application/x-ndjson`. */
  readonly ok: { status: number; json?: Schema; ndjson?: Schema; octets?: true } | { status: 204 };
}

/** An NDJSON answer of `progress` lines ending in one `result` (carrying `key`) or `error` line. */
function progressStream(key: string, result: Schema): Schema {
  return z.discriminatedUnion("type", [
    z.strictObject({ type: z.literal("progress"), event: ProgressEventSchema }),
    z.strictObject({ type: z.literal("result"), [key]: result }),
    z.strictObject({ type: z.literal("error"), error: ApiErrorBody.shape.error }),
  ]);
}

const pathQuery = [{ name: "path", required: true, description: "Absolute path inside the sandbox" }];

/** Every route of the daemon, in the order docs/PROTOCOL.md lists them. */
const OPERATIONS: readonly Operation[] = [
  { method: "get", path: "/v1/ping", id: "ping", summary: "That the daemon answers (probes nothing)", ok: { status: 200, json: PingSchema } },
  { method: "get", path: "/v1/health", id: "health", summary: "Backends and host checks", ok: { status: 200, json: HealthInfoSchema } },
  {
    method: "post",
    path: "/v1/sandboxes",
    id: "createSandbox",
    summary: "Create a sandbox (201 JSON, or an NDJSON progress stream when asked for)",
    body: CreateSandboxRequest,
    ok: { status: 201, json: SandboxInfo, ndjson: CreateStreamLine },
  },
  { method: "get", path: "/v1/sandboxes", id: "listSandboxes", summary: "List sandboxes", ok: { status: 200, json: SandboxListSchema } },
  { method: "post", path: "/v1/plans", id: "planSandbox", summary: "Sign an execution plan for a create request", body: PlanApiRequest, ok: { status: 200, json: SignedPlan } },
  { method: "get", path: "/v1/sandboxes/{id}", id: "getSandbox", summary: "One sandbox", ok: { status: 200, json: SandboxInfo } },
  { method: "delete", path: "/v1/sandboxes/{id}", id: "killSandbox", summary: "Kill a sandbox", ok: { status: 200, json: SandboxInfo } },
  { method: "post", path: "/v1/sandboxes/{id}/pause", id: "pauseSandbox", summary: "Pause a sandbox", body: PauseApiRequest, ok: { status: 200, json: SandboxInfo } },
  { method: "post", path: "/v1/sandboxes/{id}/resume", id: "resumeSandbox", summary: "Resume a paused sandbox", body: z.strictObject({}), ok: { status: 200, json: SandboxInfo } },
  {
    method: "post",
    path: "/v1/sandboxes/{id}/exec",
    id: "exec",
    summary: "Run a process: an NDJSON stream of started, stdout/stderr (base64), then exit or error",
    body: ExecApiRequest,
    ok: { status: 200, ndjson: ExecEvent },
  },
  { method: "get", path: "/v1/sandboxes/{id}/processes", id: "listProcesses", summary: "Processes of a sandbox", ok: { status: 200, json: ProcessList } },
  { method: "post", path: "/v1/sandboxes/{id}/processes/{proc}/signal", id: "signalProcess", summary: "Send a signal to a process", body: SignalApiRequest, ok: { status: 204 } },
  {
    method: "post",
    path: "/v1/sandboxes/{id}/processes/{proc}/stdin",
    id: "writeStdin",
    summary: "Write the raw body to a process's stdin (at most 16 MiB per request)",
    body: "octets",
    query: [{ name: "close", required: false, description: "1: close stdin after the write" }],
    ok: { status: 204 },
  },
  { method: "get", path: "/v1/sandboxes/{id}/files/content", id: "readFile", summary: "A file's bytes (Content-Length is its size)", query: pathQuery, ok: { status: 200, octets: true } },
  {
    method: "put",
    path: "/v1/sandboxes/{id}/files/content",
    id: "writeFile",
    summary: "Write the raw body to a file",
    body: "octets",
    query: [
      ...pathQuery,
      { name: "mode", required: false, description: "Permission bits in octal, e.g. 644" },
      { name: "createParents", required: false, description: "0 or 1 (default 1)" },
    ],
    ok: { status: 200, json: WriteResultSchema },
  },
  { method: "get", path: "/v1/sandboxes/{id}/files/list", id: "listDir", summary: "A directory's entries", query: pathQuery, ok: { status: 200, json: DirListing } },
  { method: "get", path: "/v1/sandboxes/{id}/files/stat", id: "stat", summary: "One file's metadata", query: pathQuery, ok: { status: 200, json: FileInfo } },
  { method: "post", path: "/v1/sandboxes/{id}/files/mkdir", id: "mkdir", summary: "Make a directory", body: MkdirApiRequest, ok: { status: 204 } },
  {
    method: "delete",
    path: "/v1/sandboxes/{id}/files",
    id: "remove",
    summary: "Remove a file or directory",
    query: [...pathQuery, { name: "recursive", required: false, description: "0 or 1" }],
    ok: { status: 204 },
  },
  { method: "post", path: "/v1/sandboxes/{id}/files/rename", id: "rename", summary: "Rename a file", body: RenameApiRequest, ok: { status: 204 } },
  { method: "put", path: "/v1/sandboxes/{id}/network/policy", id: "setNetworkPolicy", summary: "Replace the egress policy", body: NetworkPolicySchema, ok: { status: 200, json: SandboxInfo } },
  {
    method: "get",
    path: "/v1/sandboxes/{id}/network/events",
    id: "networkEvents",
    summary: "A page of egress decisions",
    query: [
      { name: "after", required: false, description: "Sequence number the page starts after" },
      { name: "limit", required: false, description: "Most events in the page" },
    ],
    ok: { status: 200, json: NetworkEventsPageSchema },
  },
  {
    method: "post",
    path: "/v1/sandboxes/{id}/snapshots",
    id: "snapshotSandbox",
    summary: "Take a snapshot",
    body: SnapshotApiRequest,
    ok: { status: 200, json: SnapshotInfo, ndjson: progressStream("snapshot", SnapshotInfo) },
  },
  {
    method: "post",
    path: "/v1/sandboxes/{id}/fork",
    id: "forkSandbox",
    summary: "Start sandboxes from a sandbox's current state",
    body: ForkApiRequest,
    ok: { status: 200, json: z.array(SandboxInfo).max(MAX_FORK_COUNT), ndjson: progressStream("sandboxes", z.array(SandboxInfo).min(1).max(MAX_FORK_COUNT)) },
  },
  { method: "get", path: "/v1/snapshots", id: "listSnapshots", summary: "List snapshots", ok: { status: 200, json: SnapshotList } },
  { method: "get", path: "/v1/snapshots/{ref}", id: "getSnapshot", summary: "One snapshot by id or digest", ok: { status: 200, json: SnapshotInfo } },
  { method: "delete", path: "/v1/snapshots/{ref}", id: "deleteSnapshot", summary: "Delete a snapshot", ok: { status: 204 } },
  {
    method: "put",
    path: "/v1/pools",
    id: "setWarmPool",
    summary: "Set a warm pool (size 0 removes it)",
    body: WarmPoolRequest,
    ok: { status: 200, json: WarmPoolInfo, ndjson: progressStream("pool", WarmPoolInfo) },
  },
  { method: "get", path: "/v1/pools", id: "listWarmPools", summary: "List warm pools", ok: { status: 200, json: WarmPoolList } },
  { method: "get", path: "/v1/secrets", id: "listSecrets", summary: "Stored secrets (never their values)", ok: { status: 200, json: SecretListSchema } },
  { method: "put", path: "/v1/secrets/{name}", id: "setSecret", summary: "Store a secret", body: SetSecretApiRequest, ok: { status: 200, json: SecretMetaSchema } },
  { method: "delete", path: "/v1/secrets/{name}", id: "removeSecret", summary: "Remove a secret", ok: { status: 204 } },
  { method: "get", path: "/v1/images", id: "listImages", summary: "List images", ok: { status: 200, json: ImageListSchema } },
  {
    method: "post",
    path: "/v1/images/build",
    id: "buildImage",
    summary: "Build an image",
    body: BuildImageApiRequest,
    ok: { status: 200, json: ImageInfoSchema, ndjson: BuildStreamLine },
  },
  { method: "post", path: "/v1/images/import", id: "importImage", summary: "Import a host directory or tarball", body: ImportImageApiRequest, ok: { status: 200, json: ImageInfoSchema, ndjson: BuildStreamLine } },
  {
    method: "delete",
    path: "/v1/images",
    id: "removeImage",
    summary: "Remove an image",
    query: [{ name: "ref", required: true, description: "Image reference" }],
    ok: { status: 204 },
  },
];

/** Answer schemas several operations share, emitted once under components and referenced. */
const SHARED_ANSWERS: Readonly<Record<string, Schema>> = {
  SandboxInfo,
  SnapshotInfo,
  ImageInfo: ImageInfoSchema,
  WarmPoolInfo,
  ApiErrorBody,
};

/** JSON Schemas of `entries` (id → schema), registered ones referenced as components. */
function components(entries: Readonly<Record<string, Schema>>, io: "input" | "output"): Record<string, Record<string, unknown>> {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(entries)) registry.add(schema, { id });
  const out = z.toJSONSchema(registry, { target: "draft-2020-12", io, unrepresentable: "any", uri: (id) => `#/components/schemas/${id}` });
  const schemas: Record<string, Record<string, unknown>> = {};
  for (const [id, schema] of Object.entries(out.schemas)) {
    const { $schema: _, id: __, ...rest } = schema as Record<string, unknown>;
    schemas[id] = rest;
  }
  return schemas;
}

function pathParameters(path: string): Record<string, unknown>[] {
  return [...path.matchAll(/\{([a-z]+)\}/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: { type: "string" } }));
}

/** The OpenAPI 3.1 document of the daemon API (deterministic: same schemas, same bytes). */
export function openApiDocument(): Record<string, unknown> {
  const requests: Record<string, Schema> = {};
  const answers: Record<string, Schema> = { ...SHARED_ANSWERS };
  const sharedName = new Map(Object.entries(SHARED_ANSWERS).map(([id, schema]) => [schema, id]));
  const answerRef = (schema: Schema, id: string): { $ref: string } => {
    const known = sharedName.get(schema);
    if (known === undefined) answers[id] = schema;
    return { $ref: `#/components/schemas/${known ?? id}` };
  };
  const paths: Record<string, Record<string, unknown>> = {};
  const errorResponse = { description: "A typed error", content: { "application/json": { schema: { $ref: "#/components/schemas/ApiErrorBody" } } } };
  for (const op of OPERATIONS) {
    const operation: Record<string, unknown> = { operationId: op.id, summary: op.summary };
    const parameters = [
      ...pathParameters(op.path),
      ...(op.query ?? []).map((q) => ({ name: q.name, in: "query", required: q.required, description: q.description, schema: { type: "string" } })),
    ];
    if (parameters.length > 0) operation.parameters = parameters;
    if (op.body === "octets") operation.requestBody = { required: true, content: { "application/octet-stream": {} } };
    else if (op.body !== undefined) {
      requests[`${op.id}Request`] = op.body;
      operation.requestBody = { required: true, content: { "application/json": { schema: { $ref: `#/components/schemas/${op.id}Request` } } } };
    }
    const ok = op.ok;
    const content: Record<string, unknown> = {};
    if ("json" in ok && ok.json !== undefined) content["application/json"] = { schema: answerRef(ok.json, `${op.id}Response`) };
    if ("ndjson" in ok && ok.ndjson !== undefined) content["application/x-ndjson"] = { schema: answerRef(ok.ndjson, `${op.id}StreamLine`) };
    if ("octets" in ok && ok.octets === true) content["application/octet-stream"] = {};
    operation.responses = {
      [String(ok.status)]: ok.status === 204 ? { description: "Done" } : { description: "Success", content },
      default: errorResponse,
    };
    (paths[op.path] ??= {})[op.method] = operation;
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "mvm daemon API",
      version: API_VERSION,
      description:
        `HTTP+JSON over the daemon's Unix socket, API ${API_VERSION}. Requests are strict: an unknown field is INVALID_ARGUMENT. ` +
        "Answers may gain fields within a version; clients ignore fields they do not know. See docs/PROTOCOL.md.",
    },
    paths,
    components: { schemas: { ...components(requests, "input"), ...components(answers, "output") } },
  };
}
