/**
 * `mvmctl mcp`: an MCP server that lets a model create sandboxes, run code and move files in them,
 * within what the operator's MCP config allows. Sandboxes live in the daemon.
 */
import { readFile } from "node:fs/promises";
import { defineCommand } from "../command.js";
import { booleanFlag, integerFlag, stringFlag } from "../flags.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

/** Environment variable naming the MCP config file when --config is not given. */
export const MCP_CONFIG_ENV = "MVM_MCP_CONFIG";
/** Environment variable holding the HTTP transport's bearer token when --token-file is not given. */
export const MCP_TOKEN_ENV = "MVM_MCP_TOKEN";

export interface McpOptions {
  config: string | undefined;
  http: boolean;
  host: string;
  port: number;
  tokenFile: string | undefined;
}

export const mcpCommand = defineCommand<McpOptions>({
  name: "mcp",
  summary: "Serve sandboxes to MCP clients (stdio, or streamable HTTP on loopback)",
  usage: "[--config FILE] [--http [--host ADDR] [--port N] [--token-file FILE]]",
  details:
    "The config file (--config or $MVM_MCP_CONFIG) says which images, egress rules and secrets a\n" +
    "model may use; tool arguments can only choose less. See docs/MCP.md for its fields.\n" +
    "Without --http the server speaks on stdin/stdout and ends when stdin closes. With --http it\n" +
    "listens at http://HOST:PORT/mcp on a loopback address only; every request must carry\n" +
    "\"Authorization: Bearer TOKEN\", the token read from --token-file or $MVM_MCP_TOKEN.\n" +
    "Sandboxes a session created are killed when it ends unless the model asked to keep them.\n" +
    "Needs the daemon (mvmctl daemon).",
  flags: {
    config: { type: "string", valueName: "FILE", description: "The MCP config file (default $MVM_MCP_CONFIG)" },
    http: { type: "boolean", description: "Serve streamable HTTP instead of stdio" },
    host: { type: "string", valueName: "ADDR", description: "Loopback address to listen on (default 127.0.0.1)" },
    port: { type: "string", valueName: "N", description: "Port to listen on, 0 for any free one (default 8765)" },
    "token-file": { type: "string", valueName: "FILE", description: "File holding the bearer token (default $MVM_MCP_TOKEN)" },
  },
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse(raw) {
    const http = booleanFlag(raw, "http");
    const port = integerFlag(raw, "port") ?? 8765;
    if (port < 0 || port > 65535) throw new UsageError(`--port must be 0 to 65535, not ${port}`);
    const host = stringFlag(raw, "host") ?? "127.0.0.1";
    const tokenFile = stringFlag(raw, "token-file");
    if (!http && (raw.values["host"] !== undefined || raw.values["port"] !== undefined || tokenFile !== undefined)) {
      throw new UsageError("--host, --port and --token-file need --http");
    }
    return { config: stringFlag(raw, "config"), http, host, port, tokenFile };
  },
  async run(ctx, options) {
    const configPath = options.config ?? ctx.io.env[MCP_CONFIG_ENV];
    if (configPath === undefined || configPath === "") {
      throw new UsageError(`mvmctl mcp needs a config file: --config FILE or $${MCP_CONFIG_ENV}`, { hint: "see docs/MCP.md for an example" });
    }
    // The MCP SDK is loaded only by this command, so other commands do not pay for it at start.
    const { loadMcpConfig } = await import("../mcp/config.js");
    const { serveMcpHttp, serveMcpStdio } = await import("../mcp/serve.js");
    const config = await loadMcpConfig(configPath);
    let token: string | undefined;
    if (options.http) {
      token = options.tokenFile === undefined ? ctx.io.env[MCP_TOKEN_ENV] : (await readFile(options.tokenFile, "utf8")).trim();
      if (token === undefined || token === "") {
        throw new UsageError(`mvmctl mcp --http needs a bearer token: --token-file FILE or $${MCP_TOKEN_ENV}`, { hint: "make one with: openssl rand -hex 32" });
      }
    }
    const stop = new AbortController();
    const restore = ctx.onInterrupt((signal, count) => {
      if (count === 1) ctx.out.note(`mvmctl mcp: ${signal}: ending sessions, killing their sandboxes`);
      stop.abort();
    });
    try {
      return await withEngine(ctx, async (engine) => {
        if (token === undefined) {
          ctx.out.note("mvmctl mcp: serving on stdio");
          await serveMcpStdio(engine, config, { stdin: process.stdin, stdout: process.stdout, signal: stop.signal });
        } else {
          await serveMcpHttp(engine, config, {
            host: options.host,
            port: options.port,
            token,
            signal: stop.signal,
            onListening: ({ host, port }) => ctx.out.note(`mvmctl mcp: listening on http://${host.includes(":") ? `[${host}]` : host}:${port}/mcp`),
          });
        }
        return 0;
      });
    } finally {
      restore();
    }
  },
});
