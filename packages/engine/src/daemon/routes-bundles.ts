/**
 * Routes for bundles: push one (a snapshot or an image, to a location) and pull one (by digest).
 * Both can take a while, so they answer like create: NDJSON when the client asks for it.
 */
import { PullBundleRequest, PushBundleRequest } from "@mvm/protocol";
import { readJson } from "./http-io.js";
import type { Route } from "./router.js";
import { answer } from "./routes-snapshots.js";

export const bundleRoutes: readonly Route[] = [
  {
    method: "POST",
    pattern: "/v1/bundles/push",
    handler: async (ctx) => {
      const body = await readJson(ctx.req, PushBundleRequest);
      await answer(ctx, async () => ({ bundle: await ctx.engine.pushBundle(body, { signal: ctx.signal }) }), (r) => r.bundle);
    },
  },
  {
    method: "POST",
    pattern: "/v1/bundles/pull",
    handler: async (ctx) => {
      const body = await readJson(ctx.req, PullBundleRequest);
      await answer(ctx, async () => ({ bundle: await ctx.engine.pullBundle(body, { signal: ctx.signal }) }), (r) => r.bundle);
    },
  },
];
