/**
 * `mvmctl pool set|ls`: sandboxes the engine keeps started ahead of demand. A later create or run
 * of the same workload (image, backend, limits, environment, egress policy) is served by one at
 * once, under its own plan; each serves one create and is never reused.
 */
import { MAX_WARM_POOL_SIZE, type CreateSandboxRequest, type WarmPoolInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { SANDBOX_FLAGS, createRequestFrom, integerFlag } from "../flags.js";
import { formatTable } from "../text.js";
import { cliCreateRequest } from "../tier-warning.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

function describe(p: WarmPoolInfo): string {
  return `${p.id}: ${p.ready} of ${p.size} ready, ${p.starting} starting (${p.backend}, ${p.image.ref})${p.lastError !== undefined ? `; last start failed: ${p.lastError}` : ""}`;
}

/** The sandbox flags that describe a workload a pool can keep: TTLs and snapshots come with each claim. */
const { ttl: _ttl, "on-ttl": _onTtl, "from-snapshot": _fromSnapshot, ...POOL_SANDBOX_FLAGS } = SANDBOX_FLAGS;

export interface PoolSetOptions {
  sandbox: CreateSandboxRequest;
  size: number;
}

export const poolSetCommand = defineCommand<PoolSetOptions>({
  name: "pool set",
  summary: "Keep sandboxes of a workload started ahead of demand (--size 0 removes the pool)",
  usage: "--size N [sandbox flags]",
  details:
    "The sandbox flags describe the workload as for create and run. A create or run that resolves to\n" +
    "the same image, backend, limits, environment and egress policy is served by a ready sandbox of\n" +
    "the pool, admitted under its own plan with its own TTL and command; the pool then starts another.\n" +
    "Sandboxes with secrets or published ports cannot be pooled. Needs the daemon (pools live in it).",
  flags: {
    size: { type: "string", valueName: "N", description: `How many sandboxes to keep ready, 0 to ${MAX_WARM_POOL_SIZE} (0 removes the pool)` },
    ...POOL_SANDBOX_FLAGS,
  },
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse(raw) {
    const size = integerFlag(raw, "size");
    if (size === undefined) throw new UsageError("pool set needs --size N", { hint: "e.g. --size 4, or --size 0 to remove the pool" });
    if (size < 0 || size > MAX_WARM_POOL_SIZE) throw new UsageError(`Invalid value "${size}" for --size: expected 0 to ${MAX_WARM_POOL_SIZE}`);
    return { sandbox: createRequestFrom(raw), size };
  },
  async run(ctx, { sandbox, size }) {
    return withEngine(ctx, async (engine) => {
      const pool = await engine.setWarmPool({ sandbox: cliCreateRequest(sandbox, ctx.io.env), size }, { signal: ctx.signal });
      ctx.out.human(size === 0 ? `${pool.id}: removed\n` : `${describe(pool)}\n`);
      ctx.out.jsonResult(pool);
      return 0;
    });
  },
});

export const poolLsCommand = defineCommand<Record<string, never>>({
  name: "pool ls",
  summary: "List warm pools",
  usage: "",
  details: "With --json an array of pool records is printed.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "daemon",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const pools = await engine.listWarmPools({ signal: ctx.signal });
      ctx.out.jsonResult(pools);
      if (!ctx.global.json) {
        const rows = pools.map((p) => [p.id, p.backend, p.image.ref, String(p.size), String(p.ready), String(p.starting), String(p.claimed), p.lastError ?? ""]);
        ctx.out.human(formatTable(["ID", "BACKEND", "IMAGE", "SIZE", "READY", "STARTING", "CLAIMED", "LAST ERROR"], rows));
      }
      return 0;
    });
  },
});
