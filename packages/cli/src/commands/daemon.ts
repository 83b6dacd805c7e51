/**
 * `mvmctl daemon`: run an engine in this process and serve it on a Unix socket until SIGINT or
 * SIGTERM; then stop serving and stop the engine, which kills its sandboxes.
 */
import { defineCommand } from "../command.js";
import { UsageError } from "../usage-error.js";

export const daemonCommand = defineCommand<Record<string, never>>({
  name: "daemon",
  summary: "Serve an engine on a Unix socket until SIGINT or SIGTERM",
  usage: "[--socket PATH]",
  details:
    "On SIGINT or SIGTERM the daemon stops accepting requests, kills its sandboxes and exits 0.\n" +
    "A third signal ends it at once, without cleanup.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "none",
  parse: () => ({}),
  async run(ctx) {
    if (ctx.global.embedded) throw new UsageError('"mvmctl daemon" always runs its engine in-process; drop --embedded');
    const stop = new AbortController();
    const restore = ctx.onInterrupt((signal, count) => {
      if (count === 1) ctx.out.note(`mvmctl daemon: ${signal}: shutting down, killing sandboxes`);
      stop.abort();
    });
    try {
      await ctx.io.serveDaemon({
        ...(ctx.global.socketPath === undefined ? {} : { socketPath: ctx.global.socketPath }),
        signal: stop.signal,
        onListening: async ({ socketPath, engine }) => {
          const health = await engine.health();
          const backend = health.backends.find((b) => b.backend === health.defaultBackend);
          const tier = backend === undefined ? "none usable" : `${backend.backend}, tier ${backend.tier}`;
          ctx.out.note(`mvmctl daemon: listening on ${socketPath} (default backend: ${tier})`);
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
