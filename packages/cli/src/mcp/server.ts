/**
 * One MCP session's server: the sandbox tools a model may call, over an engine (the daemon), within
 * the operator's config. Sandboxes the session creates without `keep` are killed when it ends.
 * A model sees and touches only sandboxes the MCP server made (those labelled MCP_LABEL).
 */
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import {
  AbortedError,
  MvmError,
  NetworkRuleSchema,
  NotFoundError,
  PolicyDeniedError,
  type EngineApi,
  type ProgressEvent,
} from "@mvm/protocol";
import { Sandbox } from "@mvm/sdk";
import { VERSION } from "../version.js";
import { BudgetedText } from "./budget.js";
import { MCP_LABEL, narrowCreate, type McpConfig } from "./config.js";

/** Label set on a sandbox created with `keep`, so a later session can tell. */
export const MCP_KEEP_LABEL = "mvm-mcp-keep";
/** Most bytes a `write_file` content or `run_code` source may have. */
export const MAX_TOOL_TEXT_BYTES = 4 * 1024 * 1024;
/**
 * Output of one command read per stream, in bytes: the budget keeps the head and the tail of this
 * much; what the workload prints past it is dropped by the engine, and the answer says so.
 */
export const MCP_STREAM_CAP_BYTES = 4 * 1024 * 1024;
/** Least time between two progress notifications of one call, in milliseconds. */
const PROGRESS_INTERVAL_MS = 200;

/** The agent runtime's own Node.js, mounted read-only at /.mvm in every sandbox. */
const NODE_ARGV = ["/.mvm/bin/ld-linux-x86-64.so.2", "--library-path", "/.mvm/lib", "/.mvm/bin/node"];
/** How each language runs: the source is fed on stdin. */
const LANGUAGE_ARGV = {
  python: ["python3", "-"],
  javascript: [...NODE_ARGV, "-"],
  shell: ["/bin/sh", "-s"],
} as const satisfies Record<string, readonly string[]>;

const SandboxIdArg = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/).describe("The sandbox's id, as create_sandbox or list_sandboxes gave it");
const TimeoutArg = z.number().int().min(1).max(24 * 3600).optional().describe("The command's time limit in seconds (at most the operator's)");
const BudgetArg = z.number().int().min(64).max(16 * 1024 * 1024).optional().describe("Most bytes of output in the answer (at most the operator's budget)");
const ToolText = z.string().refine((s) => Buffer.byteLength(s) <= MAX_TOOL_TEXT_BYTES, { message: `at most ${MAX_TOOL_TEXT_BYTES} bytes` });

const CreateArgs = z.strictObject({
  image: z.string().max(256).optional().describe("Image to start; one the operator allows (the first when absent)"),
  network: z.array(NetworkRuleSchema).max(64).optional().describe("Egress rules wanted, each one of the operator's; absent: all the operator allows; [] for none"),
  secrets: z.array(z.string().max(128)).max(64).optional().describe("Secrets wanted, by the environment variable names the operator offers; absent: none"),
  ttlSeconds: z.number().int().min(1).max(7 * 24 * 3600).optional().describe("Lifetime in seconds (at most the operator's max)"),
  keep: z.boolean().optional().describe("Keep the sandbox after this MCP session ends (otherwise it is killed then)"),
});
const RunCodeArgs = z.strictObject({
  sandboxId: SandboxIdArg,
  language: z.enum(["python", "javascript", "shell"]),
  code: ToolText.describe("Source code, run as a script"),
  timeoutSeconds: TimeoutArg,
  maxOutputBytes: BudgetArg,
});
const ExecArgs = z.strictObject({
  sandboxId: SandboxIdArg,
  argv: z.array(z.string().max(64 * 1024)).min(1).max(1024).describe("The command and its arguments; no shell unless you run one"),
  cwd: z.string().max(4096).optional(),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/), z.string().max(64 * 1024)).optional(),
  stdin: ToolText.optional(),
  timeoutSeconds: TimeoutArg,
  maxOutputBytes: BudgetArg,
});
const ReadArgs = z.strictObject({ sandboxId: SandboxIdArg, path: z.string().min(1).max(4096), maxOutputBytes: BudgetArg });
const WriteArgs = z.strictObject({
  sandboxId: SandboxIdArg,
  path: z.string().min(1).max(4096),
  content: ToolText,
  createParents: z.boolean().optional(),
});
const KillArgs = z.strictObject({ sandboxId: SandboxIdArg });
const ListArgs = z.strictObject({});

type Extra = {
  signal: AbortSignal;
  _meta?: { progressToken?: string | number | undefined } | undefined;
  sendNotification: (n: { method: "notifications/progress"; params: { progressToken: string | number; progress: number; total?: number; message?: string } }) => Promise<void>;
};

/** Sends progress notifications for one call when the client asked for them (a progress token). */
class Progress {
  #count = 0;
  #last = 0;
  /** Notifications go out one after another, in the order reported. */
  #sent: Promise<void> = Promise.resolve();
  constructor(private readonly extra: Extra) {}

  /** Sends `message` unless one went out within PROGRESS_INTERVAL_MS (`force`: always); resolves once it is sent. */
  report(message: string, force = false): Promise<void> {
    const token = this.extra._meta?.progressToken;
    if (token === undefined) return Promise.resolve();
    const now = Date.now();
    if (!force && now - this.#last < PROGRESS_INTERVAL_MS) return Promise.resolve();
    this.#last = now;
    this.#count++;
    const params = { progressToken: token, progress: this.#count, message: message.slice(0, 512) };
    this.#sent = this.#sent.then(() => this.extra.sendNotification({ method: "notifications/progress", params }).catch(() => {}));
    return this.#sent;
  }
}

function text(s: string, isError = false): CallToolResult {
  return isError ? { content: [{ type: "text", text: s }], isError: true } : { content: [{ type: "text", text: s }] };
}

/** An error as the model sees it: its code, message and hint, never a stack. */
export function toolError(err: unknown): CallToolResult {
  if (err instanceof MvmError) return text(`${err.code}: ${err.message}${err.hint ? `\nhint: ${err.hint}` : ""}`, true);
  return text(`INTERNAL: ${err instanceof Error ? err.message : String(err)}`.slice(0, 4096), true);
}

/** One session's tools. `close()` kills the sandboxes it created without `keep`. */
export interface McpSession {
  readonly server: McpServer;
  close(): Promise<void>;
}

/** Creates the MCP server of one session over `engine` within `config`. */
export function createMcpSession(engine: EngineApi, config: McpConfig): McpSession {
  const server = new McpServer({ name: "mvm", version: VERSION }, { capabilities: { tools: {} } });
  const owned = new Set<string>();
  const closing = new AbortController();

  /** Sandboxes this session has checked (labels never change, ids are never reused): no lookup per call. */
  const checked = new Map<string, Sandbox>();

  /** A sandbox the MCP server made; any other is NotFoundError, as if it did not exist. */
  async function mcpSandbox(id: string, signal: AbortSignal): Promise<Sandbox> {
    const known = checked.get(id);
    if (known !== undefined) return known;
    let sb: Sandbox;
    try {
      sb = await Sandbox.connect(id, { engine, signal });
    } catch (err) {
      if (err instanceof NotFoundError) throw new NotFoundError(`Sandbox "${id}" not found among the MCP server's sandboxes`);
      throw err;
    }
    if (sb.info.labels[MCP_LABEL] !== "1") throw new NotFoundError(`Sandbox "${id}" not found among the MCP server's sandboxes`);
    if (checked.size >= 1024) checked.clear();
    checked.set(id, sb);
    return sb;
  }

  function budgetOf(asked: number | undefined): number {
    return Math.min(asked ?? config.outputBudgetBytes, config.outputBudgetBytes);
  }

  function commandSeconds(asked: number | undefined): number {
    const s = asked ?? Math.min(60, config.maxCommandSeconds);
    if (s > config.maxCommandSeconds) throw new PolicyDeniedError(`Timeout ${s} s is over the MCP config's max of ${config.maxCommandSeconds} s`);
    return s;
  }

  async function runIn(
    sb: Sandbox,
    argv: readonly string[],
    opts: { stdin?: string | undefined; cwd?: string | undefined; env?: Record<string, string> | undefined; timeoutSeconds: number; budget: number },
    extra: Extra,
  ): Promise<CallToolResult> {
    const progress = new Progress(extra);
    const out = new BudgetedText(opts.budget);
    const err = new BudgetedText(opts.budget);
    void progress.report(`started ${argv[0] ?? ""}`, true);
    const r = await sb.commands.run(argv, {
      check: false,
      timeoutSeconds: opts.timeoutSeconds,
      maxOutputBytes: Math.max(opts.budget, MCP_STREAM_CAP_BYTES),
      signal: AbortSignal.any([extra.signal, closing.signal]),
      ...(opts.stdin === undefined ? {} : { stdin: opts.stdin }),
      ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
      ...(opts.env === undefined ? {} : { env: opts.env }),
      onStdout: (c) => {
        out.push(c);
        void progress.report(`running: ${out.totalBytes} bytes of stdout, ${err.totalBytes} of stderr`);
      },
      onStderr: (c) => {
        err.push(c);
        void progress.report(`running: ${out.totalBytes} bytes of stdout, ${err.totalBytes} of stderr`);
      },
    });
    const ended = r.timedOut ? `timed out after ${opts.timeoutSeconds} s` : r.signal !== null ? `killed by ${r.signal}` : `exit code ${r.exitCode}`;
    await progress.report(`finished: ${ended}`, true);
    const parts = [`${ended}${r.oomKilled ? " (memory limit hit)" : ""}, ${r.durationMs} ms`];
    const dropped = (truncated: boolean): string => (truncated ? `\n[mvm: output past ${MCP_STREAM_CAP_BYTES} bytes was dropped unread]` : "");
    if (out.totalBytes > 0) parts.push(`--- stdout ---\n${out.text("stdout")}${dropped(r.stdoutTruncated)}`);
    if (err.totalBytes > 0) parts.push(`--- stderr ---\n${err.text("stderr")}${dropped(r.stderrTruncated)}`);
    return text(parts.join("\n"), r.exitCode !== 0);
  }

  const tool = <S extends z.ZodType>(name: string, description: string, schema: S, body: (args: z.infer<S>, extra: Extra) => Promise<CallToolResult>): void => {
    server.registerTool(name, { description, inputSchema: schema as never }, (async (args: unknown, extra: Extra) => {
      try {
        return await body(args as z.infer<S>, extra);
      } catch (err) {
        return toolError(err);
      }
    }) as never);
  };

  tool("create_sandbox", "Start an isolated sandbox (a Linux machine with /work writable) and return its id. Images, egress and secrets are limited to what the operator allows.", CreateArgs, async (a, extra) => {
    if (a.keep === true && !config.allowKeep) throw new PolicyDeniedError("Keeping sandboxes past the session is not allowed by the MCP config");
    const request = narrowCreate(config, { image: a.image, network: a.network, secrets: a.secrets, ttlSeconds: a.ttlSeconds });
    if (a.keep === true) request.labels = { ...request.labels, [MCP_KEEP_LABEL]: "1" };
    const live = (await engine.listSandboxes({ signal: extra.signal })).filter((s) => s.labels[MCP_LABEL] === "1" && (s.state === "running" || s.state === "paused" || s.state === "starting"));
    if (live.length >= config.maxSandboxes) throw new PolicyDeniedError(`The MCP config allows at most ${config.maxSandboxes} sandboxes at once; kill one first`);
    const progress = new Progress(extra);
    void progress.report("creating sandbox", true);
    const info = await engine.createSandbox(request, {
      signal: AbortSignal.any([extra.signal, closing.signal]),
      onProgress: (e: ProgressEvent) => void progress.report(`${e.phase}: ${e.message}`),
    });
    if (a.keep !== true) owned.add(info.id);
    checked.set(info.id, await Sandbox.connect(info.id, { engine }));
    if (closing.signal.aborted) await killQuietly(info.id);
    const rules = request.network?.rules.length ?? 0;
    return text(
      [
        `sandbox ${info.id} is ${info.state}`,
        `image ${info.image.ref}, backend ${info.backend} (tier ${info.tier}), expires ${info.expiresAt}`,
        `egress rules: ${rules}; secrets: ${Object.keys(request.secrets ?? {}).join(", ") || "none"}`,
        a.keep === true ? "kept after this session ends" : "killed when this session ends",
      ].join("\n"),
    );
  });

  tool("run_code", "Run Python, JavaScript (Node.js) or a shell script in a sandbox; answers with the exit status and the output (trimmed to the output budget).", RunCodeArgs, async (a, extra) => {
    const sb = await mcpSandbox(a.sandboxId, extra.signal);
    return runIn(sb, LANGUAGE_ARGV[a.language], { stdin: a.code, timeoutSeconds: commandSeconds(a.timeoutSeconds), budget: budgetOf(a.maxOutputBytes) }, extra);
  });

  tool("exec", "Run a command (argv, no shell) in a sandbox; answers with the exit status and the output (trimmed to the output budget).", ExecArgs, async (a, extra) => {
    const sb = await mcpSandbox(a.sandboxId, extra.signal);
    return runIn(sb, a.argv, { stdin: a.stdin, cwd: a.cwd, env: a.env, timeoutSeconds: commandSeconds(a.timeoutSeconds), budget: budgetOf(a.maxOutputBytes) }, extra);
  });

  tool("read_file", "Read a text file from a sandbox (trimmed to the output budget).", ReadArgs, async (a, extra) => {
    const sb = await mcpSandbox(a.sandboxId, extra.signal);
    const stream = await sb.files.read(a.path, { format: "stream", signal: extra.signal });
    const body = new BudgetedText(budgetOf(a.maxOutputBytes));
    const decoder = new TextDecoder("utf-8");
    for await (const chunk of stream) body.push(decoder.decode(chunk, { stream: true }));
    body.push(decoder.decode());
    return text(body.text(a.path));
  });

  tool("write_file", "Write a text file in a sandbox, replacing it when it exists.", WriteArgs, async (a, extra) => {
    const sb = await mcpSandbox(a.sandboxId, extra.signal);
    const r = await sb.files.write(a.path, a.content, { signal: extra.signal, ...(a.createParents === undefined ? {} : { createParents: a.createParents }) });
    return text(`wrote ${r.bytes} bytes to ${r.path}`);
  });

  tool("list_sandboxes", "List the sandboxes made through MCP (this session's and kept ones).", ListArgs, async (_a, extra) => {
    const all = (await engine.listSandboxes({ signal: extra.signal })).filter((s) => s.labels[MCP_LABEL] === "1");
    if (all.length === 0) return text("no sandboxes");
    return text(
      all
        .map((s) => `${s.id} ${s.state} ${s.image.ref} expires ${s.expiresAt}${s.labels[MCP_KEEP_LABEL] === "1" ? " kept" : owned.has(s.id) ? " this-session" : ""}`)
        .join("\n"),
    );
  });

  tool("kill_sandbox", "Kill a sandbox made through MCP.", KillArgs, async (a, extra) => {
    await mcpSandbox(a.sandboxId, extra.signal);
    const info = await engine.killSandbox(a.sandboxId, { signal: extra.signal });
    owned.delete(a.sandboxId);
    checked.delete(a.sandboxId);
    return text(`sandbox ${info.id} is ${info.state}`);
  });

  async function killQuietly(id: string): Promise<void> {
    try {
      await engine.killSandbox(id);
    } catch (err) {
      if (!(err instanceof NotFoundError) && !(err instanceof AbortedError)) process.stderr.write(`mvmctl mcp: could not kill sandbox ${id}: ${(err as Error).message}\n`);
    }
  }

  let closed: Promise<void> | undefined;
  return {
    server,
    close() {
      closed ??= (async () => {
        closing.abort(new AbortedError("The MCP session ended"));
        await Promise.all([...owned].map((id) => killQuietly(id)));
        owned.clear();
        await server.close().catch(() => {});
      })();
      return closed;
    },
  };
}
