/**
 * `mvmctl serve --e2b`: an HTTP server on loopback that speaks the E2B API and envd, so code
 * written for the `e2b` SDK runs against this host's daemon (docs/E2B.md).
 */
import { defineCommand } from "../command.js";
import { booleanFlag, integerFlag, stringFlag } from "../flags.js";
import { isLoopbackHost } from "../loopback.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

/** envd's port in E2B: the default here too, so the usual sandbox URL shape fits. */
export const DEFAULT_E2B_PORT = 49983;

export interface ServeOptions {
  config: string | undefined;
  host: string;
  port: number;
  allowRemote: boolean;
}

export const serveCommand = defineCommand<ServeOptions>({
  name: "serve",
  summary: "Serve the E2B API and envd on loopback for the unmodified e2b SDK (--e2b)",
  usage: "--e2b [--config FILE] [--host ADDR] [--port N] [--allow-remote]",
  details:
    "Point E2B code at it with E2B_API_URL=http://HOST:PORT, E2B_SANDBOX_URL=http://HOST:PORT and\n" +
    "E2B_API_KEY set to a key from `mvmctl apikey create`. The config file maps E2B template names\n" +
    "to mvm images (default: \"base\" starts the default image). See docs/E2B.md.\n" +
    "Needs the daemon (mvmctl daemon); sandboxes live there.",
  flags: {
    e2b: { type: "boolean", description: "Serve the E2B-compatible API (the only protocol so far)" },
    config: { type: "string", valueName: "FILE", description: "Template map and limits (JSON, see docs/E2B.md)" },
    host: { type: "string", valueName: "ADDR", description: "Address to listen on (default 127.0.0.1)" },
    port: { type: "string", valueName: "N", description: `Port, 0 for any free one (default ${DEFAULT_E2B_PORT})` },
    "allow-remote": { type: "boolean", description: "Allow a non-loopback --host (traffic is plain HTTP: put TLS in front)" },
  },
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse(raw) {
    if (!booleanFlag(raw, "e2b")) throw new UsageError("mvmctl serve needs a protocol: --e2b", { hint: "mvmctl serve --e2b" });
    const port = integerFlag(raw, "port") ?? DEFAULT_E2B_PORT;
    if (port < 0 || port > 65535) throw new UsageError(`--port must be 0 to 65535, not ${port}`);
    return { config: stringFlag(raw, "config"), host: stringFlag(raw, "host") ?? "127.0.0.1", port, allowRemote: booleanFlag(raw, "allow-remote") };
  },
  async run(ctx, options) {
    // The server's modules load only for this command.
    const { startE2bServer } = await import("../e2b/server.js");
    const { defaultE2bConfig, loadE2bConfig } = await import("../e2b/config.js");
    const { loadTokenSecret } = await import("../e2b/apikeys.js");
    const { DEFAULT_IMAGE, defaultStateDir } = await import("@mvm/engine");
    if (!isLoopbackHost(options.host) && !options.allowRemote) {
      throw new UsageError(`--host "${options.host}" is not a loopback address`, { hint: "add --allow-remote to listen there anyway, behind TLS" });
    }
    const config = options.config === undefined ? defaultE2bConfig(DEFAULT_IMAGE) : await loadE2bConfig(options.config);
    const stateDir = ctx.io.env["MVM_STATE_DIR"] || defaultStateDir();
    const secret = await loadTokenSecret(stateDir);
    const stop = new AbortController();
    const restore = ctx.onInterrupt((signal, count) => {
      if (count === 1) ctx.out.note(`mvmctl serve: ${signal}: stopping`);
      stop.abort();
    });
    try {
      return await withEngine(ctx, async (engine) => {
        const server = await startE2bServer({ engine, config, stateDir, secret, host: options.host, port: options.port });
        ctx.out.note(`mvmctl serve: E2B API and envd on ${server.url}`);
        if (!stop.signal.aborted) await new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve(), { once: true }));
        await server.close();
        return 0;
      });
    } finally {
      restore();
    }
  },
});
