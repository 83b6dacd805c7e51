/**
 * Routes for warm pools: set one (size 0 removes it) and list them. Setting may build the pool's
 * image, so it answers like create: NDJSON when the client asks for it.
 */
import { WarmPoolRequest } from "@mvm/protocol";
import { readJson, sendJson } from "./http-io.js";
import type { Route } from "./router.js";
import { answer } from "./routes-snapshots.js";

export const poolRoutes: readonly Route[] = [
  {
    method: "PUT",
    pattern: "/v1/pools",
    handler: async (ctx) => {
      const body = await readJson(ctx.req, WarmPoolRequest);
      await answer(ctx, async () => ({ pool: await ctx.engine.setWarmPool(body, { signal: ctx.signal }) }), (r) => r.pool);
    },
  },
  {
    method: "GET",
    pattern: "/v1/pools",
    handler: async (ctx) => sendJson(ctx.res, 200, { pools: await ctx.engine.listWarmPools({ signal: ctx.signal }) }),
  },
];
