/**
 * `mvmctl daemon`: run an engine in this process and serve it on a Unix socket until SIGINT or
 * SIGTERM; then stop serving and stop the engine, which kills its sandboxes.
 */
import { defineCommand } from "../command.js";
import { configLocation, loadConfig } from "../config.js";
import { stringFlag } from "../flags.js";
import { UsageError } from "../usage-error.js";

export const daemonCommand = defineCommand<{ group: string | undefined }>({
  name: "daemon",
  summary: "Serve an engine on a Unix socket until SIGINT or SIGTERM",
  usage: "[--socket PATH] [--group NAME]",
  details:
    "Only root and the daemon's own uid may use the socket, unless --group (or \"daemonGroup\" in the\n" +
    "config file) names an operator group: its members may then use it too (socket 0660, directory\n" +
    "0710, owned by the group). Members can do what root can through the API, except that host paths\n" +
    "they name (image import) are read with their own permissions. Every connection's peer is\n" +
    "checked with SO_PEERCRED; anyone else is refused with 403.\n" +
    "On SIGINT or SIGTERM the daemon stops accepting requests, kills its sandboxes and exits 0.\n" +
    "A third signal ends it at once, without cleanup.",
  flags: {
    group: { type: "string", valueName: "NAME", description: "Operator group (name or gid) whose members may use the daemon" },
  },
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: (raw) => ({ group: stringFlag(raw, "group") }),
  async run(ctx, options) {
    if (ctx.global.embedded) throw new UsageError('"mvmctl daemon" always runs its engine in-process; drop --embedded');
    const group = options.group ?? (await loadConfig(configLocation(ctx.io.env, ctx.io.uid, ctx.io.homeDir))).daemonGroup;
    const stop = new AbortController();
    const restore = ctx.onInterrupt((signal, count) => {
      if (count === 1) ctx.out.note(`mvmctl daemon: ${signal}: shutting down, killing sandboxes`);
      stop.abort();
    });
    try {
      await ctx.io.serveDaemon({
        ...(ctx.global.socketPath === undefined ? {} : { socketPath: ctx.global.socketPath }),
        ...(group === undefined ? {} : { group }),
        signal: stop.signal,
        onListening: async ({ socketPath, engine }) => {
          const health = await engine.health();
          const backend = health.backends.find((b) => b.backend === health.defaultBackend);
          const tier = backend === undefined ? "none usable" : `${backend.backend}, tier ${backend.tier}`;
          const who = group === undefined ? "" : `, group ${group} admitted`;
          ctx.out.note(`mvmctl daemon: listening on ${socketPath} (default backend: ${tier}${who})`);
          ctx.out.jsonResult({ socketPath, health });
        },
      });
    } finally {
      restore();
    }
    ctx.out.note("mvmctl daemon: stopped");
    return 0;
  },
});
